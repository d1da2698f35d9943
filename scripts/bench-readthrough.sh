#!/usr/bin/env bash
# Read-through benchmark: C clients GET product:<id> keys, ids drawn from a Zipf distribution
# (s = 1.1) over 1..10000, through a [[mapping]] that reads them from PostgreSQL. Two runs, each
# from a cold start (fresh cacheside processes, Redis FLUSHALL, pg_stat_statements reset):
#   A: 1 cacheside instance;  B: 3 cacheside instances in front of the same Redis.
# After each run it prints the distinct keys requested against the number of queries Postgres
# ran (pg_stat_statements; target: equal, i.e. no key loaded twice) and the client-side latency
# of first requests (miss path) and repeats (Redis hits) under that load. Then, per run, an
# unloaded probe (1 client, one GET at a time, keys the run did not request: a miss, then a hit)
# is set against the same query run directly (pgbench, 1 client, prepared).
#
# Usage (from the repo root): scripts/bench-readthrough.sh [--clients C] [--requests N]
#                                 [--probe P] [--direct N] [--seed S] [--keep-logs]
#
#   --clients C    client connections, round-robin over the instances (default 48)
#   --requests N   GETs per run, all clients together (default 20000)
#   --probe P      keys of the unloaded probe (default 300)
#   --direct N     pgbench transactions for the direct-query latency (default 2000)
#   --seed S       seed of the Zipf id sequence; the same in both runs (default 1)
#   --keep-logs    keep the temporary directories with configs, logs and raw results
#
# Exit status 1 if a run's query count differs from its distinct keys (or anything fails).
# The load generator is scripts/bench-readthrough-load.py.
#
# Needs: cargo, redis-server (Debian package redis-server), redis-cli (redis-tools), PostgreSQL
# 15 server binaries with pgbench and pg_stat_statements (postgresql-15; PGBIN overrides
# /usr/lib/postgresql/15/bin), psql (postgresql-client-15), python3 (standard library only),
# and, when run as root, runuser (util-linux) and a `postgres` OS user. Nothing is installed.
#
# Client, cacheside, Redis and Postgres share the machine; on a small machine latencies include
# CPU contention between them (and with anything else running), so compare rows of one run.

set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh" # free_port, wait_ping

CLIENTS=48
REQUESTS=20000
DIRECT_TX=2000
SEED=1
KEYS=10000
ZIPF_S=1.1
PROBE_KEYS=300
KEEP_LOGS=0
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

posint() { # posint OPTION VALUE
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-readthrough.sh: $1 needs a positive integer" >&2
        exit 2
    }
}

while [[ $# -gt 0 ]]; do
    opt=$1
    case "$opt" in
        --*=*) val=${opt#*=}; opt=${opt%%=*}; shift ;;
        --clients | --requests | --probe | --direct | --seed)
            [[ $# -ge 2 ]] || { posint "$opt" ""; }
            val=$2
            shift 2
            ;;
        *) val=""; shift ;;
    esac
    case "$opt" in
        --clients) posint "$opt" "$val"; CLIENTS=$val ;;
        --requests) posint "$opt" "$val"; REQUESTS=$val ;;
        --probe) posint "$opt" "$val"; PROBE_KEYS=$val ;;
        --direct) posint "$opt" "$val"; DIRECT_TX=$val ;;
        --seed) posint "$opt" "$val"; SEED=$val ;;
        --keep-logs) KEEP_LOGS=1 ;;
        -h | --help) usage; exit 0 ;;
        *)
            echo "bench-readthrough.sh: unknown argument: $opt" >&2
            usage >&2
            exit 2
            ;;
    esac
done

# --- prerequisites ---------------------------------------------------------------------------

AS_ROOT=0
[[ $EUID -eq 0 ]] && AS_ROOT=1

missing=0
need() { # need BINARY DEBIAN-PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench-readthrough.sh: '$1' not found; install the Debian package '$2'" \
            "(apt-get install $2)" >&2
        missing=1
    fi
}
need redis-server redis-server
need redis-cli redis-tools
need cargo "cargo (or rustup)"
need python3 python3
need awk "mawk (or gawk)"
for b in initdb pg_ctl postgres pgbench; do
    need "$PGBIN/$b" postgresql-15
