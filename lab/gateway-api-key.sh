#!/usr/bin/env bash
# The lab gateway's API keys: random, generated once, kept in the cache (never
# in the repository). The lab inventory reads them with a file lookup; tests
# and `make load` read them from the same files. Prints their paths.
#   lab-gateway-api-key    the client key (every model)
#   lab-gateway-admin-key  the operator key (admin API only: drains)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
for name in lab-gateway-api-key lab-gateway-admin-key; do
  key="$(cd "$cache" && pwd)/$name"
  if [ ! -s "$key" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key")
  fi
  echo "$key"
done
