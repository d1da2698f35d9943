#!/usr/bin/env bash
# End-to-end throughput/latency comparison: redis-benchmark against Redis directly, through
# twemproxy (nutcracker) and through cacheside, all three in the same run and interleaved per
# test so that machine noise is shared. A last GET group adds cacheside-hot (a second cacheside
# whose hot tier caches key:*, warmed with every key first) against direct and twemproxy.
# Each run also reports the CPU time the serving process (redis-server, nutcracker, cacheside)
# spent per request: utime+stime from /proc/<pid>/stat before and after the run.
#
# Usage (from the repo root): scripts/bench.sh [--requests N] [--rounds R] [--delay D] [--keep-logs]
#
#   --requests N   requests per redis-benchmark run (default: 200000 at -P 1, 800000 at -P 16)
#   --rounds R     runs of every test against every target, interleaved (default 3); each
#                  figure reported is the median of its R runs, and the ratio tables give the
#                  lowest and highest per-round ratio beside the median's
#   --delay D      reach Redis only through examples/latency_relay.rs, which holds every chunk
#                  for D in each direction (e.g. 250us; 0s measures the relay alone): the
#                  direct runs, twemproxy's and both cacheside's upstream all go through it.
#                  Runs GET only. The environment variable BENCH_DELAY=D does the same.
#   --keep-logs    keep the temporary directory with configs and server logs
#
# Needs: cargo, redis-server (Debian package redis-server), redis-cli and redis-benchmark
# (redis-tools), nutcracker (nutcracker), python3, getconf (libc-bin). Nothing is installed by
# this script.
#
# Every process (client, proxies, Redis, relay) shares the same machine; on a small machine
# they compete for CPU, so compare targets with each other within one run, not across machines.

set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

CLIENTS=50
DATA_SIZE=100
KEYSPACE=100000
REQ_P1=200000
REQ_P16=800000
KEEP_LOGS=0
ROUNDS=3
DELAY=${BENCH_DELAY:-}

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench.sh: --requests needs a positive integer" >&2
                exit 2
            }
            REQ_P1=$2
            REQ_P16=$2
            shift 2
            ;;
        --requests=*)
            v=${1#--requests=}
            [[ "$v" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench.sh: --requests needs a positive integer" >&2
                exit 2
            }
            REQ_P1=$v
            REQ_P16=$v
            shift
            ;;
        --delay)
            [[ $# -ge 2 && -n "$2" ]] || {
                echo "bench.sh: --delay needs a duration, e.g. 250us" >&2
                exit 2
            }
            DELAY=$2
            shift 2
            ;;
        --delay=*)
            DELAY=${1#--delay=}
            shift
            ;;
        --keep-logs)
            KEEP_LOGS=1
            shift
            ;;
        --rounds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench.sh: --rounds needs a positive integer" >&2
                exit 2
            }
            ROUNDS=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "bench.sh: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
done

# --- prerequisites ---------------------------------------------------------------------------

need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need nutcracker nutcracker
need cargo "cargo (or rustup)"
need awk "mawk (or gawk)"
need python3 python3
need getconf libc-bin
[[ $missing -eq 0 ]] || exit 1
CLK_TCK=$(getconf CLK_TCK)

cd "$(dirname "$0")/.."
[[ -f Cargo.toml ]] || {
    echo "bench.sh: cannot find the repo root" >&2
    exit 1
}

# --- processes and cleanup -------------------------------------------------------------------

bench_setup

# --- build -----------------------------------------------------------------------------------

echo "== building cacheside (cargo build --release)" >&2
cargo build --release --bin cacheside >&2
CACHESIDE=target/release/cacheside
[[ -x "$CACHESIDE" ]] || {
    echo "bench.sh: $CACHESIDE was not built" >&2
    exit 1
}
RELAY=target/release/examples/latency_relay
if [[ -n "$DELAY" ]]; then
    # Built on its own: an example pulls in the dev-dependencies' features, which must not
    # change the cacheside binary under test.
    echo "== building the relay (cargo build --release --example latency_relay)" >&2
    cargo build --release --example latency_relay >&2
    [[ -x "$RELAY" ]] || {
        echo "bench.sh: $RELAY was not built" >&2
        exit 1
    }