done
need "$PGBIN/psql" postgresql-client-15
if [[ -x "$PGBIN/pg_config" &&
    ! -f "$("$PGBIN/pg_config" --sharedir)/extension/pg_stat_statements.control" ]]; then
    echo "bench-readthrough.sh: the pg_stat_statements extension is missing; install the" \
        "Debian package 'postgresql-15' (apt-get install postgresql-15)" >&2
    missing=1
fi
if [[ $AS_ROOT -eq 1 ]]; then
    need runuser util-linux
    id postgres >/dev/null 2>&1 || {
        echo "bench-readthrough.sh: running as root needs a 'postgres' OS user to run PostgreSQL" \
            "(the Debian package 'postgresql-15' creates it)" >&2
        missing=1
    }
fi
[[ $missing -eq 0 ]] || exit 1

cd "$(dirname "$0")/.."
[[ -f Cargo.toml && -f scripts/bench-readthrough-load.py ]] || {
    echo "bench-readthrough.sh: cannot find the repo root" >&2
    exit 1
}
LOADGEN=scripts/bench-readthrough-load.py

# Nothing from the caller's environment may reconfigure cacheside or redirect psql/pgbench.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^CACHESIDE_' || true)
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGSERVICEFILE PGPASSWORD \
    PGPASSFILE PGDATA PGSSLMODE PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT

# --- processes and cleanup -------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cacheside-bench-rt.XXXXXX")
# PostgreSQL's directory: under /tmp and owned by the user PostgreSQL runs as.
PGROOT=$(mktemp -d /tmp/cacheside-bench-pg.XXXXXX)
PGDATA_DIR=$PGROOT/data
PIDS=()    # redis-server
CS_PIDS=() # cacheside instances of the current run

pg_as() { # pg_as PROGRAM ARGS...: as the postgres OS user when root, from a dir it can enter
    if [[ $AS_ROOT -eq 1 ]]; then
        (cd "$PGROOT" && LC_ALL=C runuser -u postgres -- "$@")
    else
        (cd "$PGROOT" && LC_ALL=C "$@")
    fi
}

stop_cacheside() {
    local pid
    for pid in "${CS_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${CS_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    CS_PIDS=()
}

cleanup() {
    local pid
    stop_cacheside
    if [[ -f "$PGDATA_DIR/postmaster.pid" ]]; then
        pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_LOGS -eq 1 ]]; then
        cp -f "$PGROOT/postgres.log" "$TMP/" 2>/dev/null || true
        echo "bench-readthrough.sh: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    rm -rf "$PGROOT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



# --- build -----------------------------------------------------------------------------------

echo "== building cacheside (cargo build --release)" >&2
cargo build --release --bin cacheside >&2
CACHESIDE=target/release/cacheside
[[ -x "$CACHESIDE" ]] || {
    echo "bench-readthrough.sh: $CACHESIDE was not built" >&2
    exit 1
}

# --- redis -----------------------------------------------------------------------------------

REDIS_PORT=$(free_port)
echo "== starting redis-server on $REDIS_PORT" >&2
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --logfile "$TMP/redis.log" --dir "$TMP" &
PIDS+=($!)
wait_ping redis-server "$REDIS_PORT" "${PIDS[-1]}" "$TMP/redis.log"
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# --- postgres --------------------------------------------------------------------------------

PG_PORT=$(free_port)
echo "== starting PostgreSQL on $PG_PORT" >&2
[[ $AS_ROOT -eq 1 ]] && chown -R postgres:postgres "$PGROOT"
pg_as "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust --no-sync --no-instructions \
    -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 || {
    echo "bench-readthrough.sh: initdb failed:" >&2
    cat "$TMP/initdb.log" >&2
    exit 1
}
pg_as "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGROOT/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $PGROOT -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_preload_libraries=pg_stat_statements" \
    start >"$TMP/pg_ctl.log" 2>&1 || {
    echo "bench-readthrough.sh: pg_ctl start failed:" >&2
    cat "$TMP/pg_ctl.log" >&2
    tail -n 20 "$PGROOT/postgres.log" >&2 || true
    exit 1
}

psql_db() { # psql_db DB SQL: run SQL, print unaligned tuples only
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" \
        -c "$2"
}
psql_db postgres "CREATE DATABASE products_db" >/dev/null
# The seed data; scripts/bench-readthrough-load.py's expected() renders the same rows.
psql_db products_db "
CREATE EXTENSION pg_stat_statements;
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL,
                       category text NOT NULL);
