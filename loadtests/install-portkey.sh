#!/usr/bin/env bash
# Install Portkey's gateway (npm), pinned with all its dependencies by bench/portkey/package-lock.json,
# into its own node_modules, only as a comparison point for loadtests/bench_gateway.py.
# The version is bench/portkey/package.json's (1.15.2); why it overrides @hono/node-server is in
# loadtests/bench/README.md. Install scripts are not run (its only one, patch-package, has no
# patches to apply in the published package).
# Usage: loadtests/install-portkey.sh [DIR]   (default: .cache/portkey)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$here/bench/portkey"
dir=${1:-${CITADEL_CACHE:-$(cd "$here/.." && pwd)/.cache}/portkey}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-portkey.sh: node/npm missing, installing Debian's nodejs and npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' ||
  { echo "install-portkey.sh: Node >= 18 needed, found $(node --version)" >&2; exit 1; }

stamp="$dir/.stamp"
want="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)"
if [[ -f $stamp && $(cat "$stamp") == "$want" && -f $dir/node_modules/@portkey-ai/gateway/build/start-server.js ]]; then
  echo "portkey gateway already in $dir"
  exit 0
fi
mkdir -p "$dir"
cp "$src/package.json" "$src/package-lock.json" "$dir/"
(cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
echo "portkey gateway $(node -p "require('$dir/node_modules/@portkey-ai/gateway/package.json').version") installed in $dir"
