#!/usr/bin/env bash
# Redis Cluster benchmark: a 3-primary cluster on this machine, driven by redis-benchmark
# straight (--cluster: a cluster-aware client that sends each key to its node) and through
# cacheside in cluster mode (a plain client: cacheside routes each key), GET and SET at -P 1 and
# -P 16; then GET through cacheside-hot, whose hot tier holds every key (coherence by broadcast
# on a shard channel). Reports throughput, latency and the CPU time per request of the serving
# processes: the three redis-servers for direct, cacheside (or cacheside-hot) for the others.
#
# Usage (from the repo root): scripts/bench-cluster.sh [--requests N] [--tls] [--replicas]
#                                                       [--transactions] [--keep-logs]
#
#   --requests N   requests per redis-benchmark run (default: 100000 at -P 1, 400000 at -P 16)
#   --tls          the cluster speaks TLS only (clients and bus, as ElastiCache with encryption
#                  in transit): direct runs use redis-benchmark --tls, cacheside a rediss:// URL
#                  (its own listener stays plaintext on loopback, as a sidecar's does)
#   --replicas     each primary gets a replica, and GETs also run through cacheside-replica
#                  (upstream.read_from = "replica"); the GET calls each replica served are
#                  reported (INFO commandstats). Direct CPU counts all six redis-servers.
#   --transactions instead of GET/SET: transactions through cacheside (examples/txn_load.rs:
#                  20 clients, MULTI / INCR / EXPIRE / EXEC on random keys for 10 s), with
#                  connections kept and with a new connection per transaction; reports
#                  transactions/s, latency, cacheside's CPU per transaction and the upstream
#                  connections the nodes accepted meanwhile
#   --keep-logs    keep the temporary directory with configs and server logs
#
# CACHESIDE_BIN=path runs that cacheside binary instead of building this tree's.
#
# Needs: cargo, redis-server (Debian package redis-server), redis-cli and redis-benchmark
# (redis-tools), getconf (libc-bin), and openssl for --tls. Nothing is installed by this
# script. Every process shares the machine: compare targets within one run.

set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

CLIENTS=50
DATA_SIZE=100
KEYSPACE=100000
REQ_P1=100000
REQ_P16=400000
KEEP_LOGS=0
TLS=0
REPLICAS=0
TRANSACTIONS=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                echo "$BENCH_NAME: --requests needs a positive integer" >&2
                exit 2
            }
            REQ_P1=$2
            REQ_P16=$2
            shift 2
            ;;
        --keep-logs)
            KEEP_LOGS=1
            shift
            ;;
        --tls)
            TLS=1
            shift
            ;;
        --replicas)
            REPLICAS=1
            shift
            ;;
        --transactions)
            TRANSACTIONS=1
            shift
            ;;
        -h | --help)
            sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "$BENCH_NAME: unknown argument: $1" >&2
            exit 2
            ;;
    esac
done

need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need cargo "cargo (or rustup)"
need getconf libc-bin
[[ $TLS -eq 1 ]] && need openssl openssl
[[ $missing -eq 0 ]] || exit 1
CLK_TCK=$(getconf CLK_TCK)
cd "$(dirname "$0")/.."
bench_setup

if [[ -n "${CACHESIDE_BIN:-}" ]]; then
    # Another build to compare (e.g. an earlier commit's): CACHESIDE_BIN=path/to/cacheside.
    CACHESIDE=$CACHESIDE_BIN
else
    echo "== building cacheside (cargo build --release)" >&2
    cargo build --release --bin cacheside >&2
    CACHESIDE=target/release/cacheside
fi

# --- the cluster: 3 primaries, with --replicas a replica each -----------------------------------

