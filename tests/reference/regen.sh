#!/usr/bin/env bash
# Regenerate tests/golden/ from the PyTorch reference networks.
#   tests/reference/regen.sh                      # write tests/golden (~10 MB), then verify it
#   tests/reference/regen.sh --verify-only        # re-check tests/golden, write nothing
#   tests/reference/regen.sh --out DIR            # write elsewhere
# Any argument is passed to make_golden.py (see --help).
# Env: PYTHON (interpreter used to create the venv, default python3),
#      TORCH_INDEX_URL (extra pip index for torch, e.g. https://download.pytorch.org/whl/cpu
#      for the small CPU-only wheel; default: PyPI only, which is what our machines reach).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
PIP_ARGS=(--quiet --disable-pip-version-check)
TORCH_INDEX_URL="${TORCH_INDEX_URL-}"
if [ -n "$TORCH_INDEX_URL" ]; then
    PIP_ARGS+=(--extra-index-url "$TORCH_INDEX_URL")
fi
"$VENV/bin/pip" install "${PIP_ARGS[@]}" -r "$HERE/requirements.txt"
exec "$VENV/bin/python" "$HERE/make_golden.py" "$@"
