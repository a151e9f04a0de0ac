#!/usr/bin/env bash
# Schema-driven API testing: schemathesis (PyPI, pinned in tests/schemathesis/requirements.txt)
# generates requests from the running server's own /openapi.json (coverage, fuzzing and
# stateful phases that follow the document's links) and checks every answer: no 5xx, status
# codes, content types, headers and bodies as documented, schema-invalid requests refused,
# deleted resources gone, auth enforced. The check `positive_data_acceptance` is left out:
# the document cannot say which bytes are a valid image or model file, so a schema-valid body
# may rightly be refused.
#
#   scripts/schemathesis.sh [BIN] [EXAMPLES]    (default target/debug/atelier, 50)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/atelier}
EXAMPLES=${2:-50}
VENV=${SCHEMATHESIS_VENV:-tests/schemathesis/.venv}
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tests/schemathesis/requirements.txt
fi
data=$(mktemp -d)
server=""
trap '[ -n "$server" ] && { kill $server 2>/dev/null; wait $server 2>/dev/null; }; rm -rf "$data"' EXIT
# (admin commands never create a data folder: make it first)
"$BIN" admin migrate --data "$data" 2>/dev/null
key=$("$BIN" admin create-key --owner st --data "$data" | grep -o 'atl_[A-Za-z0-9_]*' | head -1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" -q serve --data "$data" --port "$port" --require-keys --rate-limit-per-minute 1000000 \
  --max-active-jobs 1000 > "$data/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.2
done
set +e
# Run from the temporary folder: schemathesis writes its caches (.hypothesis, .schemathesis)
# into the current one.
VENV=$(realpath "$VENV")
(cd "$data" && "$VENV/bin/st" run "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $key" \
  --checks all --exclude-checks positive_data_acceptance --max-examples "$EXAMPLES" \
  --request-timeout 30 --workers 1 --no-color --seed 1 \
  --generation-database none)
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "schemathesis failed (rc $rc); the server's log:" >&2
  tail -50 "$data/server.log" >&2
fi
exit $rc
