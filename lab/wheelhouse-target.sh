# Sourced by the lab's wheelhouse builders: the lab hosts' interpreter and the
# `pip download` arguments that select wheels for them (Debian 12: Python
# 3.11, x86_64, glibc 2.36). pip resolves markers for the running interpreter,
# so it must be a 3.11, not this machine's default or the repo's .venv (3.12).
python=${CITADEL_PYTHON311:-$(pyenv root)/versions/3.11.7/bin/python3.11}
# Every manylinux tag glibc 2.36 accepts that some dependency is published
# with (llguidance is tagged only manylinux_2_31: without it resolving fails).
platforms=()
for v in 17 24 26 27 28 31 34 35 36; do
  platforms+=(--platform "manylinux_2_${v}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform any)
args=(--only-binary=:all: --python-version 3.11 "${platforms[@]}")
