#!/usr/bin/env bash
# Trains built-in styles and their equal-budget PyTorch reference, all at once on one machine.
#
#   scripts/train_builtins.sh MINUTES STYLE...      e.g. scripts/train_builtins.sh 80 ukiyoe monet
#
# For every STYLE three runs start together, one thread each, and stop after the same wall-clock
# MINUTES (so machine load, builds included, falls on all of them alike):
#   RUNS/STYLE        atelier: resnet_6blocks_resize ngf 16 (resize-convolution upsampling,
#                     no checkerboard), 70x70 PatchGAN ndf 32                  -> models/STYLE
#   RUNS/STYLE_light  atelier: light generator ngf 16, PatchGAN ndf 32        -> models/STYLE_light
#   RUNS/STYLE_ref    bench/reference_cyclegan.py: the published ResNet-9 ngf 64, PatchGAN ndf 64
# Each trains on SPLIT/photo/train -> SPLIT/STYLE/train (bench/split_datasets.py: the last 10 %
# of each folder held out) with the reference's losses and constant learning rate 2e-4, crops
# of 128 from images loaded at 256 (the same scale the 256-px photos are translated at).
# Atelier's runs stop on SIGINT (they checkpoint) and are exported with `atelier train export`.
#
# KINDS (default "full light ref") picks which of the three runs start for every STYLE.
# Environment: ATELIER (binary, default target/release/atelier), PY (python with torch,
# default bench/.venv/bin/python), SPLIT (default /work/split), DATASETS (../shared/datasets), RUNS (default /work/runs).
# The runs hold research-use data derivatives: keep RUNS outside the repository.
set -euo pipefail
minutes=${1:?usage: $0 MINUTES STYLE...}
shift
ATELIER=${ATELIER:-target/release/atelier}
PY=${PY:-bench/.venv/bin/python}
SPLIT=${SPLIT:-/work/split}
DATASETS=${DATASETS:-../shared/datasets}
RUNS=${RUNS:-/work/runs}
KINDS=${KINDS:-full light ref}
has() { [[ " $KINDS " == *" $1 "* ]]; }
mkdir -p "$RUNS"
secs=$(python3 -c "print(int(float('$minutes') * 60))")

common=(--data-a "$SPLIT/photo/train" --size 128 --load-size 256 --ndf 32
  --steps 10000000 --epochs-decay 0 --checkpoint-every 500 --sample-every 250
  --checkpoint-minutes 10 --keep-checkpoints 1)

pids=()
for style in "$@"; do
  data_b="$SPLIT/$style/train"
  desc="photo -> $style: shared/datasets photo (Flickr, CycleGAN monet2photo testB) train split -> $style paintings train split"
  if has full; then
    RAYON_NUM_THREADS=1 timeout -s INT "${secs}s" "$ATELIER" -q train cyclegan "${common[@]}" \
      --data-b "$data_b" --out "$RUNS/$style" --netG resnet_6blocks_resize --ngf 16 --name "$style" \
      --data-description "$desc" --data-licence "research use only (see shared/datasets/SOURCES.md)" \
      > "$RUNS/$style.log" 2>&1 &
    pids+=($!)
  fi
  if has light; then
    RAYON_NUM_THREADS=1 timeout -s INT "${secs}s" "$ATELIER" -q train cyclegan "${common[@]}" \
      --data-b "$data_b" --out "$RUNS/${style}_light" --netG light --ngf 16 --name "${style}_light" \
      --data-description "$desc" --data-licence "research use only (see shared/datasets/SOURCES.md)" \
      > "$RUNS/${style}_light.log" 2>&1 &
    pids+=($!)
  fi
  # The reference holds out the last 10 % itself: given the whole folders, it trains on
  # exactly the train split.
  if has ref; then
    "$PY" bench/reference_cyclegan.py --data-a "$DATASETS/photo" --data-b "$DATASETS/$style" \
      --netG resnet_9blocks --ngf 64 --ndf 64 --load-size 256 --crop-size 128 --threads 1 \
      --minutes "$minutes" --seed 1 --out "$RUNS/${style}_ref" > "$RUNS/${style}_ref.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
for style in "$@"; do
  if has full; then "$ATELIER" train export "$RUNS/$style"; fi
  if has light; then "$ATELIER" train export "$RUNS/${style}_light"; fi
done
echo "done (last non-zero status: $status; atelier runs end with 130 on SIGINT)"
