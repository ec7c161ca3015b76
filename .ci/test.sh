#!/usr/bin/env bash
# The README's test command: install, build with -Werror, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh
# deps.sh installs lavapipe and PoCL, so a missing vulkan/opencl device here is
# a failure, not a skip.
export KQSVD_CONFORMANCE_REQUIRE=${KQSVD_CONFORMANCE_REQUIRE-"vulkan opencl"}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKQ_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
