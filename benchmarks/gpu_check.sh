#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI has none): the CUDA tests, the demo, and a Multi30k training run
# with its beam-search evaluation. Run from the repository root with aiayn importable and Multi30k at $DATA:
#   DATA=../shared/data/multi30k bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
DATA=${DATA:-../shared/data/multi30k}
OUT=${1:-${OUT:-runs/gpu-check}}
MINUTES=${MINUTES:-3}
STEPS=${STEPS:-6000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0),
      "| bf16", torch.cuda.is_bf16_supported())
PY
echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 15
echo "== battery N1 on the GPU: all-padding rows in fp16 and bf16 autocast stay finite"
python3 -m pytest -q -p no:cacheprovider tests/test_transformer.py -k "padding_only and cuda" 2>&1 | tail -n 5
echo "== aiayn demo (dates) on the GPU"
/usr/bin/time -f "demo wall %e s" python3 -m aiayn demo --out "$OUT/demo" 2>&1 | tail -n 4
echo "== Multi30k en->de, configs/multi30k-tiny.yaml, bf16, ${STEPS} steps or ${MINUTES} minutes"
/usr/bin/time -f "train wall %e s" python3 -m aiayn train --config configs/multi30k-tiny.yaml \
  --data.train_src "$DATA/train.en" --data.train_tgt "$DATA/train.de" \
  --data.valid_src "$DATA/val.en" --data.valid_tgt "$DATA/val.de" \
  --train.precision bf16 --train.max_steps "$STEPS" --train.max_minutes "$MINUTES" --train.eval_every 2000 --train.save_every 1000 \
  --train.log_every 500 --train.out_dir "$OUT/multi30k" 2>&1 | grep -v "^\s*$" | tail -n 12
cp "$OUT/multi30k/metrics.jsonl" "$OUT/multi30k-metrics.jsonl" 2>/dev/null
echo "== beam 4 on Multi30k val, on the GPU"
/usr/bin/time -f "evaluate wall %e s" python3 -m aiayn evaluate --model "$OUT/multi30k/last" \
  --src "$DATA/val.en" --ref "$DATA/val.de" --beam 4 --alpha 0.6 --json 2>&1 | tail -n 3
