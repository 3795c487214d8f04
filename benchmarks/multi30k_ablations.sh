#!/usr/bin/env bash
# Issue 22's ablations on Multi30k en->de: each run is the base recipe with one change, trained for MINUTES
# (default 15) with train.max_steps 0 (the steps planned from the measured step time, so every schedule ends
# with the budget), one run after another on an otherwise idle machine. Each is scored on val: greedy at the end
# of training (the run's log), then `aiayn evaluate` with beam 5 (alpha 0.6), cased sacreBLEU beside tokenized
# lowercased BLEU (--moses-lang de). The base run is also decoded with other beams and length penalties, and its
# last 5 and 10 checkpoints (one every 100 steps) are averaged.
#   bash benchmarks/multi30k_ablations.sh OUT [NAME ...]      (NAME: see RUNS; default: all, in that order)
# DROPOUT (default 0.3, the first round's base) sets the base's dropout: the second round ran with DROPOUT=0.2,
# the first round's winner and the shipped config's value.
# Results: one JSON line per evaluation in OUT/results.jsonl, training logs in OUT/NAME.log, run folders in OUT/NAME.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/multi30k_ablations.sh OUT [NAME ...]}
shift
MINUTES=${MINUTES:-15}
DROPOUT=${DROPOUT:-0.3}
DATA=${DATA:-../shared/data/multi30k}
BASE=(--config configs/multi30k-tiny.yaml --train.max_minutes "$MINUTES" --train.max_steps 0
      --model.dropout "$DROPOUT" --optim.warmup 300 --train.precision bf16 --train.eval_every 1000000 --train.save_every 100
      --train.keep_last 10 --train.log_every 100)
NAMES=(base fp32 lr6e-3 d192 tokens8192 dropout0.2 dropout0.1 inverse_sqrt vocab6000 smoothing0.2 attn_dropout0.1
       warmup1000 lr2e-3 d192_lr2e-3)
declare -A RUNS=(
  [base]=""
  [fp32]="--train.precision fp32"
  [lr6e-3]="--optim.lr 0.006"
  [d192]="--model.d_model 192 --model.d_ff 384"
  [tokens8192]="--train.max_tokens 8192"
  [dropout0.2]="--model.dropout 0.2"
  [dropout0.1]="--model.dropout 0.1"
  [inverse_sqrt]="--optim.schedule inverse_sqrt --optim.lr 0.005"
  [vocab6000]="--tokenizer.vocab_size 6000"
  [smoothing0.2]="--optim.label_smoothing 0.2"
  [attn_dropout0.1]="--model.attention_dropout 0.1"
  [warmup1000]="--optim.warmup 1000"
  [lr2e-3]="--optim.lr 0.002"
  [d192_lr2e-3]="--model.d_model 192 --model.d_ff 384 --optim.lr 0.002"
)
[ $# -gt 0 ] && NAMES=("$@")
mkdir -p "$OUT"

score() {  # score NAME MODEL BEAM ALPHA: one JSON line, tagged, appended to results.jsonl
  local line
  line=$(aiayn evaluate --model "$2" --src "$DATA/val.en" --ref "$DATA/val.de" --beam "$3" --alpha "$4" \
         --moses-lang de --json)
  echo "{\"run\": \"$1\", \"model\": \"$2\", \"beam\": $3, \"alpha\": $4, \"result\": $line}" | tee -a "$OUT/results.jsonl"
}

for name in "${NAMES[@]}"; do
  [ -n "${RUNS[$name]+x}" ] || { echo "unknown run $name (known: ${!RUNS[*]})" >&2; exit 2; }
  read -r -a change <<< "${RUNS[$name]}"
  tok=()  # the base run's 8,000-token tokenizer for every run that keeps that vocabulary
  if [ "$name" != base ] && [ "$name" != vocab6000 ] && [ -f "$OUT/base/tokenizer.json" ]; then
    tok=(--tokenizer.path "$OUT/base/tokenizer.json")
  fi
  echo "== $name: ${RUNS[$name]:-(the base recipe)} $(date -u +%H:%M)"
  aiayn train "${BASE[@]}" "${tok[@]}" "${change[@]}" --train.out_dir "$OUT/$name" 2>&1 \
    | grep -v "it/s\]" > "$OUT/$name.log"
  grep -E "max_steps:|valid at|stopped" "$OUT/$name.log" || true
  score "$name" "$OUT/$name/last" 5 0.6
  if [ "$name" = base ]; then
    for ba in "1 0.6" "4 0.6" "5 1.0" "8 0.6" "8 1.0"; do
      read -r b a <<< "$ba"
      score base "$OUT/base/last" "$b" "$a"
    done
    for n in 5 10; do
      aiayn average --run "$OUT/base" --last "$n" --out "$OUT/base-avg$n" > /dev/null
      score base-avg$n "$OUT/base-avg$n" 5 0.6
    done
  fi
done
