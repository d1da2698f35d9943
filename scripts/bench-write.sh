#!/usr/bin/env bash
# Write benchmark (release build): how fast an app's write is acknowledged, per strategy.
#   behind:  SET item:<id> through cacheside, a [[mapping]] with write = "behind" (queued in a
#            Redis Stream by one script, applied to PostgreSQL by the sidecar's worker);
#   through: SET titem:<id> through cacheside, a [[mapping]] with write = "through" (the INSERT
#            ... ON CONFLICT committed in PostgreSQL first, then Redis set, then +OK);
#   set:     the same SET through cacheside on a key no mapping declares (the proxy alone);
#   redis:   the same SET straight to redis-server (the floor);
#   direct:  one INSERT ... ON CONFLICT per request straight to PostgreSQL (pgbench, prepared),
#            what an app without a cache layer, or with a hand-written write-through, pays.
# Each row: requests/s, p50 and p99 in ms, as the load generator saw them (redis-benchmark for
# the first three, pgbench's per-transaction log for the last). For behind it also prints the
# flush lag under that load: the largest cacheside_write_behind_lag_seconds and queue depth seen
# (sampled every 100 ms), and how long the queue took to drain once the load stopped, then
# checks that PostgreSQL holds, for every key, the value Redis holds.
#
# Usage (from the repo root): scripts/bench-write.sh [--clients C] [--requests N] [--keys K]
#                                                    [--keep-logs]
#   --clients C   concurrent connections (default 50)
#   --requests N  writes per run (default 100000)
#   --keys K      distinct ids written (default 10000)
#   --keep-logs   keep the temporary directory with configs and logs
#   --no-build    use target/release/cacheside as it is (skip cargo build --release)
#
# PostgreSQL runs with its defaults (fsync and synchronous_commit on): a direct INSERT pays a
# durable commit per request, write-behind one per batch. Everything shares the machine; on a
# small machine compare rows of one run, not absolute numbers.
#
# Needs: cargo, redis-server (Debian package redis-server), redis-cli and redis-benchmark
# (redis-tools), PostgreSQL 15 server binaries with pgbench (postgresql-15; PGBIN overrides
# /usr/lib/postgresql/15/bin), psql (postgresql-client-15), curl, awk; as root, runuser
# (util-linux) and a `postgres` OS user. Nothing is installed.

set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh" # free_port, wait_ping

CLIENTS=50
REQUESTS=100000
KEYS=10000
KEEP_LOGS=0
BUILD=1
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

posint() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-write.sh: $1 needs a positive integer" >&2
        exit 2
    }
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) posint "$1" "${2:-}"; CLIENTS=$2; shift 2 ;;
        --requests) posint "$1" "${2:-}"; REQUESTS=$2; shift 2 ;;
        --keys) posint "$1" "${2:-}"; KEYS=$2; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-write.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

AS_ROOT=0
[[ $EUID -eq 0 ]] && AS_ROOT=1
missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench-write.sh: '$1' not found; install the Debian package '$2' (apt-get install $2)" >&2
        missing=1
    fi
}
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need cargo "cargo (or rustup)"
need curl curl
need awk "mawk (or gawk)"
for b in initdb pg_ctl postgres pgbench psql; do
    need "$PGBIN/$b" postgresql-15
done
if [[ $AS_ROOT -eq 1 ]]; then
    need runuser util-linux
    id postgres >/dev/null 2>&1 || {
        echo "bench-write.sh: running as root needs a 'postgres' OS user (the Debian package 'postgresql-15' creates it)" >&2
        missing=1
    }
fi
[[ $missing -eq 0 ]] || exit 1

cd "$(dirname "$0")/.."
[[ -f Cargo.toml ]] || { echo "bench-write.sh: cannot find the repo root" >&2; exit 1; }
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^CACHESIDE_' || true)
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGPASSWORD PGPASSFILE PGDATA

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cacheside-bench-write.XXXXXX")
PGROOT=$(mktemp -d /tmp/cacheside-bench-write-pg.XXXXXX)
PGDATA_DIR=$PGROOT/data
PIDS=()

