#!/usr/bin/env bash
# Re-resolve requirements.lock (runtime) and requirements-test.lock from pyproject.toml with the
# dev venv's Python 3.11 (the lab hosts' Python). Review the diff before committing.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${GATEWAY_VENV:-$here/../../.cache/gateway-venv}/bin/python"
resolve() {  # $1 = requirement, $2 = output file, $3 = header
  "$py" -m pip install --dry-run --ignore-installed --quiet --report /tmp/citadel-gw-lock.json "$1" >/dev/null
  { echo "$3"
    "$py" - <<'PY'
import json
r = json.load(open("/tmp/citadel-gw-lock.json"))
for n, v in sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in r["install"]):
    if n != "citadel-gateway":
        print(f"{n}=={v}")
PY
  } > "$2"
}
resolve "$here" "$here/requirements.lock" "# Exact pins of every runtime dependency (transitive included) for the offline wheelhouse.
# Regenerate: files/gateway/scripts/lock.sh"
resolve "$here[test]" "$here/requirements-test.lock" "# Exact pins for the tests (runtime + test deps), Python 3.11/3.12.
# Regenerate: files/gateway/scripts/lock.sh"
# redis needs async-timeout below Python 3.11.3 (Debian 12 ships 3.11.2), which a
# resolve on 3.11.7 leaves out: pin it unconditionally so the offline wheelhouse
# (`pip download --python-version 3.11`) carries it too.
grep -q '^async-timeout==' "$here/requirements.lock" || echo "async-timeout==5.0.1" >> "$here/requirements.lock"
