#!/usr/bin/env bash
# Install the pinned Rust routers that loadtests/bench_gateway.py compares the gateway with
# (vllm-router, sglang-router: PyPI wheels with the Rust binary inside), each in its own venv,
# transitive versions pinned by bench/<name>.lock. Not dependencies of the gateway.
# Usage: loadtests/install-routers.sh [CACHE_DIR]   (default: .cache; venvs <name>-venv in it)
set -euo pipefail

VLLM_ROUTER_VERSION=0.1.17
SGLANG_ROUTER_VERSION=0.3.2
here="$(cd "$(dirname "$0")" && pwd)"
cache=${1:-${CITADEL_CACHE:-$(cd "$here/.." && pwd)/.cache}}
# A 3.12 interpreter (the locks were resolved on it): $PYTHON, python3.12, or pyenv's.
for candidate in "${PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.12*/bin/python3.12; do
  if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    py=$candidate
    break
  fi
done
[[ -n ${py:-} ]] || { echo "install-routers.sh: no Python 3.12 found (set PYTHON)" >&2; exit 1; }

install() {
  local name=$1 version=$2 venv="$cache/$1-venv"
  if [[ -x $venv/bin/python ]] &&
    [[ $("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null) == "$version" ]]; then
    echo "$name $version already in $venv"
    return
  fi
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -c "$here/bench/$name.lock" "$name==$version"
  "$venv/bin/$name" --help >/dev/null # the wheel's binary runs here
  echo "$name $version installed in $venv"
}
install vllm-router "$VLLM_ROUTER_VERSION"
install sglang-router "$SGLANG_ROUTER_VERSION"
