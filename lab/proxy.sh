#!/usr/bin/env bash
# Run a small HTTP proxy on this machine so apt/pip inside the lab containers
# (which have no internet of their own) reach the package registries.
# Idempotent: does nothing when our proxy already answers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CITADEL_CACHE:-$here/../.cache}/proxy
port=${LAB_PROXY_PORT:-3142}
mkdir -p "$state"

if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  exit 0
fi
# Another checkout's lab proxy may already serve the port: share it.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "lab proxy: port $port already served (another checkout's proxy?), using it"
  exit 0
fi

cat > "$state/tinyproxy.conf" <<CONF
Port $port
Timeout 600
MaxClients 64
LogLevel Warning
# Loopback and podman's container subnets only.
Allow 127.0.0.1
Allow 10.88.0.0/15
ConnectPort 443
ConnectPort 80
CONF

setsid tinyproxy -d -c "$state/tinyproxy.conf" >"$state/tinyproxy.log" 2>&1 < /dev/null &
echo $! > "$state/pid"
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "lab proxy listening on :$port (pid $(cat "$state/pid"))"
    exit 0
  fi
  sleep 0.1
done
echo "lab proxy did not start; see $state/tinyproxy.log" >&2
exit 1
