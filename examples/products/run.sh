#!/usr/bin/env bash
# Runs the product service example end to end and checks it:
#   a redis-server and a PostgreSQL 15 cluster in a temp dir, on free loopback ports;
#   schema.sql loaded; `cacheside db install-notify`; cacheside with this dir's proxy.toml;
#   `npm ci`; server.js pointed at cacheside; check.js against every endpoint.
# Exits non-zero on any failed check. Everything it starts is stopped, and the temp dir
# removed, on exit.
#
# Usage (from anywhere): examples/products/run.sh
# Environment:
#   CACHESIDE_BIN   the cacheside binary to use. Default: $CARGO_TARGET_DIR/debug/cacheside
#                   or target/debug/cacheside if present, else `cargo build` first.
#   PG_BINDIR       PostgreSQL server binaries. Default: /usr/lib/postgresql/15/bin, else PATH.
#   KEEP_LOGS=1     print the logs of cacheside and the app even when every check passes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

say() { printf '[products] %s\n' "$*"; }
die() { printf '[products] FAIL: %s\n' "$*" >&2; exit 1; }

for bin in redis-server redis-cli psql node npm curl; do
  command -v "$bin" >/dev/null || die "$bin is not installed"
done

PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
if [ ! -x "$PG_BINDIR/initdb" ]; then
  PG_BINDIR="$(dirname "$(command -v initdb || echo /nonexistent/initdb)")"
  [ -x "$PG_BINDIR/initdb" ] || die "PostgreSQL server binaries not found (apt-get install -y postgresql-15)"
fi

