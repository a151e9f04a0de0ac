#!/usr/bin/env bash
# Real servers for the tests, on loopback, in temporary folders (sourced by scripts/test.sh):
#
#   start_postgres   PostgreSQL from Debian's `postgresql` package (installed if missing), a
#                    fresh cluster on a free port, run as the `postgres` user when we are
#                    root; exports ATELIER_TEST_POSTGRES (a superuser URL: the tests create a
#                    database each) and stops the server when the calling shell exits.
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
  trap stop_services EXIT
  echo "services.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $ATELIER_TEST_POSTGRES"
}

stop_services() {
  if [ -n "${PG_DIR:-}" ]; then
    as_db_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