INSERT INTO products
SELECT i, 'Product ' || i, ((i * 7919) % 100000) / 100.0,
       (ARRAY['books', 'games', 'garden', 'kitchen', 'toys'])[i % 5 + 1]
FROM generate_series(1, $KEYS) AS i;
ANALYZE products;" >/dev/null

# The load generator checks every reply byte for byte against its own rendering of the rows;
# make sure that rendering is what Postgres says, for every row.
psql_db products_db "SELECT row_to_json(q)::text FROM (SELECT id, name, price, category
    FROM products ORDER BY id) AS q" >"$TMP/rows-postgres.txt"
python3 "$LOADGEN" --expected "$KEYS" >"$TMP/rows-expected.txt"
cmp -s "$TMP/rows-postgres.txt" "$TMP/rows-expected.txt" || {
    echo "bench-readthrough.sh: the seed rows differ from the load generator's expected values:" >&2
    diff "$TMP/rows-postgres.txt" "$TMP/rows-expected.txt" | head -n 10 >&2
    exit 1
}

# The statement cacheside runs for the mapping (it wraps the query in row_to_json), counted by
# pg_stat_statements under its normalized text.
QUERY_FRAGMENT="FROM products WHERE id"
pg_queries() {
    psql_db products_db "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
        WHERE strpos(query, '$QUERY_FRAGMENT') > 0"
}

# --- cacheside config ------------------------------------------------------------------------

cat >"$TMP/cacheside.toml" <<EOF
# Read-through only: no [[cache]] rules, so the hot tier stores nothing.
[postgres]
url = "postgres://postgres@127.0.0.1:$PG_PORT/products_db"

[[mapping]]
name  = "product"
key   = "product:{id}"
query = "SELECT id, name, price, category FROM products WHERE id = \$1"
shape = "json"
ttl   = "1h"
EOF
"$CACHESIDE" check-config --config "$TMP/cacheside.toml" \
    --upstream "redis://127.0.0.1:$REDIS_PORT" --listen "127.0.0.1:$(free_port)" \
    --admin-listen "" >"$TMP/check-config.log" 2>&1 || {
    echo "bench-readthrough.sh: cacheside rejected the config:" >&2
    cat "$TMP/check-config.log" >&2
    exit 1
}

# --- the direct query ------------------------------------------------------------------------

# The same statement cacheside sends, run by pgbench over TCP, one client, prepared.
cat >"$TMP/direct.sql" <<'EOF'
\set id random(1, 10000)
SELECT row_to_json(q)::text FROM (SELECT id, name, price, category FROM products WHERE id = :id) AS q;
EOF
sed -i "s/random(1, 10000)/random(1, $KEYS)/" "$TMP/direct.sql"

direct_latency() { # direct_latency LABEL -> "avg p50 p99" in ms
    local label=$1 out avg
    rm -f "$TMP/pgbench-$label".*
    out=$(cd "$TMP" && "$PGBIN/pgbench" -n -f "$TMP/direct.sql" -t "$DIRECT_TX" -c 1 -M prepared \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres -l --log-prefix="pgbench-$label" products_db \
        2>"$TMP/pgbench-$label.stderr") || {
        echo "bench-readthrough.sh: pgbench failed:" >&2
        cat "$TMP/pgbench-$label.stderr" >&2
        exit 1
    }
    printf '%s\n' "$out" >"$TMP/pgbench-$label.out"
    avg=$(printf '%s\n' "$out" | awk -F'= ' '/^latency average/ { split($2, a, " "); print a[1] }')
    [[ -n "$avg" ]] || {
        echo "bench-readthrough.sh: no latency average in pgbench's output:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    }
    # Per-transaction log: client_id transaction_no time_us script_no epoch epoch_us
    cat "$TMP/pgbench-$label".[0-9]* | awk '{ print $3 }' | sort -n |
        awk -v avg="$avg" '{ v[NR] = $1 } END {
            if (NR == 0) { print avg, "nan", "nan"; exit }
            i50 = int((NR * 50 + 99) / 100); i99 = int((NR * 99 + 99) / 100)
            printf "%s %.3f %.3f\n", avg, v[i50] / 1000, v[i99] / 1000 }'
}

