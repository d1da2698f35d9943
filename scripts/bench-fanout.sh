#!/usr/bin/env bash
# What broadcast coherence costs Redis at fleet scale: one cacheside in broadcast mode takes a
# sustained write load (redis-benchmark SET of cached keys, 50 clients) while N other
# subscribers (examples/fanout_subscribers.rs, standing in for the rest of the fleet) listen on
# the invalidation channel. Reports Redis's CPU per written key (utime+stime of redis-server over
# the run, divided by the writes), with hot.broadcast_batching on and off, for each N.
#
# Usage (from the repo root): scripts/bench-fanout.sh [--subscribers "10 100 1000"] [--requests N]
#                             [--per-prefix] [--clients C] [--pipeline P] [--batching "true false"]
#                             [--encoding "keys packed"] [--sidecars M] [--relay]
#
# --clients / --pipeline: redis-benchmark's -c and -P (default 50 and 1): how many writes are
# outstanding at once, so how many a batched PUBLISH can carry.
# --encoding: the values of hot.broadcast_encoding to run (default "keys").
# --sidecars: writing sidecars (default 1), each taking an equal share of the clients and writes
# (M redis-benchmark runs at once; writes/s is their sum). They subscribe too: N + M listen.
# --relay: hot.broadcast_relay = true on every sidecar (one of them relays for all).
#
# --per-prefix: cacheside runs with hot.channel_per_prefix = true (it announces the written
# key:* keys on "{cacheside:invalidate}:key"), and the N stand-ins are sidecars that cache
# another namespace: each subscribes to the base channel and to "{cacheside:invalidate}:other".
#
# Needs: cargo, redis-server, redis-cli and redis-benchmark (Debian redis-server, redis-tools),
# curl. Nothing is installed by this script. Run it on a quiet machine: every process shares it.
#
# The subscribers' output buffers are unlimited for the run (CONFIG SET client-output-buffer-limit
# "pubsub 0 0 0"): a stand-in that reads slower than Redis writes must not be disconnected, which
# would make Redis's work per write smaller than a real fleet's.

set -euo pipefail

SUBSCRIBERS="10 100 1000"
REQUESTS=100000
PER_PREFIX=false
CLIENTS=50
PIPELINE=1
BATCHING="true false"
ENCODING="keys"
SIDECARS=1
RELAY=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --subscribers) SUBSCRIBERS=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --per-prefix) PER_PREFIX=true; shift ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --pipeline) PIPELINE=$2; shift 2 ;;
        --batching) BATCHING=$2; shift 2 ;;
        --encoding) ENCODING=$2; shift 2 ;;
        --sidecars) SIDECARS=$2; shift 2 ;;
        --relay) RELAY=true; shift ;;
        -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-fanout.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
