#!/usr/bin/env bash
# Install a pinned LiteLLM proxy into its own venv, only as a comparison point for
# loadtests/bench_gateway.py (1.106.2, the version first measured here). Not a dependency of the gateway.
# Usage: loadtests/install-litellm.sh [VENV_DIR]
set -euo pipefail

LITELLM_VERSION=1.106.2
VENV=${1:-${CITADEL_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}/litellm-venv}
# A 3.12 interpreter: $PYTHON, python3.12, or pyenv's (whose shim fails when 3.12 is not active).
for candidate in "${PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.12*/bin/python3.12; do
  if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    py=$candidate
    break
  fi
done
[[ -n ${py:-} ]] || { echo "install-litellm.sh: no Python 3.12 found (set PYTHON)" >&2; exit 1; }

if [[ -x $VENV/bin/python ]] &&
  [[ $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null) == "$LITELLM_VERSION" ]]; then
  echo "litellm $LITELLM_VERSION already in $VENV"
  exit 0
fi

"$py" -m venv "$VENV"
# Transitive versions pinned too (bench/litellm.lock), so reruns measure the same code.
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$(dirname "$0")/bench/litellm.lock" \
  "litellm[proxy]==$LITELLM_VERSION"
echo "litellm $LITELLM_VERSION installed in $VENV"