# With --tls: a CA and a certificate for 127.0.0.1 (the address the nodes announce), and the
# arguments every redis-cli / redis-benchmark talking to a node needs.
NODE_CLI=()
UPSTREAM_SCHEME=redis
UPSTREAM_TLS=""
if [[ $TLS -eq 1 ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench-ca" \
        -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$TMP/node.key" -out "$TMP/node.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TMP/san.ext"
    openssl x509 -req -days 1 -in "$TMP/node.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" \
        -CAcreateserial -extfile "$TMP/san.ext" -out "$TMP/node.crt" 2>/dev/null
    NODE_CLI=(--tls --cacert "$TMP/ca.crt")
    UPSTREAM_SCHEME=rediss
    UPSTREAM_TLS="tls_ca_file = \"$TMP/ca.crt\""
fi

NODE_PORTS=()
NODE_PIDS=()
while [[ ${#NODE_PORTS[@]} -lt $((3 * (1 + REPLICAS))) ]]; do
    p=$(free_port)
    # The cluster bus listens on port + 10000: kept below the ephemeral range (32768 and up),
    # where an outgoing connection's local port can hold it without listening.
    if ((p + 10000 >= 32768)) || (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
        continue
    fi
    if [[ $TLS -eq 1 ]]; then
        listen=(--port 0 --tls-port "$p" --tls-cluster yes --tls-auth-clients no
            --tls-cert-file "$TMP/node.crt" --tls-key-file "$TMP/node.key"
            --tls-ca-cert-file "$TMP/ca.crt")
    else
        listen=(--port "$p")
    fi
    redis-server --bind 127.0.0.1 "${listen[@]}" --save "" --appendonly no --daemonize no \
        --cluster-enabled yes --cluster-config-file "$TMP/nodes-$p.conf" \
        --logfile "$TMP/redis-$p.log" --dir "$TMP" &
    PIDS+=($!)
    NODE_PIDS+=($!)
    NODE_PORTS+=("$p")
    wait_ping "redis-server $p" "$p" "${PIDS[-1]}" "$TMP/redis-$p.log" "${NODE_CLI[@]}"
done
echo "== creating the cluster on ${NODE_PORTS[*]}" >&2
redis-cli "${NODE_CLI[@]}" --cluster create $(printf '127.0.0.1:%s ' "${NODE_PORTS[@]}") --cluster-yes \
    --cluster-replicas "$REPLICAS" \
    >"$TMP/cluster-create.log" 2>&1 || {
    echo "$BENCH_NAME: redis-cli --cluster create failed:" >&2
    cat "$TMP/cluster-create.log" >&2
    exit 1
}
for i in $(seq 1 100); do
    ok=1
    for p in "${NODE_PORTS[@]}"; do
        redis-cli "${NODE_CLI[@]}" -p "$p" cluster info | grep -q '^cluster_state:ok' || ok=0
    done
    [[ $ok -eq 1 ]] && break
    sleep 0.1
done
SEED=${NODE_PORTS[0]}

start_cacheside() { # start_cacheside NAME PORT CONFIG-TEXT
    printf '%s\n' "$3" >"$TMP/$1.toml"
    "$CACHESIDE" --config "$TMP/$1.toml" --upstream "$UPSTREAM_SCHEME://127.0.0.1:$SEED" \
        --listen "127.0.0.1:$2" --admin-listen "" --log-level warn >"$TMP/$1.log" 2>&1 &
    PIDS+=($!)
    wait_ping "$1" "$2" "${PIDS[-1]}" "$TMP/$1.log"
}

CS_PORT=$(free_port)
start_cacheside cacheside "$CS_PORT" $'[upstream]\nmode = "cluster"\n'"$UPSTREAM_TLS"
CS_PID=${PIDS[-1]}

if [[ $TRANSACTIONS -eq 1 ]]; then
    cargo build --release --example txn_load >&2
    accepted() { # connections the nodes accepted so far
        local p total=0 n
        for p in "${NODE_PORTS[@]}"; do
            n=$(redis-cli "${NODE_CLI[@]}" -p "$p" info stats | tr -d '\r' |
                awk -F: '$1 == "total_connections_received" { print $2 }')
            total=$((total + ${n:-0}))
        done
        echo "$total"
    }
    echo
    echo "| connections | transactions/s | p50 ms | p99 ms | cacheside CPU µs/transaction | upstream connections opened |"
    echo "|---|---:|---:|---:|---:|---:|"
    for mode in kept reconnect; do
        flag=()
        [[ $mode == reconnect ]] && flag=(--reconnect)
        c0=$(accepted)
        cpu0=$(cpu_ticks "$CS_PID")
        out=$(target/release/examples/txn_load --addr "127.0.0.1:$CS_PORT" --clients 20 \
            --seconds 10 "${flag[@]}")
        cpu1=$(cpu_ticks "$CS_PID")
        # Each count above is read over a connection of redis-cli's own, one per node.
        opened=$(($(accepted) - c0 - ${#NODE_PORTS[@]}))
        read -r _ n _ secs _ errors <<<"$(head -n 1 <<<"$out")"
        read -r _ p50 _ p99 <<<"$(tail -n 1 <<<"$out")"
        [[ $errors -eq 0 ]] || echo "$BENCH_NAME: $errors transactions failed ($mode)" >&2
        awk -v m="$mode" -v n="$n" -v s="$secs" -v p50="$p50" -v p99="$p99" -v o="$opened" \
            -v t="$((cpu1 - cpu0))" -v tck="$CLK_TCK" 'BEGIN {
            printf "| %s | %.0f | %s | %s | %.1f | %d |\n", m, n / s, p50, p99, t * 1e6 / tck / n, o
        }'
    done
    exit 0
fi

echo "== writing $KEYSPACE keys of $DATA_SIZE bytes through cacheside" >&2
awk -v n="$KEYSPACE" -v size="$DATA_SIZE" 'BEGIN {
    v = ""; for (i = 0; i < size; i++) v = v "x"
    for (i = 0; i < n; i++) {
        k = sprintf("key:%012d", i)
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v
    }
}' | redis-cli -p "$CS_PORT" --pipe >"$TMP/populate.log" 2>&1 || {
    echo "$BENCH_NAME: populating the cluster failed:" >&2
    cat "$TMP/populate.log" >&2
    exit 1
}

RESULTS="$TMP/results.tsv" # test pipeline target rps p50 p99 requests cpu-ticks group
: >"$RESULTS"
# The group a run belongs to: ratios compare targets of one group (direct runs again beside
# cacheside-hot, so each group has its own direct figures).
GROUP=main

ticks_of() { # ticks_of TARGET: CPU ticks of the processes serving TARGET
    local total=0 pid
    case "$1" in
        direct) for pid in "${NODE_PIDS[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done ;;
        cacheside) total=$(cpu_ticks "$CS_PID") ;;
        cacheside-hot) total=$(cpu_ticks "$HOT_PID") ;;
        cacheside-replica) total=$(cpu_ticks "$REPLICA_PID") ;;
    esac
    echo "$total"
}

bench_one() { # bench_one TEST PIPELINE REQUESTS TARGET
    local test=$1 pipe=$2 n=$3 t=$4 args out line rps p50 p99 cpu0 cpu1
    case "$t" in
        direct) args=(-p "$SEED" --cluster "${NODE_CLI[@]}") ;;
        cacheside) args=(-p "$CS_PORT") ;;
        cacheside-hot) args=(-p "$HOT_PORT") ;;
        cacheside-replica) args=(-p "$REPLICA_PORT") ;;
    esac
    echo "== $test -P $pipe -n $n -> $t" >&2
    cpu0=$(ticks_of "$t")
    out=$(redis-benchmark -h 127.0.0.1 "${args[@]}" -c "$CLIENTS" -n "$n" -d "$DATA_SIZE" \
        -r "$KEYSPACE" -P "$pipe" -t "$test" --csv 2>>"$TMP/redis-benchmark.stderr") || {
        echo "$BENCH_NAME: redis-benchmark against $t failed:" >&2
        tail -n 20 "$TMP/redis-benchmark.stderr" >&2
        exit 1
    }
    cpu1=$(ticks_of "$t")
    line=$(printf '%s\n' "$out" | tr -d '"\r' | awk -F, -v T="${test^^}" '$1 == T')
    [[ -n "$line" ]] || {
        echo "$BENCH_NAME: no $test result against $t; output:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    }
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$test" "$pipe" "$t" "$rps" "$p50" "$p99" \
        "$n" "$((cpu1 - cpu0))" "$GROUP" >>"$RESULTS"
}

