#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI has none). Run from the repository root with aiayn importable:
#   DATA=../shared/data/multi30k bash benchmarks/gpu_check.sh [OUT_DIR]
# PARTS picks what runs (default: all, about 11 minutes on an H100): tests (tests/test_cuda.py, 4 minutes), demo,
# multi30k-gpu (configs/multi30k-gpu.yaml: one minute of training, then beam 4 on val; again with the steps planned
# from the step time, train.max_steps 0), levers (what compilation and CUDA graphs give that config: 200 steps each
# way), multi30k-tiny (the CPU recipe in bf16 for MINUTES minutes). Every run prints its steps skipped as non-finite.
# On a lent machine that sees only the checkout, bring Multi30k inside it, in a folder git ignores:
#   echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data; cp ../shared/data/multi30k/{train,val}.{en,de} .gpu-data/
#   (then, there, with .gpu-data carried:) DATA=.gpu-data PARTS="multi30k-gpu levers" bash benchmarks/gpu_check.sh
set -uo pipefail
DATA=${DATA:-../shared/data/multi30k}
OUT=${1:-${OUT:-runs/gpu-check}}
PARTS=${PARTS:-tests demo multi30k-gpu levers multi30k-tiny}
MINUTES=${MINUTES:-3}
STEPS=${STEPS:-6000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
FILES=(--data.train_src "$DATA/train.en" --data.train_tgt "$DATA/train.de"
       --data.valid_src "$DATA/val.en" --data.valid_tgt "$DATA/val.de")
has() { [[ " $PARTS " == *" $1 "* ]]; }
evaluate() {  # evaluate MODEL_DIR: beam 4 on Multi30k val, on the GPU
  /usr/bin/time -f "evaluate wall %e s" python3 -m aiayn evaluate --model "$1" \
    --src "$DATA/val.en" --ref "$DATA/val.de" --beam 4 --alpha 0.6 --json 2>&1 | tail -n 3
}
rates() {  # rates RUN_DIR: steps, run clock, steps skipped as non-finite, target tokens/s of each logged interval
  python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"split"' not in line]
print("steps", rows[-1]["step"], "| clock %.1f s" % rows[-1]["seconds"],
      "| skipped", sum(r.get("skipped_steps", 0) for r in rows),
      "| target tokens/s by interval:", " ".join(f'{r["tokens_per_s"]:,.0f}' for r in rows))
PY
}
python3 - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0),
      "| bf16", torch.cuda.is_bf16_supported())
PY
if has tests; then
  echo "== CUDA tests"
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 15
  echo "== battery N1 on the GPU: all-padding rows in fp16 and bf16 autocast stay finite"
  python3 -m pytest -q -p no:cacheprovider tests/test_transformer.py -k "padding_only and cuda" 2>&1 | tail -n 5
fi
if has demo; then
  echo "== aiayn demo (dates) on the GPU"
  /usr/bin/time -f "demo wall %e s" python3 -m aiayn demo --out "$OUT/demo" 2>&1 | tail -n 4
fi
if has multi30k-gpu; then
  echo "== Multi30k en->de, configs/multi30k-gpu.yaml: one minute of training"
  /usr/bin/time -f "train wall %e s" python3 -m aiayn train --config configs/multi30k-gpu.yaml "${FILES[@]}" \
    --train.out_dir "$OUT/multi30k-gpu" 2>&1 | grep -v "^\s*$" | tail -n 8
  rates "$OUT/multi30k-gpu"
  cp "$OUT/multi30k-gpu/metrics.jsonl" "$OUT/multi30k-gpu-metrics.jsonl" 2>/dev/null
  evaluate "$OUT/multi30k-gpu/last"
  echo "== the same, with the steps planned from the measured step time (train.max_steps 0)"
  python3 -m aiayn train --config configs/multi30k-gpu.yaml "${FILES[@]}" --train.max_steps 0 \
    --tokenizer.path "$OUT/multi30k-gpu/tokenizer.json" --train.out_dir "$OUT/multi30k-gpu-planned" 2>&1 \
    | grep -v "^\s*$" | tail -n 3
  rates "$OUT/multi30k-gpu-planned"
  evaluate "$OUT/multi30k-gpu-planned/last"
fi
if has levers; then
  TOK=(); [[ -f "$OUT/multi30k-gpu/tokenizer.json" ]] && TOK=(--tokenizer.path "$OUT/multi30k-gpu/tokenizer.json")
  for lever in "eager:" "compiled:--train.compile true" "cuda-graphs:--train.compile true --train.cuda_graphs true" \
               "eager-4096:--train.length_bucket 0 --train.max_tokens 4096"; do
    name=${lever%%:*}
    echo "== lever: $name (configs/multi30k-gpu.yaml ${lever#*:}), 200 steps, compilation included in the clock"
    # shellcheck disable=SC2086
    python3 -m aiayn train --config configs/multi30k-gpu.yaml "${FILES[@]}" "${TOK[@]}" ${lever#*:} \
      --train.max_steps 200 --train.max_minutes 5 --train.log_every 50 --train.eval_bleu_sentences 0 --train.out_dir "$OUT/lever-$name" \
      > "$OUT/lever-$name.log" 2>&1 || tail -n 5 "$OUT/lever-$name.log"
    rates "$OUT/lever-$name"
  done
fi
if has multi30k-tiny; then
  echo "== Multi30k en->de, configs/multi30k-tiny.yaml, bf16, ${STEPS} steps or ${MINUTES} minutes"
  /usr/bin/time -f "train wall %e s" python3 -m aiayn train --config configs/multi30k-tiny.yaml "${FILES[@]}" \
    --train.precision bf16 --train.max_steps "$STEPS" --train.max_minutes "$MINUTES" --train.eval_every 2000 \
    --train.save_every 1000 --train.log_every 500 --train.out_dir "$OUT/multi30k" 2>&1 | grep -v "^\s*$" | tail -n 12
  cp "$OUT/multi30k/metrics.jsonl" "$OUT/multi30k-metrics.jsonl" 2>/dev/null
  evaluate "$OUT/multi30k/last"
fi