fi

# --- start the three targets -----------------------------------------------------------------

REDIS_PORT=$(free_port)
RELAY_PORT=$(free_port)
TWEM_PORT=$(free_port)
TWEM_STATS_PORT=$(free_port)
CS_PORT=$(free_port)
HOT_PORT=$(free_port)

# Where everything but the data load reaches Redis: Redis itself, or the relay in front of it.
if [[ -n "$DELAY" ]]; then UPSTREAM_PORT=$RELAY_PORT; else UPSTREAM_PORT=$REDIS_PORT; fi

# cacheside-hot's config, checked now so a rejected config fails before the long runs. The
# process itself starts only after the SET tests: its CLIENT TRACKING (BCAST on key:) would make
# Redis send, and cacheside-hot process, an invalidation for every SET of those tests.
cat >"$TMP/cacheside-hot.toml" <<EOF
[hot]
max_size = "256MiB"
coherence = "tracking"

[[cache]]
keys = "key:*"
ttl = "300s"
EOF
"$CACHESIDE" check-config --config "$TMP/cacheside-hot.toml" \
    --upstream "redis://127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$HOT_PORT" --admin-listen "" \
    >"$TMP/cacheside-hot-check.log" 2>&1 || {
    echo "bench.sh: cacheside rejected the hot-tier config:" >&2
    cat "$TMP/cacheside-hot-check.log" >&2
    exit 1
}

echo "== starting redis-server on $REDIS_PORT" >&2
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --logfile "$TMP/redis.log" --dir "$TMP" &
PIDS+=($!)
REDIS_PID=${PIDS[-1]}
wait_ping redis-server "$REDIS_PORT" "$REDIS_PID" "$TMP/redis.log"

if [[ -n "$DELAY" ]]; then
    echo "== starting latency_relay on $RELAY_PORT (+$DELAY each way) -> redis-server" >&2
    "$RELAY" --listen "127.0.0.1:$RELAY_PORT" --target "127.0.0.1:$REDIS_PORT" --delay "$DELAY" \
        >"$TMP/relay.out" 2>"$TMP/relay.log" &
    PIDS+=($!)
    RELAY_PID=${PIDS[-1]}
    wait_ping latency_relay "$RELAY_PORT" "$RELAY_PID" "$TMP/relay.log"
fi

echo "== starting nutcracker on $TWEM_PORT" >&2
cat >"$TMP/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$TWEM_PORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  preconnect: true
  server_connections: 2
  servers:
    - 127.0.0.1:$UPSTREAM_PORT:1
EOF
nutcracker -t -c "$TMP/nutcracker.yml" >"$TMP/nutcracker-check.log" 2>&1 || {
    echo "bench.sh: nutcracker rejected its config:" >&2
    cat "$TMP/nutcracker-check.log" >&2
    exit 1
}
nutcracker -c "$TMP/nutcracker.yml" -o "$TMP/nutcracker.log" -p "$TMP/nutcracker.pid" \
    -s "$TWEM_STATS_PORT" -a 127.0.0.1 -v 4 &
PIDS+=($!)
TWEM_PID=${PIDS[-1]}
wait_ping nutcracker "$TWEM_PORT" "$TWEM_PID" "$TMP/nutcracker.log"

echo "== starting cacheside on $CS_PORT" >&2
: >"$TMP/cacheside.toml" # empty config: ignore any ./proxy.toml, flags set the rest
"$CACHESIDE" --config "$TMP/cacheside.toml" --upstream "redis://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$CS_PORT" --admin-listen "" --log-level warn \
    >"$TMP/cacheside.log" 2>&1 &
