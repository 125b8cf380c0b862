#!/usr/bin/env bash
# The bench harness venv: Python 3.12 with loadtests/bench/requirements.lock.
# Usage: loadtests/bench/venv.sh [VENV_DIR]   (default: .cache/bench-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-${CITADEL_CACHE:-$repo/.cache}/bench-venv}"
for candidate in "${PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.12*/bin/python3.12; do
  if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    py=$candidate
    break
  fi
done
[[ -n ${py:-} ]] || { echo "bench venv: no Python 3.12 found (set PYTHON)" >&2; exit 1; }
stamp="$venv/.stamp"
want="$(sha256sum "$here/requirements.lock" | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then exit 0; fi
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.lock"
echo "$want" > "$stamp"