# --- the cacheside binary ---------------------------------------------------------------
if [ -z "${CACHESIDE_BIN:-}" ]; then
  target="${CARGO_TARGET_DIR:-$REPO/target}"
  case "$target" in /*) ;; *) target="$REPO/$target" ;; esac
  CACHESIDE_BIN="$target/debug/cacheside"
  if [ ! -x "$CACHESIDE_BIN" ]; then
    say "building cacheside (cargo build)"
    (cd "$REPO" && cargo build --quiet --bin cacheside)
  fi
fi
[ -x "$CACHESIDE_BIN" ] || die "no cacheside binary at $CACHESIDE_BIN"

# --- temp dir and cleanup ------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/cacheside-products.XXXXXX")"
chmod 755 "$TMP"
PGROOT="$TMP/pg"
mkdir -p "$PGROOT"

AS_PG=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the postgres user (apt-get install -y postgresql-15)"
  chown postgres "$PGROOT"
  AS_PG=(runuser -u postgres --)
fi

APP_PID= CACHESIDE_PID= REDIS_PID= PG_STARTED= STATUS=failed
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] || [ "${KEEP_LOGS:-}" = 1 ]; then
    for log in cacheside.log app.log redis.log pg/postgres.log; do
      if [ -s "$TMP/$log" ]; then
        printf '[products] --- last lines of %s ---\n' "$log"
        tail -n 30 "$TMP/$log"
      fi
    done
  fi
  for pid in $APP_PID $CACHESIDE_PID $REDIS_PID; do
    kill "$pid" 2>/dev/null
  done
  for pid in $APP_PID $CACHESIDE_PID $REDIS_PID; do
    # Up to 5 s for a graceful exit, then SIGKILL.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$PG_STARTED" ]; then
    "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" stop -D "$PGROOT/data" -m immediate -w >/dev/null 2>&1
  fi
  rm -rf "$TMP"
  say "result: $STATUS"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# wait_for <what> <seconds> <command...>: retries the command every 0.1 s.
wait_for() {
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "timed out waiting for $what"
}

# --- Redis --------------------------------------------------------------------------------
REDIS_PORT="$(free_port)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
wait_for "redis-server" 10 redis-cli -p "$REDIS_PORT" ping
say "redis-server on 127.0.0.1:$REDIS_PORT"

# --- PostgreSQL 15 ---------------------------------------------------------------------------
PG_PORT="$(free_port)"
"${AS_PG[@]}" "$PG_BINDIR/initdb" -D "$PGROOT/data" -U postgres -A trust --no-sync \
  --no-instructions -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log"; die "initdb failed"; }
PG_STARTED=1
"${AS_PG[@]}" "$PG_BINDIR/pg_ctl" start -D "$PGROOT/data" -w -t 60 -l "$PGROOT/postgres.log" \
  -o "-p $PG_PORT -k $PGROOT -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  >/dev/null || die "pg_ctl start failed"
psql_as() { # psql_as <user> <db> [psql args...]
  local user=$1 db=$2
  shift 2
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$user" -d "$db" "$@"
}
psql_as postgres postgres -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE products_db OWNER app"
psql_as app products_db -f "$HERE/schema.sql" >/dev/null
DATABASE_URL="postgres://app@127.0.0.1:$PG_PORT/products_db"
say "PostgreSQL 15 on 127.0.0.1:$PG_PORT, schema.sql loaded ($(psql_as app products_db -tAc 'SELECT count(*) FROM products') products)"

# --- cacheside ------------------------------------------------------------------------------
CS_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
export CACHESIDE_CONFIG="$HERE/proxy.toml"
export CACHESIDE_SERVER_LISTEN="127.0.0.1:$CS_PORT"
export CACHESIDE_UPSTREAM_URL="redis://127.0.0.1:$REDIS_PORT"
export CACHESIDE_POSTGRES_URL="$DATABASE_URL"
export CACHESIDE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
# A test run need not wait for load balancers on SIGTERM.
export CACHESIDE_SHUTDOWN_MIN_DRAIN=0s
export CACHESIDE_SHUTDOWN_GRACE_PERIOD=5s

"$CACHESIDE_BIN" db install-notify >"$TMP/install-notify.log" 2>&1 \
  || { cat "$TMP/install-notify.log"; die "cacheside db install-notify failed"; }
say "cacheside db install-notify: triggers installed on $(psql_as app products_db -tAc \
  "SELECT string_agg(DISTINCT event_object_table, ', ') FROM information_schema.triggers")"

"$CACHESIDE_BIN" >"$TMP/cacheside.log" 2>&1 &
CACHESIDE_PID=$!
ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"
wait_for "cacheside /readyz" 30 curl -fsS "$ADMIN_URL/readyz"
# The hot tier is bypassed until LISTEN is up; wait for it so the checks see the steady state.
wait_for "cacheside LISTEN (cacheside_db_notify_listening 1)" 30 \
  sh -c "curl -fsS '$ADMIN_URL/metrics' | grep -q '^cacheside_db_notify_listening 1'"
say "cacheside ($CACHESIDE_BIN) on 127.0.0.1:$CS_PORT, admin $ADMIN_URL, LISTEN up"

# --- the app --------------------------------------------------------------------------------
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >"$TMP/npm.log" 2>&1) \
  || { cat "$TMP/npm.log"; die "npm ci failed"; }
APP_PORT="$(free_port)"
(cd "$HERE" && PORT="$APP_PORT" REDIS_HOST=127.0.0.1 REDIS_PORT="$CS_PORT" \
  DB_HOST=127.0.0.1 DB_PORT="$PG_PORT" DB_NAME=products_db DB_USER=app \
  exec node server.js) >"$TMP/app.log" 2>&1 &
APP_PID=$!
APP_URL="http://127.0.0.1:$APP_PORT"
wait_for "the app's /health" 30 curl -fsS "$APP_URL/health"
say "app (server.js) on $APP_URL, its Redis client pointed at cacheside"

# --- the checks -----------------------------------------------------------------------------
say "checks:"
(cd "$HERE" && APP_URL="$APP_URL" ADMIN_URL="$ADMIN_URL" REDIS_PORT="$CS_PORT" \
  DATABASE_URL="$DATABASE_URL" node check.js)
STATUS=passed
