#!/usr/bin/env bash
# Trains (or continues) the built-in styles: long, resumable runs in the background.
#
#   scripts/train_builtins.sh full STYLE...     the full model of each STYLE (one run each)
#   scripts/train_builtins.sh light STYLE...    its light version, distilled from RUNS/STYLE's model
#   scripts/train_builtins.sh export STYLE...   model files of the newest checkpoints
#
# Every run starts if RUNS/NAME does not exist and is resumed from its newest checkpoint if it
# does, so the same command continues the runs after they were stopped (a session's end, Ctrl-C,
# kill -9). Runs are nice'd and use one thread each (THREADS), so that two share a 2-core machine.
#
# The recipe (docs/eval/recipes.md says why): CUT (PatchNCE with the identity term, one
# generator) with the resize-convolution ResNet generator, ngf 32, PatchGAN ndf 32, crops of
# 128 from photos loaded at 256, STEPS steps whose last DECAY decay the learning rate linearly
# to 0, validation KID and structure metrics every 2000 steps on the split's val folders.
# The light version is distilled from the full model: the light generator ngf 16 learns the
# full model's translations of the training photos (L1 + conditional PatchGAN).
#
# Environment: ATELIER (binary, default target/release/atelier), SPLIT (default /work/split,
# from bench/split_datasets.py), RUNS (default /work/runs/builtins), FAMILY (cut), NGF (32),
# STEPS (12000), DECAY (4000), LIGHT_STEPS (20000), THREADS (1), INIT_FROM (a model or run
# directory the new full runs start from, e.g. a study run of the same recipe), FID (the FID
# Inception weights, default ../shared/weights/fid_inception_v3.safetensors). The runs hold research-use data
# derivatives: keep RUNS outside the repository.
set -euo pipefail
what=${1:?usage: $0 full|light|export STYLE...}
shift
ATELIER=${ATELIER:-target/release/atelier}
ATELIER=$(realpath "$ATELIER")
SPLIT=${SPLIT:-/work/split}
RUNS=${RUNS:-/work/runs/builtins}
FAMILY=${FAMILY:-cut}
NGF=${NGF:-32}
STEPS=${STEPS:-12000}
DECAY=${DECAY:-4000}
INIT_FROM=${INIT_FROM:-}
LIGHT_STEPS=${LIGHT_STEPS:-20000}
THREADS=${THREADS:-1}
FID=${FID:-$(dirname "$0")/../../shared/weights/fid_inception_v3.safetensors}
mkdir -p "$RUNS"

desc() { echo "photo -> $1: shared/datasets photo (Flickr, CycleGAN monet2photo testB) train split -> $1 paintings train split"; }
licence="research use only (see shared/datasets/SOURCES.md)"

# start_or_resume NAME ARGS...: resumes RUNS/NAME, or starts it with `atelier train ARGS...`.
start_or_resume() {
  local name=$1
  shift
  local out="$RUNS/$name"
  if [ -f "$out/config.json" ]; then
    RAYON_NUM_THREADS=$THREADS nohup nice -n 10 "$ATELIER" -q train resume "$out" >> "$out.log" 2>&1 &
  else
    RAYON_NUM_THREADS=$THREADS nohup nice -n 10 "$ATELIER" -q train "$@" --out "$out" > "$out.log" 2>&1 &
  fi
  echo "$name: pid $! (log $out.log)"
}

for style in "$@"; do
  case $what in
    full)
      init=()
      if [ -n "$INIT_FROM" ]; then init=(--init-from "$INIT_FROM"); fi
      start_or_resume "$style" "$FAMILY" "${init[@]}" --data-a "$SPLIT/photo/train" --data-b "$SPLIT/$style/train" \
        --netG resnet_6blocks_resize --ngf "$NGF" --ndf 32 --size 128 --load-size 256 \
        --steps "$STEPS" --steps-decay "$DECAY" --name "$style" \
        --checkpoint-every 1000 --sample-every 1000 --checkpoint-minutes 10 --keep-checkpoints 2 \
        --kid-every 2000 --val-folders "$SPLIT/photo/val" "$SPLIT/$style/val" --val-size 256 \
        --fid-weights "$FID" --data-description "$(desc "$style")" --data-licence "$licence"
      ;;
    light)
      teacher="$RUNS/$style/$style.safetensors"
      [ -f "$teacher" ] || "$ATELIER" train export "$RUNS/$style" > /dev/null
      start_or_resume "${style}_light" distill --teacher "$teacher" --data-a "$SPLIT/photo/train" \
        --netG light --ngf 16 --ndf 32 --size 128 --load-size 256 --steps "$LIGHT_STEPS" \
        --steps-decay $((LIGHT_STEPS / 4)) \
        --name "${style}_light" --checkpoint-every 1000 --sample-every 1000 --checkpoint-minutes 10 \
        --keep-checkpoints 2 --data-description "$(desc "$style"), distilled from $style" \
        --data-licence "$licence"
      ;;
    export)
      "$ATELIER" train export "$RUNS/$style"
      [ -d "$RUNS/${style}_light" ] && "$ATELIER" train export "$RUNS/${style}_light"
      ;;
    *)
      echo "unknown command $what (full, light or export)" >&2
      exit 2
      ;;
  esac
done
