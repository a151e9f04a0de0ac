#!/usr/bin/env bash
# One run of the recipe study (docs/eval/recipes.md): trains NAME until its training steps have
# used BUDGET CPU minutes (the `cpu_s` of metrics.jsonl), then stops it with SIGINT (checkpoint
# and exit). Started again, it resumes the run. Compare runs with `atelier train compare`.
#
#   scripts/recipe_study.sh NAME FAMILY STYLE NGF SIZE KID_EVERY BUDGET [EXTRA TRAIN ARGS...]
#        scripts/recipe_study.sh NAME [BUDGET]       (resume a stopped run)
#   e.g. scripts/recipe_study.sh ukiyoe_cut32 cut ukiyoe 32 128 450 30
#        scripts/recipe_study.sh vangogh_fastcut16_init fastcut vangogh 16 128 1500 30 --init-from monet
#
# Every run: data SPLIT/photo/train -> SPLIT/STYLE/train, crops of SIZE from images loaded at
# 2·SIZE, resnet_6blocks_resize ngf NGF, PatchGAN ndf 32, constant learning rate, validation
# every KID_EVERY steps on SPLIT/photo/val and SPLIT/STYLE/val at 256². One thread, nice'd.
# Environment: ATELIER (default target/release/atelier), SPLIT (/work/split), OUT
# (/work/runs/study), FID (../shared/weights/fid_inception_v3.safetensors).
set -euo pipefail
name=${1:?usage: $0 NAME FAMILY STYLE NGF SIZE KID_EVERY BUDGET [ARGS...]}
ATELIER=$(realpath "${ATELIER:-target/release/atelier}")
SPLIT=${SPLIT:-/work/split}
OUT=${OUT:-/work/runs/study}
FID=${FID:-$(dirname "$0")/../../shared/weights/fid_inception_v3.safetensors}
run="$OUT/$name"
mkdir -p "$OUT"
if [ -f "$run/config.json" ]; then
  # Resuming: `recipe_study.sh NAME [BUDGET]`, or the whole command line again.
  if [ $# -ge 7 ]; then budget=$7; else budget=${2:-30}; fi
  RAYON_NUM_THREADS=1 nice -n 10 "$ATELIER" -q train resume "$run" >> "$run.log" 2>&1 &
else
  family=$2 style=$3 ngf=$4 size=$5 kid=$6 budget=$7
  shift 7
  RAYON_NUM_THREADS=1 nice -n 10 "$ATELIER" -q train "$family" \
    --data-a "$SPLIT/photo/train" --data-b "$SPLIT/$style/train" --out "$run" \
    --netG resnet_6blocks_resize --ngf "$ngf" --ndf 32 --size "$size" --load-size $((2 * size)) \
    --steps 1000000 --epochs-decay 0 --checkpoint-every 250 --sample-every 250 \
    --checkpoint-minutes 5 --keep-checkpoints 1 --kid-every "$kid" \
    --val-folders "$SPLIT/photo/val" "$SPLIT/$style/val" --val-size 256 --fid-weights "$FID" \
    --name "$name" --data-licence "research use only (see shared/datasets/SOURCES.md)" "$@" \
    > "$run.log" 2>&1 &
fi
pid=$!
echo "$name: pid $pid, budget $budget CPU minutes (log $run.log)"
# The budget watch: stop the run once its training CPU seconds reach the budget.
(
  while kill -0 "$pid" 2>/dev/null; do
    sleep 20
    cpu=$(tail -n 1 "$run/metrics.jsonl" 2>/dev/null | grep -o '"cpu_s":[0-9.]*' | cut -d: -f2 || true)
    if [ -n "$cpu" ] && awk -v c="$cpu" -v b="$budget" 'BEGIN { exit !(c >= 60 * b) }'; then
      kill -INT "$pid"
      echo "$(date) $name stopped at $cpu CPU seconds" >> "$OUT/budget.log"
      break
    fi
  done
) > /dev/null 2>&1 &
