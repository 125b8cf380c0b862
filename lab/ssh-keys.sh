#!/usr/bin/env bash
# The lab's SSH keys, generated once under the cache (never in the repository):
# the controller's client key (its public half is every lab host's
# authorized_keys) and one host key shared by the lab hosts. The known_hosts
# file here is used for lab connections only (inventory/lab connection.yml), so
# it trusts that key for any address. molecule/shared/create.yml mounts both.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
dir="$(cd "$cache" && pwd)/lab-ssh"
mkdir -p "$dir"
chmod 700 "$dir"
[ -s "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C citadel-lab-controller -f "$dir/id_ed25519"
[ -s "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C citadel-lab-host -f "$dir/ssh_host_ed25519_key"
echo "* $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" > "$dir/known_hosts"
echo "$dir"
