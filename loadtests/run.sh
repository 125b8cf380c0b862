#!/usr/bin/env bash
# `make load`: one bounded, headless Locust run against the gateway with the
# catalog's SLO gates; exits non-zero when a gate fails.
#   HOST=http://127.0.0.1:8000        gateway base URL (default: the lab's)
#   INVENTORY=inventory/lab           where the catalog (and replica URLs) come from
#   CITADEL_API_KEY=...               API key; in the lab defaults to .cache/lab-gateway-api-key
#   REPORT_DIR=...                    default reports/load/<UTC timestamp>/
# Extra arguments go to Locust, e.g. `loadtests/run.sh --run-time 30s -u 2 --slo-p95-ms smollm2-135m=800`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host=${HOST:-http://127.0.0.1:8000}
# zsh and some CI systems set HOST to the machine name: only a URL is a target.
if [[ $host != http://* && $host != https://* ]]; then
  echo "HOST must be the gateway's base URL (http://...), got '$host'" >&2
  exit 2
fi
inventory=${INVENTORY:-$repo/inventory/lab}

if [[ -z ${CITADEL_API_KEY:-} ]]; then
  key_file=${CITADEL_API_KEY_FILE:-${CITADEL_CACHE:-$repo/.cache}/lab-gateway-api-key}
  if [[ ! -r $key_file ]]; then
    echo "no API key: set CITADEL_API_KEY, or create $key_file (make lab does)" >&2
    exit 2
  fi
  CITADEL_API_KEY=$(<"$key_file")
fi
export CITADEL_API_KEY

locust=$(command -v locust || echo "$repo/.venv/bin/locust")
# ansible-inventory from the same venv when .venv/bin is not on PATH.
export PATH="$(dirname "$locust"):$PATH"

out=${REPORT_DIR:-$repo/reports/load/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
echo "load test: $host, catalog from $inventory, reports in $out"
cd "$repo"
set +e
"$locust" --config loadtests/locust.conf --host "$host" --inventory "$inventory" \
  --csv "$out/locust" --html "$out/report.html" "$@" 2>&1 | tee "$out/output.txt"
rc=${PIPESTATUS[0]}
echo "reports: $out (exit $rc)"
exit "$rc"