run() { # run TEST TARGET...: -P 1 and -P 16, the targets' order alternating
    local test=$1 pipe n
    shift
    local targets=("$@") order
    for pipe in 1 16; do
        if [[ $pipe -eq 1 ]]; then n=$REQ_P1; else n=$REQ_P16; fi
        order=("${targets[@]}")
        [[ $pipe -eq 16 ]] && order=($(printf '%s\n' "${targets[@]}" | tac))
        for t in "${order[@]}"; do bench_one "$test" "$pipe" "$n" "$t"; done
    done
}

# get_calls ROLE: GET calls served so far by the nodes whose ROLE is master or slave.
get_calls() {
    local p total=0 n
    for p in "${NODE_PORTS[@]}"; do
        [[ "$(redis-cli "${NODE_CLI[@]}" -p "$p" role | head -n 1)" == "$1" ]] || continue
        n=$(redis-cli "${NODE_CLI[@]}" -p "$p" info commandstats | tr -d '\r' |
            awk -F'[=,:]' '$1 == "cmdstat_get" { print $3 }')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

if [[ $REPLICAS -eq 1 ]]; then
    # Replicas serve reads once synced and listed online (having replicated something: the
    # keys written above).
    for i in $(seq 1 100); do
        synced=0
        for p in "${NODE_PORTS[@]}"; do
            redis-cli "${NODE_CLI[@]}" -p "$p" info replication | tr -d '\r' |
                grep -q '^master_link_status:up' && synced=$((synced + 1))
        done
        online=$(redis-cli "${NODE_CLI[@]}" -p "$SEED" cluster shards | grep -c '^online$' || true)
        [[ $synced -eq 3 && $online -eq 6 ]] && break
        sleep 0.2
    done
    REPLICA_PORT=$(free_port)
    start_cacheside cacheside-replica "$REPLICA_PORT" \
        $'[upstream]\nmode = "cluster"\nread_from = "replica"\n'"$UPSTREAM_TLS"
    REPLICA_PID=${PIDS[-1]}
    GETS_ON_REPLICAS_BEFORE=$(get_calls slave)
    run get direct cacheside cacheside-replica
    GETS_ON_REPLICAS=$(($(get_calls slave) - GETS_ON_REPLICAS_BEFORE))
else
    run get direct cacheside
fi
run set direct cacheside

# cacheside-hot starts after the SETs (it would be told of each of them) and is warmed with one
# GET of every key, pipelined through redis-benchmark's own key pattern.
HOT_PORT=$(free_port)
start_cacheside cacheside-hot "$HOT_PORT" $'[upstream]\nmode = "cluster"\n'"$UPSTREAM_TLS"$'\n[hot]\nmax_size = "256MiB"\ncoherence = "broadcast"\n[[cache]]\nkeys = "key:*"\nttl = "300s"'
HOT_PID=${PIDS[-1]}
for i in $(seq 1 100); do
    redis-cli -p "$HOT_PORT" info | tr -d '\r' | grep -q '^hot_state:active' && break
    sleep 0.1
done
echo "== warming cacheside-hot" >&2
seq 0 $((KEYSPACE - 1)) | awk '{ k = sprintf("key:%012d", $1); printf "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", length(k), k }' |
    redis-cli -p "$HOT_PORT" --pipe >"$TMP/warm.log" 2>&1
GROUP=hot
run get direct cacheside-hot

# --- report ------------------------------------------------------------------------------------

if [[ $REPLICAS -eq 1 ]]; then
    echo
    echo "GET calls served by the replicas during the main GET runs: $GETS_ON_REPLICAS" \
        "(cacheside-replica sent $((REQ_P1 + REQ_P16)) GETs; direct and cacheside read primaries)"
fi

echo
echo "| test | pipeline | target | rps | p50 ms | p99 ms | CPU µs/req |"
echo "|------|---------:|--------|----:|-------:|-------:|-----------:|"
awk -F'\t' -v tck="$CLK_TCK" '{
    label = toupper($1) ($9 == "hot" ? " (hot)" : "")
    printf "| %s | %s | %s | %.0f | %s | %s | %.2f |\n", label, $2, $3, $4, $5, $6, $8 * 1e6 / tck / $7
}' "$RESULTS"
echo
echo "| test | pipeline | target | target/direct rps | target/direct CPU/req |"
echo "|------|---------:|--------|------------------:|----------------------:|"
awk -F'\t' -v tck="$CLK_TCK" '
    { key = $1 FS $2 FS $9; cpu = $8 * 1e6 / tck / $7 }
    $3 == "direct" { drps[key] = $4; dcpu[key] = cpu; next }
    { rows[++n] = key FS $3 FS $4 FS cpu }
    END {
        for (i = 1; i <= n; i++) {
            split(rows[i], f, FS)
            k = f[1] FS f[2] FS f[3]
            if (!(k in drps)) continue
            label = toupper(f[1]) (f[3] == "hot" ? " (hot)" : "")
            printf "| %s | %s | %s | %.2f | %.2f |\n", label, f[2], f[4], f[5] / drps[k], f[6] / dcpu[k]
        }
    }' "$RESULTS"
