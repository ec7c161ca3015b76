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