# --- runs ------------------------------------------------------------------------------------

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"

run() { # run LABEL INSTANCES
    local label=$1 n=$2 i port ports="" pid queries queries2 direct cached leases
    echo "== run $label: $n cacheside instance(s), $CLIENTS clients, $REQUESTS GETs" >&2
    for i in $(seq 1 "$n"); do
        port=$(free_port)
        "$CACHESIDE" --config "$TMP/cacheside.toml" --upstream "redis://127.0.0.1:$REDIS_PORT" \
            --listen "127.0.0.1:$port" --admin-listen "" --log-level warn \
            >"$TMP/cacheside-$label-$i.log" 2>&1 &
        pid=$!
        CS_PIDS+=("$pid")
        wait_ping "cacheside $label-$i" "$port" "$pid" "$TMP/cacheside-$label-$i.log"
        ports+="${ports:+,}$port"
    done

    # Cold start: nothing in Redis, no statement counted yet.
    [[ "$(rcli flushall)" == OK ]] || { echo "bench-readthrough.sh: FLUSHALL failed" >&2; exit 1; }
    psql_db products_db "SELECT pg_stat_statements_reset()" >/dev/null
    [[ "$(pg_queries)" == 0 ]] || { echo "bench-readthrough.sh: counter not reset" >&2; exit 1; }

    local gen=(python3 "$LOADGEN" --ports "$ports" --requests "$REQUESTS" --keys "$KEYS"
        --zipf "$ZIPF_S" --seed "$SEED")
    "${gen[@]}" --clients "$CLIENTS" >"$TMP/load-$label.json" || {
        echo "bench-readthrough.sh: run $label: the load generator failed (above)" >&2
        KEEP_LOGS=1
        exit 1
    }

    # A backend counts a statement when it finishes it, a moment after the rows went out.
    sleep 0.3
    queries=$(pg_queries)
    cached=$(rcli --scan --pattern 'product:*' | wc -l)
    leases=$(rcli --scan --pattern 'cacheside:lease:*' | wc -l)

    # Unloaded: one client, one GET at a time, keys the run did not touch (a miss, then a hit).
    echo "== run $label: unloaded probe, $PROBE_KEYS keys" >&2
    "${gen[@]}" --probe "$PROBE_KEYS" >"$TMP/probe-$label.json" || {
        echo "bench-readthrough.sh: run $label: the probe failed (above)" >&2
        KEEP_LOGS=1
        exit 1
    }
    sleep 0.3
    queries2=$(pg_queries)

    for pid in "${CS_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || {
            echo "bench-readthrough.sh: run $label: a cacheside instance died; see $TMP" >&2
            KEEP_LOGS=1
            exit 1
        }
    done
    stop_cacheside
    if grep -qiE 'error|panic' "$TMP/cacheside-$label"-*.log; then
        echo "bench-readthrough.sh: run $label: cacheside logged errors (logs kept):" >&2
        grep -hiE 'error|panic' "$TMP/cacheside-$label"-*.log | head -n 10 >&2
        KEEP_LOGS=1
    fi

    # After the run, so that its statements are not counted with cacheside's.
    echo "== run $label: direct query, pgbench -t $DIRECT_TX -c 1 -M prepared" >&2
    direct=$(direct_latency "$label")

    # shellcheck disable=SC2086 # $direct is "avg p50 p99"
    python3 - "$TMP" "$label" "$n" "$queries" "$((queries2 - queries))" "$cached" "$leases" \
        $direct >>"$RESULTS" <<'PY'
import json, sys
tmp, label, n, queries, probe_q, cached, leases, d_avg, d_p50, d_p99 = sys.argv[1:11]
load = json.load(open("%s/load-%s.json" % (tmp, label)))
probe = json.load(open("%s/probe-%s.json" % (tmp, label)))
print(json.dumps({
    "label": label, "instances": int(n), "load": load, "probe": probe,
    "queries": int(queries), "probe_queries": int(probe_q), "cached": int(cached),
    "leases": int(leases),
    "direct": {"avg_ms": float(d_avg), "p50_ms": float(d_p50), "p99_ms": float(d_p99)},
}))
PY
}

run A 1
run B 3

