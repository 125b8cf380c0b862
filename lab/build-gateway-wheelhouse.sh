#!/usr/bin/env bash
# Build the offline wheelhouse for the lab gateway host (Debian 12: Python
# 3.11, x86_64): every pinned runtime dependency of files/gateway
# (requirements.lock) plus its build backend, so the llm_gateway role can
# `pip install --no-index` the package from source on a host without internet.
# Rebuilt only when the lock file or the build requirements change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gateway=$here/../files/gateway
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
out="$cache/wheelhouse-gateway"
stamp="$out/.complete"
# shellcheck source=lab/wheelhouse-target.sh
source "$here/wheelhouse-target.sh"

# The build backend named by pyproject.toml ([build-system] requires).
mapfile -t build_requires < <("$python" -c '
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$gateway/pyproject.toml")

recipe="$(sha256sum "$gateway/requirements.lock" | cut -c1-16) ${build_requires[*]} ${args[*]}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
  echo "$out"
  exit 0
fi
work="$out.partial"
rm -rf "$work"
mkdir -p "$work" "$out"
start=$SECONDS
"$python" -m pip download --disable-pip-version-check --progress-bar off "${args[@]}" -d "$work" \
  -r "$gateway/requirements.lock" "${build_requires[@]}" >&2
# Refill the directory rather than replace it: the lab gateway host has it
# bind-mounted, and a mount keeps pointing at a removed directory.
find "$out" -mindepth 1 -delete
mv "$work"/* "$out"/
rmdir "$work"
echo "$recipe" > "$stamp"
echo "gateway wheelhouse complete: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1), $((SECONDS - start)) s" >&2
echo "$out"
