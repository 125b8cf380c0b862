#!/usr/bin/env bash
# Build the Debian 12 systemd base image for lab hosts and Molecule, once.
# The tag is a hash of this recipe, so editing the recipe rebuilds and an
# unchanged recipe reuses the cached image (podman image exists → exit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,sudo,iproute2,ca-certificates
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
chroot "$work/rootfs" apt-get clean
rm -rf "$work/rootfs"/var/lib/apt/lists/*
# An empty machine-id makes systemd generate one per container at boot.
: > "$work/rootfs/etc/machine-id"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
  "$work/rootfs.tar" "$image" >&2
echo "$image"
