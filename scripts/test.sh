#!/usr/bin/env bash
# The README's test command. On a fresh Debian machine it first installs what the tests need
# (real redis-server, PostgreSQL 15, openssl, promtool; with apt-get, as root or through sudo),
# then runs the format check, the lints, every test, the offline deploy checks and the example
# app's end-to-end check.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-lint  tests and deploy checks only
set -euo pipefail
cd "$(dirname "$0")/.."

lint=1
[[ "${1:-}" == "--no-lint" ]] && lint=0

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need redis-server redis-server
need redis-cli redis-tools
# The TLS tests make their certificates with the openssl command.
need openssl openssl
# The read-through tests run their own PostgreSQL 15 clusters with Debian's server binaries.
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
# Metrics exposition and alert rules are checked with promtool.
need promtool prometheus
need python3 python3
# The seeds' product service example (examples/products) runs on Node.js with npm.
need node nodejs
need npm npm
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# Debian's packages may start services on 6379, 5432 and 9090; the tests start their own servers
# on free loopback ports and never use them.
command -v cargo >/dev/null 2>&1 || {
  echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
}

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-off build gains nothing from incremental state, which would take ~3 GB of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
if ((lint)); then
  cargo fmt --all -- --check
  cargo clippy --all-targets -- -D warnings
fi
cargo test
scripts/deploy-check.sh
# The seeds' app on cacheside, end to end: redis-server, PostgreSQL, cacheside, the Node app.
cargo build --quiet
CACHESIDE_BIN=target/debug/cacheside examples/products/run.sh
