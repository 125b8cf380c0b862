#!/usr/bin/env bash
# The lab gateway's API key: random, generated once, kept in the cache
# (never in the repository). The lab inventory reads it with a file lookup;
# tests and `make load` read it from the same file. Prints the path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
key="$(cd "$cache" && pwd)/lab-gateway-api-key"
if [ ! -s "$key" ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key")
fi
echo "$key"
