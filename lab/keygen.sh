#!/usr/bin/env bash
# The lab's keys and passwords: random, generated once, kept in the cache (never in the
# repository). The lab inventory reads them with file lookups; tests and
# `make load` read them from the same files. Prints their paths.
#   lab-gateway-api-key      the client key (every model)
#   lab-gateway-admin-key    the operator key (admin API only: drains)
#   lab-gateway-limited-key  a key with a small rate limit (the two-gateway limit test)
#   lab-gateway-budget-key   a key with a small daily token budget (the two-gateway budget test)
#   lab-gateway-cached-key   a key whose greedy requests the response cache answers (in Redis)
#   lab-redis-password       Redis's requirepass (the gateways' shared rate limits)
#   lab-model-key-seed       the seed each model's API key is derived from (group_vars/lab/model_keys.yml)
#   lab-postgresql-gateway-password, lab-postgresql-report-password
#                            the usage database's writer (the gateways) and reader (the report)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
for name in lab-gateway-api-key lab-gateway-admin-key lab-gateway-limited-key lab-gateway-budget-key \
  lab-gateway-cached-key lab-redis-password \
  lab-model-key-seed lab-postgresql-gateway-password lab-postgresql-report-password; do
  key="$(cd "$cache" && pwd)/$name"
  if [ ! -s "$key" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key")
  fi
  echo "$key"
done
