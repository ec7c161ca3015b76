#!/usr/bin/env bash
# CI job: fuzzing (issue 8). Builds the libFuzzer harnesses of tests/fuzz with
# Debian clang, ASan and UBSan (-fno-sanitize-recover: any UB aborts), and
# runs each for KQ_FUZZ_SECONDS (default 60) starting from its seed corpus in
# tests/fuzz/seeds_NAME:
#   fuzz_safetensors  the safetensors reader + projection-file loader
#   fuzz_gguf         the GGUF reader and dequantisers
#   fuzz_cli          the argument parsers of kqsvd fit/eval/synth/info
#   fuzz_model        a whole llama GGUF through kq_llama_load (hyper-parameters,
#                     tokenizer, weights), then a short forward pass
#   fuzz_tokenizer    BPE encode -> token bytes round trip and the token limit,
#                     on the tokenizer of tests/fuzz/seeds_model/tiny_llama.gguf
# With 5 targets at 60 s the job takes about 6 minutes on 2 cores.
# Any crash, sanitizer report, leak, timeout (> 10 s an input) or out-of-memory
# (> 2 GiB) fails the job; the reproducer is left in build-fuzz/artifacts/NAME/.
# To turn one into a regression test: minimise it
#   build-fuzz/bin/fuzz_NAME -minimize_crash=1 -runs=10000 CRASH_FILE
# copy the result into tests/fuzz/seeds_NAME/ (ctest fuzz_replay_NAME replays
# every seed in the normal build) and fix the bug.
# Only the fuzz_* targets are built: they compile just the sources they need.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${KQ_FUZZ_BUILD:-$root/build-fuzz}
seconds=${KQ_FUZZ_SECONDS:-60}
start=$(date +%s)
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKQ_WERROR=ON -DKQ_FUZZ=ON \
  -DKQ_SANITIZE=address,undefined -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link \
  -DKQ_VULKAN=OFF -DKQ_OPENCL=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_safetensors fuzz_gguf fuzz_cli fuzz_model \
  fuzz_tokenizer >/dev/null
echo "fuzz: build done in $(($(date +%s) - start)) s"
status=0
for name in safetensors gguf cli model tokenizer; do
  corpus=$build/corpus/$name
  artifacts=$build/artifacts/$name
  log=$build/fuzz_$name.log
  mkdir -p "$corpus" "$artifacts"
  t=$(date +%s)
  # Absolute paths: fuzz_cli works inside its own temporary folder.
  if "$build/bin/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$corpus" "$root/tests/fuzz/seeds_$name" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  echo "fuzz: $name: $result, ${execs:-?} executions in $(($(date +%s) - t)) s, ${cov:-cov: ?}," \
    "corpus $(find "$corpus" -type f | wc -l) files"
  if [ "$result" = FAILED ]; then
    grep -E 'ERROR|SUMMARY|Test unit written|runtime error|check failed|broke its contract' "$log" |
      head -n 20 || true
    tail -n 40 "$log"
    echo "fuzz: $name: reproducers in $artifacts:"
    ls -l "$artifacts"
  fi
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit $status
