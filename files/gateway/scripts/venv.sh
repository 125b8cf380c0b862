#!/usr/bin/env bash
# Dev venv for the gateway, exact pins, the package installed editable.
# Usage: files/gateway/scripts/venv.sh [3.11|3.12]   then   .cache/gateway-venv/bin/pytest files/gateway/tests
#   3.11 (default): .cache/gateway-venv, the Debian 12 lab hosts' Python.
#   3.12: .cache/gateway-venv-3.12, Ubuntu 24.04's (production) Python; the only one of the two
#         with eager tasks, which the hot path uses when it can (server/protocol.py).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="${1:-3.11}"
case "$version" in
  3.11) default_venv="$repo/.cache/gateway-venv" ;;
  3.12) default_venv="$repo/.cache/gateway-venv-3.12" ;;
  *) echo "gateway venv: Python 3.11 or 3.12, not '$version'" >&2; exit 2 ;;
esac
venv="${GATEWAY_VENV:-$default_venv}"
for candidate in "${GATEWAY_PYTHON:-}" "python$version" "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/"$version".*/bin/python"$version"; do
  if [[ -n $candidate ]] && "$candidate" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$version'" 2>/dev/null; then
    py=$candidate
    break
  fi
done
[[ -n ${py:-} ]] || { echo "gateway venv: no Python $version found (set GATEWAY_PYTHON)" >&2; exit 1; }
stamp="$venv/.stamp"
want="$(cat "$here/requirements-test.lock" "$here/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then exit 0; fi
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements-test.lock" -e "$here"
echo "$want" > "$stamp"