# --- report ----------------------------------------------------------------------------------

cores=$(nproc 2>/dev/null || echo "?")
echo
echo "read-through: $CLIENTS clients (round-robin over the instances), $REQUESTS GETs per run," \
    "pipeline depth 1, ids Zipf(s=$ZIPF_S) over 1..$KEYS (seed $SEED); each run from a cold start"
echo "(fresh cacheside processes, Redis FLUSHALL, pg_stat_statements reset); $cores CPU cores" \
    "shared by the client, cacheside, Redis and Postgres"
echo "$(redis-server --version | awk '{print $1, $2, $3}'); $("$PGBIN/postgres" --version);" \
    "cacheside $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([[ -z "$(git status --porcelain -- src 2>/dev/null)" ]] || echo ' (+ uncommitted src changes)')"
echo

python3 - "$RESULTS" "$CLIENTS" <<'PY' || exit 1
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
clients = sys.argv[2]
f = lambda v: "-" if v is None else "%.3f" % v

def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-----" if i == 0 else "----:" for i in range(len(head))) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print()

table(["run", "instances", "GETs", "distinct keys", "Postgres queries", "queries/distinct",
       "keys in Redis", "leases left", "GET/s", "probe keys", "probe queries"],
      [[r["label"], r["instances"], r["load"]["requests"], r["load"]["distinct_keys"],
        r["queries"], "%.2f" % (r["queries"] / r["load"]["distinct_keys"]), r["cached"],
        r["leases"], "%.0f" % r["load"]["rps"], r["probe"]["keys"], r["probe_queries"]]
       for r in runs])

print("Under load (%s clients):" % clients)
print()
table(["run", "miss n", "miss p50 ms", "miss p99 ms", "miss max ms", "coalesced n",
       "coalesced p50 ms", "coalesced p99 ms", "hit n", "hit p50 ms", "hit p99 ms"],
      [[r["label"]] + [x for k in ("miss", "coalesced", "hit")
                       for x in ([r["load"][k]["count"], f(r["load"][k]["p50_ms"]),
                                  f(r["load"][k]["p99_ms"])]
                                 + ([f(r["load"][k]["max_ms"])] if k == "miss" else []))]
       for r in runs])

print("Unloaded (1 client, one GET at a time) against the direct query:")
print()
table(["run", "miss p50 ms", "miss p99 ms", "hit p50 ms", "hit p99 ms", "direct avg ms",
       "direct p50 ms", "direct p99 ms", "miss p50 - direct p50 ms", "miss p50 / direct p50"],
      [[r["label"], f(r["probe"]["miss"]["p50_ms"]), f(r["probe"]["miss"]["p99_ms"]),
        f(r["probe"]["hit"]["p50_ms"]), f(r["probe"]["hit"]["p99_ms"]),
        f(r["direct"]["avg_ms"]), f(r["direct"]["p50_ms"]), f(r["direct"]["p99_ms"]),
        f(r["probe"]["miss"]["p50_ms"] - r["direct"]["p50_ms"]),
        "%.1f" % (r["probe"]["miss"]["p50_ms"] / r["direct"]["p50_ms"])
        if r["direct"]["p50_ms"] > 0 else "-"]
       for r in runs])

print("miss: first GET of a key; coalesced: a repeat sent while the first GET of its key was")
print("unanswered; hit: a repeat sent after. Latencies as the client sees them. Under load they are")
print("mostly the queueing of %s closed-loop clients on one Python thread; the unloaded probe GETs" % clients)
print("keys the run did not touch. direct: pgbench -c 1 -M prepared, the statement cacheside runs,")
print("after each run, with the benchmark's own load stopped; 'avg' is pgbench's latency average.")
print()
ok = True
for r in runs:
    d = r["load"]["distinct_keys"]
    good = r["queries"] == d and r["probe_queries"] == r["probe"]["keys"]
    ok &= good
    print("run %s: %d Postgres queries for %d distinct keys, %d for %d probe keys: %s"
          % (r["label"], r["queries"], d, r["probe_queries"], r["probe"]["keys"],
             "queries == distinct keys" if good else "DUPLICATE OR MISSING LOADS"))
print("target queries == distinct keys: %s" % ("met in both runs" if ok else "NOT met"))
sys.exit(0 if ok else 1)
PY