pg_as() {
    if [[ $AS_ROOT -eq 1 ]]; then
        (cd "$PGROOT" && LC_ALL=C runuser -u postgres -- "$@")
    else
        (cd "$PGROOT" && LC_ALL=C "$@")
    fi
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -f "$PGDATA_DIR/postmaster.pid" ]]; then
        pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ $KEEP_LOGS -eq 1 ]]; then
        echo "bench-write.sh: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    rm -rf "$PGROOT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



if [[ $BUILD -eq 1 ]]; then
    echo "== building cacheside (cargo build --release)" >&2
    cargo build --release --bin cacheside >&2
fi
CACHESIDE=target/release/cacheside
[[ -x "$CACHESIDE" ]] || { echo "bench-write.sh: $CACHESIDE was not built" >&2; exit 1; }

REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --logfile "$TMP/redis.log" --dir "$TMP" &
PIDS+=($!)
wait_ping redis-server "$REDIS_PORT" "${PIDS[-1]}" "$TMP/redis.log"
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

PG_PORT=$(free_port)
echo "== starting PostgreSQL on $PG_PORT (fsync on)" >&2
[[ $AS_ROOT -eq 1 ]] && chown -R postgres:postgres "$PGROOT"
pg_as "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust --no-instructions -E UTF8 \
    --locale=C >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; exit 1; }
pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGROOT/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=200" \
    start >"$TMP/pg_ctl.log" 2>&1 || { cat "$TMP/pg_ctl.log" >&2; exit 1; }
psql_db() {
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -c "$2"
}
psql_db postgres "CREATE DATABASE bench" >/dev/null
psql_db bench "CREATE TABLE wb_items (id int PRIMARY KEY, body text NOT NULL)" >/dev/null
psql_db bench "CREATE TABLE wt_items (id int PRIMARY KEY, body text NOT NULL)" >/dev/null

WRITE_QUERY="INSERT INTO wb_items (id, body) VALUES (\$1, \$2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
CS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
cat >"$TMP/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$CS_PORT"
[upstream]
url = "redis://127.0.0.1:$REDIS_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[log]
level = "warn"
[postgres]
url = "postgres://postgres@127.0.0.1:$PG_PORT/bench"
[[mapping]]
name = "item"
key = "item:{id}"
query = "SELECT body FROM wb_items WHERE id = \$1"
shape = "string"
ttl = "1h"
write = "behind"
write_query = "$WRITE_QUERY"
write_behind_max_queue = 10000000
[[mapping]]
name = "titem"
key = "titem:{id}"
query = "SELECT body FROM wt_items WHERE id = \$1"
shape = "string"
ttl = "1h"
write = "through"
write_query = "INSERT INTO wt_items (id, body) VALUES (\$1, \$2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
EOF
"$CACHESIDE" --config "$TMP/proxy.toml" >"$TMP/cacheside.log" 2>&1 &
PIDS+=($!)
wait_ping cacheside "$CS_PORT" "${PIDS[-1]}" "$TMP/cacheside.log"

VALUE=$(printf 'v%.0s' $(seq 1 32))
# redis-benchmark --csv: "test","rps","avg","min","p50","p95","p99","max" (ms).
bench() { # bench NAME PORT KEY-PREFIX
    local out
    out=$(redis-benchmark -h 127.0.0.1 -p "$2" -c "$CLIENTS" -n "$REQUESTS" -r "$KEYS" --csv \
        SET "${3}__rand_int__" "$VALUE" 2>"$TMP/$1.err" | tail -n 1)
    echo "$out" | awk -F'","' -v name="$1" '{ gsub(/"/, "", $0); split($0, f, ",");
        printf "%-8s %12.0f %10.3f %10.3f\n", name, f[2], f[5], f[7] }'
}

