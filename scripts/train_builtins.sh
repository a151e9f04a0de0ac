#!/usr/bin/env bash
# Trains (or continues) the built-in styles: long, resumable runs in the background.
#
#   scripts/train_builtins.sh full STYLE...     the full model of each STYLE (one run each)
#   scripts/train_builtins.sh light STYLE...    its light version, distilled from RUNS/STYLE's model
#                                               (or TEACHER_RUN's, e.g. RUNS/STYLE_tv1)
#   scripts/train_builtins.sh export STYLE...   model files of the newest checkpoints
#   scripts/train_builtins.sh finetune STYLE... RUNS/STYLE_tvW: the full run's step-STEPS
#                                               checkpoint trained FINETUNE_STEPS more steps
#                                               with total variation weight TV (W), the
#                                               learning rate from its decay's value there
#                                               linearly to 0, validated against the style's
#                                               *train* paintings (choosing W must not look at
#                                               the val paintings the report scores)
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
# STEPS (8000), DECAY (3000), LIGHT_STEPS (20000), THREADS (1), INIT_FROM (a model or run
# directory the new full runs start from, e.g. a study run of the same recipe), FID (the FID
# Inception weights, default ../shared/weights/fid_inception_v3.safetensors), TV (the finetune's
# total variation weight, default 1), FINETUNE_STEPS (1000), TEACHER_RUN (the run whose model a
# light version learns from, default RUNS/STYLE). The runs hold research-use data derivatives:
# keep RUNS outside the repository.
set -euo pipefail
what=${1:?usage: $0 full|light|export STYLE...}
shift
ATELIER=${ATELIER:-target/release/atelier}
ATELIER=$(realpath "$ATELIER")
SPLIT=${SPLIT:-/work/split}
RUNS=${RUNS:-/work/runs/builtins}
FAMILY=${FAMILY:-cut}
NGF=${NGF:-32}
STEPS=${STEPS:-8000}
DECAY=${DECAY:-3000}
INIT_FROM=${INIT_FROM:-}
LIGHT_STEPS=${LIGHT_STEPS:-20000}
TV=${TV:-1}
FINETUNE_STEPS=${FINETUNE_STEPS:-1000}
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
      teacher_run=${TEACHER_RUN:-$RUNS/$style}
      teacher="$teacher_run/$style.safetensors"
      [ -f "$teacher" ] || "$ATELIER" train export "$teacher_run" > /dev/null
      start_or_resume "${style}_light" distill --teacher "$teacher" --data-a "$SPLIT/photo/train" \
        --netG light --ngf 16 --ndf 32 --size 128 --load-size 256 --steps "$LIGHT_STEPS" \
        --steps-decay $((LIGHT_STEPS / 4)) \
        --name "${style}_light" --checkpoint-every 1000 --sample-every 1000 --checkpoint-minutes 10 \
        --keep-checkpoints 2 --data-description "$(desc "$style"), distilled from $style" \
        --data-licence "$licence"
      ;;
    finetune)
      # A copy of the full run at its last step with a longer schedule: resuming continues its
      # optimiser state and D, as if the run had been planned this long (its decay then spans
      # FINETUNE_STEPS more steps, so the learning rate restarts at
      # FINETUNE_STEPS / (decay + FINETUNE_STEPS) of the base: 0.25 for 3000 + 1000).
      src="$RUNS/$style"
      dst="$RUNS/${style}_tv$TV"
      if [ ! -f "$dst/config.json" ]; then
        last=$(python3 -c 'import json, sys; print("step-%08d.safetensors" % json.load(open(sys.argv[1]))["steps"])' "$src/config.json")
        [ -f "$src/checkpoints/$last" ] || { echo "$src has no $last: finish the full run first" >&2; exit 1; }
        mkdir -p "$dst/checkpoints"
        cp "$src/checkpoints/$last" "$dst/checkpoints/"
        python3 - "$src/config.json" "$dst/config.json" "$SPLIT" "$style" "$TV" "$FINETUNE_STEPS" "$(realpath "$FID")" <<'PY'
import json, sys
src, dst, split, style, tv, more, fid = sys.argv[1:]
c = json.load(open(src))
lr = c["lr_policy"]
assert lr["policy"] == "linear_steps", lr
c["steps"] += int(more)
c["lr_policy"] = {"policy": "linear_steps", "constant": lr["constant"], "decay": lr["decay"] + int(more)}
c["nce"]["lambda_tv"] = float(tv)
c["name"] = style
c["validation"]["kid_every"] = 500
c["validation"]["folders"] = [f"{split}/photo/val", f"{split}/{style}/train"]
c["validation"]["weights"] = fid
c["sample_every"] = 250
json.dump(c, open(dst, "w"), indent=2)
PY
      fi
      RAYON_NUM_THREADS=$THREADS nohup nice -n 10 "$ATELIER" -q train resume "$dst" >> "$dst.log" 2>&1 &
      echo "${style}_tv$TV: pid $! (log $dst.log)"
      ;;
    export)
      "$ATELIER" train export "$RUNS/$style"
      [ -d "$RUNS/${style}_light" ] && "$ATELIER" train export "$RUNS/${style}_light"
      ;;
    *)
      echo "unknown command $what (full, light, finetune or export)" >&2
      exit 2
      ;;
  esac
done
