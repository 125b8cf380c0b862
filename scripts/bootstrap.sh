#!/usr/bin/env bash
# Install everything `make lab` and `make test` need on a bare machine of this
# kind (Debian 12, root): podman + runc + debootstrap for the lab hosts, a
# proxy for their apt, and the pinned controller tooling in .venv (Python 3.12).
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Also: redis-server (the gateway's shared rate limits are tested against a real
# Redis), postgresql (its usage records are tested against a real PostgreSQL: the tests
# run a throw-away cluster of their own), wrk (the gateway benchmark's load generator), prometheus (promtool
# checks and unit-tests the alert rules), openssh-client (Ansible reaches the lab
# hosts over SSH; lab/ssh-keys.sh needs ssh-keygen), openssl (lab/tls.sh: the lab CA
# and the HTTPS gateway's certificate), cmake, ninja-build and g++ (lab/build-llama-server.sh:
# llama.cpp's server, the lab's second server kind). Daemons are never started here.
apt_packages=(podman runc netavark aardvark-dns iptables debootstrap tinyproxy-bin
  redis-server postgresql wrk prometheus openssh-client openssl cmake ninja-build g++)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt: installing ${missing[*]}"
  apt-get update -qq
  # policy-rc.d 101: packages install but their services do not start on the
  # controller (a Prometheus on :9090 would take the lab's published port).
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$had_policy" = 1 ] || rm -f "$policy"
fi

# ansible-core 2.21 needs a Python 3.12 controller. pyenv's shims would pick
# the global 3.11, so ask pyenv for the 3.12 install path directly.
python312=""
if command -v pyenv >/dev/null; then
  v=$(pyenv versions --bare | grep -E '^3\.12(\.|$)' | tail -1 || true)
  [ -n "$v" ] && python312="$(pyenv root)/versions/$v/bin/python3.12"
fi
[ -n "$python312" ] || python312=$(command -v python3.12 || true)
[ -n "$python312" ] && "$python312" --version >/dev/null 2>&1 \
  || { echo "bootstrap: no Python 3.12 found (pyenv or python3.12 on PATH)" >&2; exit 1; }

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "venv: installing requirements.txt with $("$python312" --version)"
  [ -x .venv/bin/python ] || "$python312" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