PIDS+=($!)
CS_PID=${PIDS[-1]}
wait_ping cacheside "$CS_PORT" "$CS_PID" "$TMP/cacheside.log"

# --- data ------------------------------------------------------------------------------------

# redis-benchmark -r N names keys key:%012d for 0 <= %d < N; write all of them so GETs hit.
# Written to Redis itself, not through the relay: loading is not measured.
echo "== writing $KEYSPACE keys of $DATA_SIZE bytes" >&2
awk -v n="$KEYSPACE" -v size="$DATA_SIZE" 'BEGIN {
    v = ""; for (i = 0; i < size; i++) v = v "x"
    for (i = 0; i < n; i++) {
        k = sprintf("key:%012d", i)
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v
    }
}' | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --pipe >"$TMP/populate.log" 2>&1 || {
    echo "bench.sh: populating Redis failed:" >&2
    cat "$TMP/populate.log" >&2
    exit 1
}

declare -A PORT=([direct]=$UPSTREAM_PORT [twemproxy]=$TWEM_PORT [cacheside]=$CS_PORT)
# The process that serves each target's clients, whose CPU time a run is charged.
declare -A PID=([direct]=$REDIS_PID [twemproxy]=$TWEM_PID [cacheside]=$CS_PID)
TARGETS=(direct twemproxy cacheside)
# Through the relay SET would measure the same upstream round trip as GET; only GET is run.
if [[ -n "$DELAY" ]]; then MAIN_TESTS=(get); else MAIN_TESTS=(get set); fi

