#!/usr/bin/env bash
# Reference points for docs/quality.md: KL divergence and top-1 agreement of llama.cpp's own
# quantized KV caches (q8_0, q5_1, q4_0) against its F16 cache, on the same model and text
# as `kqsvd ppl` (SmolLM2-135M, the first 4 windows of 256 tokens of GPL-3).
#   bash .ci/llama-cpp-kl.sh [WORK_DIR]        (default build/llama-cpp; env TYPES, THREADS)
# llama.cpp comes from the PyPI sdist of llama-cpp-python (its vendored copy), built once
# with cmake (llama-perplexity only, CPU; ~20 minutes on 2 busy cores). llama-perplexity
# scores only the second half of each window (tokens ctx/2+2..ctx, 1-based): compare with
# `kqsvd ppl ... --ctx 256 --max-tokens 1024 --score-from 129 --storage f16`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/llama-cpp}
types=${TYPES:-"q8_0 q5_1 q4_0"}
threads=${THREADS:-2}
mkdir -p "$work"
model=$(bash .ci/fetch-model.sh)
text=/usr/share/common-licenses/GPL-3
src=$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -n 1 || true)
if [ -z "$src" ]; then
  pip download --no-binary :all: --no-deps llama-cpp-python -d "$work"
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp | head -n 1)
fi
lp="$src/build/bin/llama-perplexity"
if [ ! -x "$lp" ]; then
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF >"$work/cmake.log"
  cmake --build "$src/build" -j2 --target llama-perplexity >"$work/build.log"
fi
run=("$lp" -m "$model" -f "$text" -c 256 --chunks 4 -t "$threads" -fa on)
"${run[@]}" --kl-divergence-base "$work/base.kld" >"$work/base.log" 2>&1
echo "| llama.cpp KV cache | of F16 | ppl (base) | KL | top-1 |"
echo "|---|---:|---:|---:|---:|"
for t in $types; do
  "${run[@]}" -ctk "$t" -ctv "$t" --kl-divergence-base "$work/base.kld" --kl-divergence \
    >"$work/kl-$t.log" 2>&1
  python3 - "$work/kl-$t.log" "$t" <<'PY'
import re, sys
log, t = open(sys.argv[1]).read(), sys.argv[2]
# Bytes per 32 values of ggml's KV block types, over F16's 64.
block = {"q8_0": 34, "q5_1": 24, "q5_0": 22, "q4_1": 20, "q4_0": 18, "f16": 64}
ppl = re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log).group(1)
base = re.search(r"Mean PPL\(base\)\s*:\s*([\d.]+)", log).group(1)
kld = re.search(r"Mean\s+KLD:\s*(-?[\d.]+)", log).group(1)
top = re.search(r"Same top p:\s*([\d.]+)", log).group(1)
print("| %s | %.3f | %s (%s) | %s | %.3f |" % (t, block[t] / 64, ppl, base, kld, float(top) / 100))
PY
done
