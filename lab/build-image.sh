#!/usr/bin/env bash
# Build the Debian 12 systemd base image for lab hosts and Molecule, once.
# The tag is a hash of this recipe, so editing the recipe rebuilds and an
# unchanged recipe reuses the cached image (podman image exists → exit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

suite=bookworm
# python3-apt: Ubuntu server ships it, and the apt module needs it under --check.
# openssh-server: Ansible reaches lab hosts over SSH, as it reaches real ones.
packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,ca-certificates,openssh-server
tag=$(cat "$0" | sha256sum | cut -c1-12)
image="localhost/citadel-lab-debian12:$tag"

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi

work=$(mktemp -d /var/tmp/citadel-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "building $image (debootstrap $suite, about a minute)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" >&2
# Package lists stay in the image, as on any installed host: `--check` runs
# of the apt module need them (check mode cannot refresh the cache).
chroot "$work/rootfs" apt-get clean
# No host keys in the image: each container mounts the lab's own (lab/ssh-keys.sh), the
# one key the controller's known_hosts trusts.
rm -f "$work/rootfs"/etc/ssh/ssh_host_*
# An empty machine-id makes systemd generate one per container at boot.
: > "$work/rootfs/etc/machine-id"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
  "$work/rootfs.tar" "$image" >&2
# Drop images of older recipes (kept if a container still uses one).
podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/citadel-lab-debian12:' \
  | grep -v ":$tag\$" | xargs -r podman rmi >/dev/null 2>&1 || true
echo "$image"