for t in "${TARGETS[@]}"; do
    got=$(redis-cli -h 127.0.0.1 -p "${PORT[$t]}" get key:000000000042 2>&1)
    if [[ ${#got} -ne $DATA_SIZE ]]; then
        echo "bench.sh: sanity GET through $t returned '$got'" >&2
        exit 1
    fi
done

# What the relay adds to a round trip with nothing else running: one client, one GET at a time,
# straight to Redis and through the relay (p50 in ms).
if [[ -n "$DELAY" ]]; then
    probe() { # probe PORT
        redis-benchmark -h 127.0.0.1 -p "$1" -c 1 -n 2000 -d "$DATA_SIZE" -r "$KEYSPACE" -t get \
            --csv 2>>"$TMP/redis-benchmark.stderr" | tr -d '"\r' | awk -F, '$1 == "GET" { print $5 }'
    }
    echo "== unloaded round trip: 2000 GETs from one client to redis-server, then through the relay" >&2
    PROBE_REDIS=$(probe "$REDIS_PORT")
    PROBE_RELAY=$(probe "$RELAY_PORT")
fi

# --- benchmark -------------------------------------------------------------------------------

# group test pipeline target rps p50 p99 requests cpu-ticks load-generator-cores round
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
round=0

# run_group GROUP TARGET... : redis-benchmark runs of the tests in TESTS at -P 1 and -P 16 against
# every TARGET, the order rotated each round so no target always runs first (or last).
run_group() {
    local group=$1 test pipe n k t r
    shift
    local targets=("$@")
    for ((r = 1; r <= ROUNDS; r++)); do
    for test in "${TESTS[@]}"; do
        for pipe in 1 16; do
            if [[ $pipe -eq 1 ]]; then n=$REQ_P1; else n=$REQ_P16; fi
            for k in "${!targets[@]}"; do
                t=${targets[$(((round + k) % ${#targets[@]}))]}
                bench_one "$group" "$test" "$pipe" "$n" "$t"
            done
            round=$((round + 1))
        done
    done
    done
}

bench_one() { # bench_one GROUP TEST PIPELINE REQUESTS TARGET
    local group=$1 test=$2 pipe=$3 n=$4 t=$5 out line rps p50 p99 cpu0 cpu1 gen0 gen1 wall0 wall1
    echo "== $test -P $pipe -n $n -> $t" >&2
    cpu0=$(cpu_ticks "${PID[$t]}")
    children_cpu_ms
    gen0=$CHILD_MS
    wall0=$(date +%s%3N)
    out=$(redis-benchmark -h 127.0.0.1 -p "${PORT[$t]}" -c "$CLIENTS" -n "$n" \
        -d "$DATA_SIZE" -r "$KEYSPACE" -P "$pipe" -t "$test" --csv \
        2>>"$TMP/redis-benchmark.stderr") || {
        echo "bench.sh: redis-benchmark against $t failed:" >&2
        tail -n 20 "$TMP/redis-benchmark.stderr" >&2
        exit 1
    }
    wall1=$(date +%s%3N)
    children_cpu_ms
    gen1=$CHILD_MS
    cpu1=$(cpu_ticks "${PID[$t]}")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    # "p99_latency_ms","max_latency_ms"
    line=$(printf '%s\n' "$out" | tr -d '"\r' | awk -F, -v T="${test^^}" '$1 == T')
    [[ -n "$line" ]] || {
        echo "bench.sh: no $test result from redis-benchmark against $t; output:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    }
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$group" "$test" "$pipe" "$t" "$rps" \
        "$p50" "$p99" "$n" "$((cpu1 - cpu0))" \
        "$(awk -v c="$((gen1 - gen0))" -v w="$((wall1 - wall0))" 'BEGIN { printf "%.2f", (w > 0 ? c / w : 0) }')" \
        "$round" >>"$RESULTS"
}

TESTS=("${MAIN_TESTS[@]}")
run_group main "${TARGETS[@]}"

# --- hot tier: cacheside-hot ------------------------------------------------------------------

echo "== starting cacheside-hot on $HOT_PORT" >&2
"$CACHESIDE" --config "$TMP/cacheside-hot.toml" --upstream "redis://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$HOT_PORT" --admin-listen "" --log-level warn \
    >"$TMP/cacheside-hot.log" 2>&1 &
PIDS+=($!)
HOT_PID=${PIDS[-1]}
wait_ping cacheside-hot "$HOT_PORT" "$HOT_PID" "$TMP/cacheside-hot.log"
PORT[cacheside-hot]=$HOT_PORT
PID[cacheside-hot]=$HOT_PID

hot_info() { # INFO from cacheside-hot; its own figures are in the "# cacheside" section
    redis-cli -h 127.0.0.1 -p "$HOT_PORT" info | tr -d '\r'
}
field() { # field NAME INFO-TEXT
    printf '%s\n' "$2" | awk -F: -v f="$1" '$1 == f { print $2; exit }'
}
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$HOT_PID/status" 2>/dev/null || echo 0; }

# The tier is bypassed until the CLIENT TRACKING connection is up; fills made before are lost.
for i in $(seq 1 100); do
    [[ "$(field hot_state "$(hot_info)")" == active ]] && break
    sleep 0.1
done
[[ "$(field hot_state "$(hot_info)")" == active ]] || {
    echo "bench.sh: cacheside-hot's tier did not become active within 10s; INFO says" \
        "hot_state:$(field hot_state "$(hot_info)"); its log ($TMP/cacheside-hot.log):" >&2
    tail -n 20 "$TMP/cacheside-hot.log" >&2 || true
    exit 1
}

got=$(redis-cli -h 127.0.0.1 -p "$HOT_PORT" get key:000000000042 2>&1)
if [[ ${#got} -ne $DATA_SIZE ]]; then
    echo "bench.sh: sanity GET through cacheside-hot returned '$got'" >&2
    exit 1
fi

# Warm-up: one GET of every key through cacheside-hot, pipelined 1000 at a time over one
# connection, each reply checked to be a $DATA_SIZE-byte value.
echo "== warming cacheside-hot's tier: GET of all $KEYSPACE keys" >&2
RSS_BEFORE=$(rss_kib)
python3 - "$HOT_PORT" "$KEYSPACE" "$DATA_SIZE" <<'PY' || {
import socket, sys

port, n, size = (int(a) for a in sys.argv[1:4])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf, pos = bytearray(), 0

def need(k):  # until buf holds k bytes past pos
    while len(buf) - pos < k:
        d = s.recv(1 << 20)
        if not d:
            sys.exit("warm-up: connection closed")
        buf.extend(d)

for start in range(0, n, 1000):
    end = min(n, start + 1000)
    req = []
    for i in range(start, end):
        k = b"key:%012d" % i
        req.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
    s.sendall(b"".join(req))
    for i in range(start, end):
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl >= 0:
                break
            need(len(buf) - pos + 1)
        head = bytes(buf[pos:nl])
        if head != b"$%d" % size:
            sys.exit("warm-up: GET key:%012d got %r" % (i, head))
        pos = nl + 2
        need(size + 2)
        pos += size + 2
    del buf[:pos]
    pos = 0
PY
    echo "bench.sh: warming cacheside-hot failed" >&2
    exit 1
}
RSS_AFTER=$(rss_kib)
WARM_INFO=$(hot_info)
HOT_ENTRIES=$(field hot_entries "$WARM_INFO")
HOT_BYTES=$(field hot_bytes "$WARM_INFO")
HITS_BEFORE=$(field hot_hits "$WARM_INFO")
MISSES_BEFORE=$(field hot_misses "$WARM_INFO")
[[ "${HOT_ENTRIES:-0}" -ge $KEYSPACE ]] ||
    echo "bench.sh: warning: after the warm-up cacheside-hot holds ${HOT_ENTRIES:-?} entries," \
        "not $KEYSPACE" >&2

TESTS=(get)
run_group hot direct twemproxy cacheside-hot

RUN_INFO=$(hot_info)
HITS_AFTER=$(field hot_hits "$RUN_INFO")
MISSES_AFTER=$(field hot_misses "$RUN_INFO")

# Every target must still be alive: a crash mid-run would otherwise look like a slow result.
for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || {
        echo "bench.sh: a server (pid ${PIDS[$i]}) died during the run; see $TMP" >&2
        KEEP_LOGS=1
        exit 1
    }
done

# The relay prints, when stopped, how late past their delay its writers picked chunks up.
RELAY_STATS=""
if [[ -n "$DELAY" ]]; then
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_STATS=$(sed -n 's/^latency_relay: delay [^;]*; \(.*\)/Relay delay line: \1./p' "$TMP/relay.out")
fi

# --- report ----------------------------------------------------------------------------------

# Medians over the rounds (same columns as RESULTS, one row per group, test, pipeline and
# target), and per-round ratios' lowest and highest (group test pipeline numerator
# denominator min max), the rounds paired by their cell (the same test and depth, one round).
RUNS="$RESULTS"
RESULTS="$TMP/median.tsv"
SPREAD="$TMP/spread.tsv"
python3 - "$RUNS" "$RESULTS" "$SPREAD" <<'PY'
import statistics, sys
from collections import defaultdict
runs, median_out, spread_out = sys.argv[1:4]
cells = defaultdict(list)
by_round = defaultdict(dict)
for line in open(runs):
    f = line.rstrip("\n").split("\t")
    g, test, pipe, target = f[:4]
    cells[(g, test, pipe, target)].append(f)
    by_round[(g, test, pipe, f[10])][target] = float(f[4])
with open(median_out, "w") as out:
    for (g, test, pipe, target), rows in cells.items():
        med = lambda i: statistics.median(float(r[i]) for r in rows)
        out.write("\t".join([g, test, pipe, target, "%.2f" % med(4), "%.3f" % med(5),
                              "%.3f" % med(6), rows[0][7], "%g" % med(8), "%.2f" % med(9)]) + "\n")
ratios = defaultdict(list)
for (g, test, pipe, _), rps in by_round.items():
    for a in rps:
        for b in rps:
            if a != b and rps[b] > 0:
                ratios[(g, test, pipe, a, b)].append(rps[a] / rps[b])
with open(spread_out, "w") as out:
    for (g, test, pipe, a, b), v in ratios.items():
        out.write("\t".join([g, test, pipe, a, b, "%.2f" % min(v), "%.2f" % max(v)]) + "\n")
PY

cores=$(nproc 2>/dev/null || echo "?")
echo
echo "redis-benchmark: -c $CLIENTS -d $DATA_SIZE -r $KEYSPACE, -n $REQ_P1 at -P 1, -n $REQ_P16 at -P 16;" \
    "$cores CPU cores shared by client, proxies and Redis"
echo "$(redis-server --version | awk '{print $1, $2, $3}'); $(nutcracker --version 2>&1 | head -n 1);" \
    "cacheside $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([[ -z "$(git status --porcelain -- src 2>/dev/null)" ]] || echo ' (+ uncommitted src changes)')"
if [[ -n "$DELAY" ]]; then
    echo "Redis reached only through latency_relay (+$DELAY each way, so each round trip to Redis" \
        "takes 2 x $DELAY more) by direct, twemproxy, cacheside and cacheside-hot. Unloaded, one" \
        "client, one GET at a time: p50 ${PROBE_REDIS:-?} ms to Redis, ${PROBE_RELAY:-?} ms through" \
        "the relay. ${RELAY_STATS:-The relay printed no statistics.}"
fi
echo "CPU µs/req: utime+stime (/proc/PID/stat) of the process the client talks to (redis-server" \
    "for direct, nutcracker, cacheside) over the run, per request; Redis's CPU behind a proxy" \
    "$([[ -n "$DELAY" ]] && echo "and the relay's are" || echo "is") not in it. Counted in ticks of" \
    "$(awk -v t="$CLK_TCK" 'BEGIN { printf "%g", 1000 / t }') ms: ±$(awk -v t="$CLK_TCK" -v n="$REQ_P1" \
        'BEGIN { printf "%.3g", 1e6 / t / n }') µs/req at -P 1," \
    "±$(awk -v t="$CLK_TCK" -v n="$REQ_P16" 'BEGIN { printf "%.3g", 1e6 / t / n }') µs/req at -P 16"
echo
echo "Each figure: the median of $ROUNDS runs, the targets interleaved in every round."
echo "load gen cores: redis-benchmark's own user + system CPU over the run's wall time (1.00 = a"
echo "whole core: the load generator, not the target, bounds that run's rps)"
echo
echo "| test | pipeline | target | rps | p50 ms | p99 ms | CPU µs/req | load gen cores |"
echo "|------|---------:|--------|----:|-------:|-------:|-----------:|---------------:|"
row() { # row GROUP TEST PIPELINE TARGET LABEL
    awk -F'\t' -v g="$1" -v a="$2" -v b="$3" -v c="$4" -v l="$5" -v tck="$CLK_TCK" \
        '$1 == g && $2 == a && $3 == b && $4 == c {
            printf "| %s | %s | %s | %.0f | %.3f | %.3f | %.2f | %s |\n", l, $3, $4, $5, $6, $7,
                $9 * 1e6 / tck / $8, $10
        }' "$RESULTS"
}
for test in "${MAIN_TESTS[@]}"; do
    for pipe in 1 16; do
        for t in "${TARGETS[@]}"; do
            row main "$test" "$pipe" "$t" "${test^^}"
        done
    done
done
for pipe in 1 16; do
    for t in direct twemproxy cacheside-hot; do
        row hot get "$pipe" "$t" "GET (hot group)"
    done
done

# ratios GROUP TESTS TARGET: TARGET's rps and CPU per request over direct's and twemproxy's, for
# each test in TESTS (space-separated) at -P 1 and -P 16.
ratios() {
    awk -F'\t' -v g="$1" -v tests="$2" -v x="$3" '
        FNR == NR { if ($1 == g) spread[$2 SUBSEP $3 SUBSEP $4 SUBSEP $5] = $6 "–" $7; next }
        $1 == g { k = $2 SUBSEP $3 SUBSEP $4; rps[k] = $5; cpu[k] = ($8 > 0 ? $9 / $8 : 0) }
        function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
        function rps_ratio(t, p, a, b,    k, s) {
            k = t SUBSEP p SUBSEP
            s = spread[k a SUBSEP b]
            return ratio(rps[k a], rps[k b]) (s != "" ? " (" s ")" : "")
        }
        END {
            nt = split(tests, ts, " ")
            for (i = 1; i <= nt; i++) for (p = 1; p <= 16; p += 15) {
                k = ts[i] SUBSEP p SUBSEP
                printf "| %s | %d | %s | %s | %s | %s | %s |\n", toupper(ts[i]), p,
                    rps_ratio(ts[i], p, x, "direct"), rps_ratio(ts[i], p, x, "twemproxy"),
                    rps_ratio(ts[i], p, "direct", "twemproxy"),
                    ratio(cpu[k x], cpu[k "direct"]), ratio(cpu[k x], cpu[k "twemproxy"])
            }
        }' "$SPREAD" "$RESULTS"
}

echo
echo "rps ratios: of the medians, then (lowest–highest) of the $ROUNDS rounds' own ratios."
echo "direct/twemproxy rps: how far a forwarding proxy can get past twemproxy at most, since every"
echo "request it forwards still runs on Redis (the ceiling of cacheside/twemproxy for passthrough)"
echo
echo "| test | pipeline | cacheside/direct rps | cacheside/twemproxy rps | direct/twemproxy rps | cacheside/direct CPU/req | cacheside/twemproxy CPU/req |"
echo "|------|---------:|---------------------:|------------------------:|---------------------:|-------------------------:|----------------------------:|"
ratios main "${MAIN_TESTS[*]}" cacheside

echo
echo "hot tier: cacheside-hot/direct (GET (hot group) rows: run after the main group, once every key"
echo "was read through cacheside-hot; direct and twemproxy re-run in the same rotation)"
echo
echo "| test | pipeline | cacheside-hot/direct rps | cacheside-hot/twemproxy rps | direct/twemproxy rps | cacheside-hot/direct CPU/req | cacheside-hot/twemproxy CPU/req |"
echo "|------|---------:|-------------------------:|----------------------------:|---------------------:|-----------------------------:|--------------------------------:|"
ratios hot get cacheside-hot

echo
echo "cacheside-hot tier after the warm-up (INFO, # cacheside): hot_entries:$HOT_ENTRIES hot_bytes:$HOT_BYTES" \
    "($(awk -v b="$HOT_BYTES" -v e="$HOT_ENTRIES" 'BEGIN { print (e > 0 ? sprintf("%.1f", b / e) : "n/a") }')" \
    "bytes/entry as the tier accounts them; payload $((16 + DATA_SIZE)) bytes: 16-byte key + $DATA_SIZE-byte value)"
echo "cacheside-hot RSS: ${RSS_BEFORE} KiB before the warm-up, ${RSS_AFTER} KiB after" \
    "($(awk -v a="$RSS_BEFORE" -v b="$RSS_AFTER" -v e="$HOT_ENTRIES" 'BEGIN {
        print (e > 0 ? sprintf("%.1f", (b - a) * 1024 / e) : "n/a") }') bytes/entry of process growth)"
hot_reqs=$(((REQ_P1 + REQ_P16) * ROUNDS))
echo "cacheside-hot during the GET (hot group) runs: hot_hits +$((HITS_AFTER - HITS_BEFORE))," \
    "hot_misses +$((MISSES_AFTER - MISSES_BEFORE)) for $hot_reqs GETs" \
    "($(awk -v h="$((HITS_AFTER - HITS_BEFORE))" -v n="$hot_reqs" 'BEGIN { printf "%.1f", 100 * h / n }')% served from the tier)"
