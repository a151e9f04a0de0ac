#!/usr/bin/env bash
# Browser tests of the web page: tests/e2e/run.mjs drives Debian's Chromium through
# playwright-core against `atelier serve` (fresh data folder, free port, a copy of models/).
# Installs what is missing: chromium (apt), node + npm (apt), tests/e2e/node_modules (npm ci),
# the demo model in models/ when there is none, and target/debug/atelier (cargo) when
# ATELIER_BIN is not set.
#
#   scripts/e2e.sh [stylize|bad-upload|training|docs ...]
#   ATELIER_BIN=target/release/atelier scripts/e2e.sh
# Screenshots and logs: tests/e2e/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
  # apt-get update only when the install fails (stale or missing package lists)
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ||
    { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; }
}

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium" >&2
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e: installing node and npm" >&2
  apt_install nodejs npm
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "e2e: warning: playwright-core wants node >= 20, this is $(node --version)" >&2
fi

# npm ci when node_modules is missing or older than the lock file
e2e=tests/e2e
if [ ! -f "$e2e/node_modules/.package-lock.json" ] || [ ! -d "$e2e/node_modules/playwright-core" ] ||
   [ "$e2e/package-lock.json" -nt "$e2e/node_modules/.package-lock.json" ]; then
  echo "e2e: npm ci" >&2
  (cd "$e2e" && npm ci --no-audit --no-fund)
fi

if [ -z "${ATELIER_BIN:-}" ]; then
  export ATELIER_BIN=target/debug/atelier
  if [ ! -x "$ATELIER_BIN" ]; then
    echo "e2e: building $ATELIER_BIN" >&2
    cargo build --locked -p atelier
  fi
fi
if [ ! -x "$ATELIER_BIN" ]; then
  echo "e2e: no server binary at $ATELIER_BIN" >&2
  exit 1
fi

# at least one style to serve: import the demo checkpoint as scripts/demo.sh does
models="${ATELIER_MODELS:-models}"
if ! compgen -G "$models/*.safetensors" >/dev/null; then
  echo "e2e: importing the demo model into $models/" >&2
  mkdir -p "$models"
  "$ATELIER_BIN" models import examples/ukiyoe_demo_net_G_A.pth \
    --netG resnet_6blocks --ngf 16 --norm instance --no_dropout \
    --name ukiyoe-demo -o "$models/ukiyoe-demo.safetensors" \
    --description "photo -> ukiyo-e woodblock print (small CPU-trained demo, resnet_6blocks ngf 16)" \
    --data "CycleGAN ukiyoe2photo testA prints (192) and monet2photo testB photos (630), 128 px crops" \
    --data-licence "research use only (CycleGAN datasets; photos from Flickr, no licence stated)" \
    --license "weights: research/demo use, trained on research-licensed data" \
    --train-size 128
fi

exec node tests/e2e/run.mjs "$@"
