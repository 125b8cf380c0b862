#!/usr/bin/env bash
# Dev venv for the gateway: Python 3.11 (the Debian 12 lab hosts' Python), exact pins.
# Usage: files/gateway/scripts/venv.sh   then   .cache/gateway-venv/bin/pytest files/gateway/tests
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${GATEWAY_VENV:-$repo/.cache/gateway-venv}"
py="${PYTHON311:-$(command -v python3.11 || pyenv which python3.11 2>/dev/null || echo /root/.pyenv/versions/3.11.7/bin/python3.11)}"
stamp="$venv/.stamp"
want="$(cat "$here/requirements-test.lock" "$here/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then exit 0; fi
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements-test.lock" -e "$here"
echo "$want" > "$stamp"