metric() { # metric NAME: its value for mapping item
    curl -s "127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1{mapping=\"item\"}" '$1 == m { print $2 }'
}

printf '%-8s %12s %10s %10s\n' strategy "writes/s" "p50 ms" "p99 ms"
echo "== write-behind through cacheside ($CLIENTS clients, $REQUESTS SETs over $KEYS ids)" >&2
(
    while :; do
        echo "$(metric cacheside_write_behind_lag_seconds) $(metric cacheside_write_behind_queue_depth)"
        sleep 0.1
    done
) >"$TMP/lag.txt" &
SAMPLER=$!
bench behind "$CS_PORT" "item:"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
LOAD_END=$(date +%s.%N)
while [[ "$(rcli XLEN cacheside:wb:item)" != "0" ]]; do sleep 0.05; done
DRAIN=$(awk -v a="$LOAD_END" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
# Every key's value in PostgreSQL is the one Redis holds.
rcli --scan --pattern 'item:*' | sort >"$TMP/keys.txt"
: >"$TMP/redis-values.txt"
while read -r k; do
    echo "${k#item:} $(rcli GET "$k")" >>"$TMP/redis-values.txt"
done <"$TMP/keys.txt"
psql_db bench "SELECT id, body FROM wb_items" | awk -F'|' '{ printf "%012d %s\n", $1, $2 }' \
    | sort >"$TMP/pg-values.txt"
sort -o "$TMP/redis-values.txt" "$TMP/redis-values.txt"
if cmp -s "$TMP/redis-values.txt" "$TMP/pg-values.txt"; then
    CHECKED="PostgreSQL holds Redis's value for all $(wc -l <"$TMP/keys.txt") keys written behind"
else
    echo "bench-write.sh: PostgreSQL and Redis differ after the drain" >&2
    exit 1
fi

bench through "$CS_PORT" "titem:"
THROUGH_ROWS=$(psql_db bench "SELECT count(*) FROM wt_items")
bench set "$CS_PORT" "plain:"
bench redis "$REDIS_PORT" "plain:"

echo "== direct INSERT per request (pgbench, prepared)" >&2
cat >"$TMP/insert.sql" <<EOF
\set id random(1, $KEYS)
INSERT INTO wb_items (id, body) VALUES (:id, '$VALUE') ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body;
EOF
PER_CLIENT=$(((REQUESTS + CLIENTS - 1) / CLIENTS))
(cd "$TMP" && "$PGBIN/pgbench" -n -M prepared -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -c "$CLIENTS" -j 2 -t "$PER_CLIENT" -f insert.sql -l --log-prefix=direct bench \
    >"$TMP/pgbench.out" 2>&1) || { cat "$TMP/pgbench.out" >&2; exit 1; }
TPS=$(awk '/^tps = / { print $3; exit }' "$TMP/pgbench.out")
cat "$TMP"/direct.* | awk '{ print $3 / 1000 }' | sort -n >"$TMP/direct-sorted.txt"
N=$(wc -l <"$TMP/direct-sorted.txt")
P50=$(awk -v n="$N" 'NR == int(n * 0.50) + 1 { print; exit }' "$TMP/direct-sorted.txt")
P99=$(awk -v n="$N" 'NR == int(n * 0.99) + 1 { print; exit }' "$TMP/direct-sorted.txt")
printf '%-8s %12.0f %10.3f %10.3f\n' direct "$TPS" "$P50" "$P99"

echo
awk '{ if ($1 > lag) lag = $1; if ($2 > depth) depth = $2 }
     END { printf "write-behind flush lag under load: max %.2f s, max queue depth %d\n", lag, depth }' \
    "$TMP/lag.txt"
echo "queue drained ${DRAIN} s after the load stopped"
echo "$CHECKED"
echo "write-through committed $THROUGH_ROWS distinct rows before acknowledging"
