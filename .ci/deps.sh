#!/usr/bin/env bash
# Installs everything kqsvd builds, tests and benchmarks with, on Debian
# bookworm as root. Safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  build-essential cmake pkg-config git ca-certificates
  libcjson-dev libcmocka-dev
  liblapacke-dev libopenblas-dev                       # test oracle + benchmarks only
  libvulkan-dev libvulkan-volk-dev glslang-tools vulkan-tools
  vulkan-validationlayers mesa-vulkan-drivers          # lavapipe
  ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo libclblast-dev
  clang libclang-rt-14-dev valgrind                    # fuzzing, sanitizers, leak checks
  python3 python3-pip python3-venv unzip               # model fetch + numpy reference
  fortunes fortunes-min                                # evaluation/calibration text
)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Test-only Python packages for the model reference tests (tests/model: numpy
# forward pass, gguf's own dequantisers, HF tokenizers as the BPE reference).
if ! python3 -c "import gguf, numpy, tokenizers" >/dev/null 2>&1; then
  python3 -m pip install -q --break-system-packages gguf==0.19.0 numpy==2.4.6 tokenizers==0.23.3 \
    || python3 -m pip install -q gguf==0.19.0 numpy==2.4.6 tokenizers==0.23.3 \
    || echo "deps.sh: pip install failed: the model reference tests will be skipped" >&2
fi