for bin in redis-server redis-cli redis-benchmark curl cargo; do
    command -v "$bin" >/dev/null || { echo "bench-fanout.sh: $bin not found" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cacheside-fanout.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
ticks() { # utime+stime of PID, in clock ticks
    local s f
    s=$(<"/proc/$1/stat")
    read -r -a f <<<"${s##*) }"
    echo $((f[11] + f[12]))
}
metric() { # metric ADMIN_PORT NAME
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

echo "== building (cargo build --release --bin cacheside --example fanout_subscribers)" >&2
cargo build --release --bin cacheside --example fanout_subscribers >&2
CACHESIDE=target/release/cacheside
SUBS=target/release/examples/fanout_subscribers
HZ=$(getconf CLK_TCK)
CHANNELS=(--channel cacheside:invalidate)
if $PER_PREFIX; then CHANNELS+=(--channel "{cacheside:invalidate}:other"); fi

rows=()
for n in $SUBSCRIBERS; do
    for encoding in $ENCODING; do
    for batching in $BATCHING; do
        rp=$(free_port)
        redis-server --bind 127.0.0.1 --port "$rp" --save "" --appendonly no \
            --logfile "$TMP/redis.log" --dir "$TMP" &
        rpid=$!; PIDS+=("$rpid")
        for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
        redis-cli -p "$rp" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
        "$SUBS" --redis "127.0.0.1:$rp" --count "$n" "${CHANNELS[@]}" >"$TMP/subs.log" 2>&1 &
        spid=$!; PIDS+=("$spid")
        for _ in $(seq 300); do grep -q subscribed "$TMP/subs.log" && break; sleep 0.1; done
        cat >"$TMP/cs.toml" <<EOF
[hot]
coherence = "broadcast"
broadcast_batching = $batching
broadcast_encoding = "$encoding"
broadcast_relay = $RELAY
channel_per_prefix = $PER_PREFIX
[[cache]]
keys = "key:*"
ttl = "60s"
EOF
        cps=(); aps=()
        for i in $(seq "$SIDECARS"); do
            cp=$(free_port); ap=$(free_port); cps+=("$cp"); aps+=("$ap")
            "$CACHESIDE" --config "$TMP/cs.toml" --upstream "redis://127.0.0.1:$rp" \
                --listen "127.0.0.1:$cp" --admin-listen "127.0.0.1:$ap" --log-level warn \
                >"$TMP/cs$i.log" 2>&1 &
            PIDS+=("$!")
            for _ in $(seq 100); do
                redis-cli -p "$cp" info 2>/dev/null | grep -q "hot_state:broadcast" && break
                sleep 0.1
            done
        done
        if $RELAY; then
            # Every request must find the relay elected (it takes its lease within a second).
            for _ in $(seq 50); do
                [[ $(redis-cli -p "$rp" pubsub numsub "{cacheside:invalidate}.relay" | tail -1) == 1 ]] && break
                sleep 0.1
            done
        fi
        c0=$(ticks "$rpid")
        rbs=()
        for i in "${!cps[@]}"; do
            redis-benchmark -p "${cps[$i]}" -c $((CLIENTS / SIDECARS)) -P "$PIPELINE" \
                -n $((REQUESTS / SIDECARS)) -d 100 -r 100000 -t set --csv >"$TMP/rb$i.csv" &
            rbs+=("$!")
        done
        wait_rb=0
        for pid in "${rbs[@]}"; do wait "$pid" || wait_rb=1; done
        c1=$(ticks "$rpid")
        [[ $wait_rb == 0 ]] || { echo "bench-fanout.sh: redis-benchmark failed" >&2; exit 1; }
        rps=$(cat "$TMP"/rb*.csv | tr -d '"' | awk -F, '$1 == "SET" { s += $2 } END { printf "%.0f", s }')
        rm -f "$TMP"/rb*.csv
        sent=0; keys=0
        for ap in "${aps[@]}"; do
            sent=$(python3 -c "print(int(float('${sent}') + float('$(metric "$ap" cacheside_broadcast_announcements_total)' or 0)))")
            keys=$(python3 -c "print(int(float('${keys}') + float('$(metric "$ap" cacheside_broadcast_announced_keys_total)' or 0)))")
        done
        cpu=$(python3 -c "print(f'{($c1-$c0)*1e6/$HZ/$REQUESTS:.1f}')")
        per=$(python3 -c "s=float('${sent:-0}'); print(f'{float(\"${keys:-0}\")/s:.1f}' if s else '-')")
        rows+=("| $n | $PER_PREFIX | $SIDECARS | $RELAY | $batching | $encoding | $rps | $cpu | ${sent:-0} | $per |")
        echo "== $n subscribers, channel per prefix $PER_PREFIX, batching $batching, encoding $encoding: $rps writes/s, Redis $cpu µs CPU per written key" >&2
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
        PIDS=()
    done
    done
done

echo
echo "redis-benchmark SET through $SIDECARS cacheside (broadcast mode, $CLIENTS clients, -P $PIPELINE, $REQUESTS writes, 100-byte values)"
echo
echo "| subscribers | channel per prefix | writing sidecars | relay | batching | encoding | writes/s | Redis CPU µs per written key | batched PUBLISHes | keys per batched PUBLISH |"
echo "|---:|---|---:|---|---|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
