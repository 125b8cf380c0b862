#!/usr/bin/env bash
# The GPU path end to end, on a real GPU host: what no CI of this repository can run (no GPU is
# lent to it). An operator, or a CI runner with a GPU, runs it from the controller:
#   scripts/gpu-check.sh -i inventory/production -l hx-llm-server-02
# 1. preflight; 2. the GPU driver role in --check (it predicts, changes nothing); 3. the LLM host
# plays (driver, reboots if allowed, vLLM on CUDA) and the DCGM exporter, applied; 4. the same
# again, which must change nothing; 5. playbooks/gpu_check.yml: nvidia-smi, a chat from every
# model of the host, each model on exactly its GPUs, the exporter's metrics.
# Exits non-zero at the first step that fails; every step prints what ansible-playbook printed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
usage() { echo "usage: $0 -i INVENTORY -l HOST [-e EXTRA_VARS]..." >&2; exit 2; }
inventory="" host="" extra=()
while getopts "i:l:e:h" opt; do
  case "$opt" in
    i) inventory=$OPTARG ;;
    l) host=$OPTARG ;;
    e) extra+=(-e "$OPTARG") ;;
    *) usage ;;
  esac
done
[[ -n $inventory && -n $host ]] || usage
[[ $host != *[,:\&!*]* ]] || { echo "gpu-check: -l takes one host name, not a pattern ($host)" >&2; exit 2; }
cd "$here"
[[ -x .venv/bin/ansible-playbook ]] && PATH="$here/.venv/bin:$PATH"
play() { ansible-playbook -i "$inventory" --limit "$host" "${extra[@]}" "$@"; }
step() { printf '\n== gpu-check %s: %s\n' "$host" "$*"; }

step "1/5 preflight"
play playbooks/preflight.yml
step "2/5 the GPU driver role in --check"
play playbooks/llm_hosts.yml --tags nvidia_gpu --check --diff
step "3/5 apply: driver, vLLM on CUDA, DCGM exporter"
play playbooks/llm_hosts.yml
play playbooks/monitoring.yml --tags dcgm_exporter
step "4/5 again: nothing may change"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
play playbooks/llm_hosts.yml | tee "$log"
play playbooks/monitoring.yml --tags dcgm_exporter | tee -a "$log"
if grep -E "^${host//./\\.} +:" "$log" | grep -qv "changed=0 "; then
  echo "gpu-check: the second run changed $host (see above): not idempotent" >&2
  exit 1
fi
step "5/5 verify"
play playbooks/gpu_check.yml
printf '\ngpu-check: %s passed\n' "$host"
