#!/usr/bin/env bash
# The recipe's ablation (issue 14): the recipe and each choice switched back to the reference's,
# SEEDS seeds each, one thread per run, JOBS runs at a time; summaries in OUT, the table
# (bench/learning.py table) in REPORT. The budget: STEPS training steps, or MINUTES of CPU time
# (scored at the end only) when MINUTES is set.
#   STEPS=450 SIZE=16 SEEDS="0 1" JOBS=2 CHOICES="block_norm text_padding lr" bash bench/learning_ablation.sh
#   MINUTES=15 SIZE=32 SEEDS="0" JOBS=2 REPORT=bench/learning_ablation_32px.md bash bench/learning_ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-450}
MINUTES=${MINUTES:-}
budget="--steps $STEPS"; what="$STEPS steps"
[ -z "$MINUTES" ] || { budget="--minutes $MINUTES --eval-at $MINUTES"; what="$MINUTES CPU-minutes"; }
SIZE=${SIZE:-16}
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
CHOICES=${CHOICES:-"block_norm coordinates cond_drop ema guidance lr noise_levels objective sampler text_padding unet warmup"}
OUT=${OUT:-/tmp/learning_ablation}
EXTRA=${EXTRA:-}  # more learning.py run options (e.g. a smoke run: --prompts 1 --samples-per-prompt 1)
REPORT=${REPORT:-bench/learning_ablation.md}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
started="$(date -u +%FT%H:%MZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
for seed in $SEEDS; do
  for choice in none $CHOICES; do
    ablate=""; [ "$choice" = none ] || ablate="--ablate $choice"
    echo "python bench/learning.py run --system recipe --size $SIZE --seed $seed $budget $ablate" \
         "--threads 1 $EXTRA --markdown - --json $OUT/$choice-$seed.json > $OUT/$choice-$seed.log 2>&1"
  done
done | xargs -P "$JOBS" -I{} bash -c {}
{
  echo "# Ablation of the small-fast recipe at $what (bench/learning_ablation.sh)"
  echo
  echo "\`STEPS=$STEPS MINUTES=$MINUTES SIZE=$SIZE SEEDS=\"$SEEDS\" JOBS=$JOBS CHOICES=\"$CHOICES\" EXTRA=\"$EXTRA\" bash bench/learning_ablation.sh\`:"
  echo "each run trains the base stage $what at $SIZE px from scratch (one thread), then scores the 15"
  echo "held-out prompts (2 samples each, unless EXTRA says otherwise). Started $started; ended $(date -u +%FT%H:%MZ) load"
  echo "$(cut -d' ' -f1-3 /proc/loadavg). Steps/s and minutes count CPU time."
  echo "Each cell: the mean over seeds (change against the recipe) [each seed]."
  echo
  python bench/learning.py table "$OUT"/*.json
} > "$REPORT"
cat "$REPORT"
