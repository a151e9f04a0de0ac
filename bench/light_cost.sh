#!/usr/bin/env bash
# CPU time of `atelier stylize` for each full model and its light version: one thread, three
# copies of a 1024² photo per run, two runs, at each precision. Prints per-photo CPU seconds
# (user + sys, model loading included) and each light model's ratio to its full model.
#
#   bench/light_cost.sh PHOTO [MODELS_DIR] [STYLE...]
#   e.g. bench/light_cost.sh ../shared/datasets/kodak/kodim23.png models ukiyoe monet
# Environment: ATELIER (default target/release/atelier), PRECISIONS (default "auto f32"),
# PYTHON (with Pillow; default bench/.venv/bin/python).
set -euo pipefail
photo=${1:?usage: $0 PHOTO [MODELS_DIR] [STYLE...]}
models=${2:-models}
shift $(($# < 2 ? $# : 2))
styles=("$@")
[ ${#styles[@]} -gt 0 ] || styles=(ukiyoe vangogh monet cezanne)
ATELIER=$(realpath "${ATELIER:-target/release/atelier}")
PYTHON=${PYTHON:-$(dirname "$0")/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/in"
# A 1024² centre square of the photo, three times.
"$PYTHON" - "$photo" "$tmp/in" <<'PY' || { echo "needs $PYTHON with Pillow: python3 -m venv bench/.venv && bench/.venv/bin/pip install -r bench/requirements.txt" >&2; exit 2; }
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
s = min(im.size)
l, t = (im.width - s) // 2, (im.height - s) // 2
im = im.crop((l, t, l + s, t + s)).resize((1024, 1024), Image.BICUBIC)
for i in range(3):
    im.save(f"{sys.argv[2]}/p{i}.png")
PY
cpu() { # model precision -> per-photo CPU seconds, mean of two runs
  local total=0
  for _ in 1 2; do
    rm -rf "$tmp/out"; mkdir -p "$tmp/out"
    local t
    t=$( { RAYON_NUM_THREADS=1 /usr/bin/time -f "%U %S" "$ATELIER" stylize -q --precision "$2" \
      --models-dir "$models" -m "$1" -o "$tmp/out" "$tmp/in" > /dev/null; } 2>&1 | tail -n 1)
    total=$(awk -v a="$total" -v t="$t" 'BEGIN { split(t, x, " "); print a + x[1] + x[2] }')
  done
  awk -v a="$total" 'BEGIN { printf "%.2f", a / 6 }'
}
printf '%-10s %-10s %10s %10s %8s\n' precision style full_s light_s ratio
for prec in ${PRECISIONS:-auto f32}; do
  for s in "${styles[@]}"; do
    f=$(cpu "$s" "$prec")
    l=$(cpu "${s}_light" "$prec")
    printf '%-10s %-10s %10s %10s %8s\n' "$prec" "$s" "$f" "$l" "$(awk -v f="$f" -v l="$l" 'BEGIN { printf "%.3f", l / f }')"
  done
done
