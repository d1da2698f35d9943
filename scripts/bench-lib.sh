# Shared by the benchmark scripts (sourced, not run): prerequisites, free ports, processes
# started in the background and killed on exit, and CPU time read from /proc.
#
# The sourcing script sets KEEP_LOGS (0 or 1) before calling bench_setup.

BENCH_NAME=$(basename "$0")

missing=0
need() { # need BINARY DEBIAN-PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$BENCH_NAME: '$1' not found; install the Debian package '$2' (apt-get install $2)" >&2
        missing=1
    fi
}

# bench_setup: a temporary directory ($TMP) and a PIDS array whose processes are killed on exit.
bench_setup() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/cacheside-bench.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_LOGS:-0} -eq 1 ]]; then
        echo "$BENCH_NAME: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}

# A port nothing listens on (checked by trying to connect), not handed out before in this run.
USED_PORTS=" "
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    echo "$BENCH_NAME: no free port found" >&2
    return 1
}

wait_ping() { # wait_ping NAME PORT PID LOG [REDIS-CLI-ARGS...] (e.g. --tls --cacert F)
    local i
    for i in $(seq 1 100); do
        if [[ "$(redis-cli -h 127.0.0.1 -p "$2" "${@:5}" ping 2>/dev/null)" == "PONG" ]]; then
            return 0
        fi
        if ! kill -0 "$3" 2>/dev/null; then
            echo "$BENCH_NAME: $1 exited during startup; its log ($4):" >&2
            tail -n 20 "$4" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "$BENCH_NAME: $1 did not answer PING on port $2 within 10s; its log ($4):" >&2
    tail -n 20 "$4" >&2 || true
    exit 1
}

# cpu_ticks PID: utime + stime of the process (all its threads), in clock ticks. Fields 14 and
# 15 of /proc/PID/stat; counted after the ")" that ends field 2, which may contain spaces.
# children_cpu_ms: sets CHILD_MS to the user + system CPU, in ms, of every child this shell has
# waited for (bash's `times`; a command substitution's children count once it ends). Call it
# directly, not in $(...): a subshell's `times` knows only its own children.
children_cpu_ms() {
    local line f="${TMPDIR:-/tmp}/bench-times.$$"
    times >"$f"
    line=$(sed -n 2p "$f")
    rm -f "$f"
    # "0m1.170s 0m0.440s": the children's user and system time
    CHILD_MS=$(awk -v t="$line" 'BEGIN {
        split(t, f, " "); ms = 0
        for (i = 1; i <= 2; i++) { split(f[i], m, "m"); sub("s", "", m[2]); ms += (m[1] * 60 + m[2]) * 1000 }
        printf "%d", ms
    }')
}

cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat") || {
        echo "$BENCH_NAME: cannot read /proc/$1/stat" >&2
        exit 1
    }
    read -r -a f <<<"${stat##*) }"
    echo $((f[11] + f[12]))
}
