#!/usr/bin/env bash
# README command 1's job, on the default device (KQSVD_DEVICE, else cpu):
#   1. synthetic check: KQ-SVD vs K-SVD vs Eigen at equal ranks (logits error
#      at the Eckart–Young optimum, below both baselines);
#   2. the real model: fetch SmolLM2-135M, capture calibration activations from
#      Debian's fortune file, fit each method at one byte budget (--bytes 0.28 of a
#      full F16 cache: KQ-SVD per-head and joint, the quantization-only baseline,
#      K-SVD and Eigen; the first three weighted by the model's measured per-layer
#      sensitivity, fit --sensitivity) and print perplexity, KL divergence and top-1
#      agreement against the full cache on a different text, windows of 256, in one
#      table. The full model runs once, in lockstep with every compressed cache (one
#      `kqsvd ppl` with several --proj), so all are scored on the same tokens;
#   3. long context: position-robust fits (fit --positions, from a rope pre capture)
#      per-head and joint, and one lockstep ppl at windows of 2048 of the full cache,
#      those two, the windows-of-256 fits and the baseline; a table of ppl ratio to the
#      full cache and KL at ctx 256 and 2048.
# Env: KQ (the CLI), KQ_OUT (output folder), KQSVD_DEVICE, BUDGET (default 0.28),
#      METHODS (default "kq-svd kq-svd-joint quant k-svd eigen"), BUDGET_FLAG (default
#      --bytes; --ratio fits float-only low rank, for fit builds without --bytes),
#      SENSITIVE (methods fitted with --sensitivity, default "kq-svd kq-svd-joint quant";
#      "" for none), POSITIONS (default 2048; 0 skips part 3), THREADS.
# Sensitivity files are found by the sha256 of the base fit's tensor data in .ci/sensitivity/ or
# ~/.cache/kqsvd/sensitivity, else measured (.ci/sensitivity.sh, minutes per method).
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
OUT=${KQ_OUT:-build/main-job}
mkdir -p "$OUT"
dev=${KQSVD_DEVICE:-cpu}
echo "== kqsvd main job on device $dev =="

echo "== 1. synthetic calibration: equal ranks, three methods =="
"$KQ" synth "$OUT/synth.safetensors" --layers 4 --heads 8 --kv-heads 2 --head-dim 64 \
  --hidden 512 --seq-len 256 --n-seqs 8 --seed 1
for m in kq-svd k-svd eigen; do
  "$KQ" fit "$OUT/synth.safetensors" -o "$OUT/synth-$m.safetensors" --method "$m" \
    --rank-k 16 --rank-v 16 2>/dev/null
  "$KQ" eval "$OUT/synth.safetensors" "$OUT/synth-$m.safetensors" --json >"$OUT/synth-$m.json"
done
python3 .ci/compare_methods.py "$OUT/synth-kq-svd.json:$OUT/synth-kq-svd.safetensors" \
  "$OUT"/synth-{k-svd,eigen}.json

budget=${BUDGET:-0.28}
budget_flag=${BUDGET_FLAG:---bytes}
methods=${METHODS:-"kq-svd kq-svd-joint quant k-svd eigen"}
sensitive=${SENSITIVE-"kq-svd kq-svd-joint quant"}
[ "$budget_flag" = --bytes ] || sensitive=""
positions=${POSITIONS:-2048}
threads=(${THREADS:+--threads "$THREADS"})
echo "== 2. SmolLM2-135M: capture, fit at $budget_flag $budget, perplexity / KL / top-1 =="
model=$(bash .ci/fetch-model.sh)
calib_text=(/usr/share/games/fortunes/fortunes)  # its first 4096 tokens
eval_text=/usr/share/common-licenses/GPL-3
"$KQ" capture "$model" "${calib_text[@]}" -o "$OUT/calib.safetensors" --seq-len 256 --max-tokens 4096 --dtype f16 \
  "${threads[@]}"
. .ci/fit-budget.sh
projs=()
labels=()
for name in $methods; do
  proj="$OUT/proj-$name.safetensors"
  if [[ " $sensitive " == *" $name "* ]]; then
    kq_fit_sensitive "$name" "$OUT/calib.safetensors" "$proj" "$budget"
    kq_fit_label="$name"
  else
    kq_fit_at_budget "$name" "$OUT/calib.safetensors" "$proj" "$budget"
  fi
  tail -n 1 "$proj.log"
  projs+=(--proj "$proj")
  labels+=(--label "$proj=$kq_fit_label")
done
long=()
if [ "$positions" != 0 ]; then
  "$KQ" capture "$model" "${calib_text[@]}" -o "$OUT/calib-pre.safetensors" --seq-len 256 \
    --max-tokens 4096 --rope pre --dtype f16 "${threads[@]}"
  for name in kq-svd kq-svd-joint; do
    proj="$OUT/proj-$name-pos$positions.safetensors"
    args=(--method kq-svd)
    [ "$name" = kq-svd ] || args+=(--layout joint)
    "$KQ" fit "$OUT/calib-pre.safetensors" -o "$proj" "${args[@]}" "$budget_flag" "$budget" \
      --positions "$positions" "${threads[@]}" 2>"$proj.log" || { cat "$proj.log" >&2; exit 1; }
    tail -n 1 "$proj.log"
    long+=(--proj "$proj")
  done
fi
# F16 storage: float latents and the full cache at 2 bytes a value, the unit of
# --bytes; the full F16 cache is the KL reference (as llama.cpp's F16 KV base).
"$KQ" ppl "$model" "$eval_text" --device "$dev" --ctx 256 --max-tokens 1024 --storage f16 \
  "${threads[@]}" "${projs[@]}" "${long[@]}" --json >"$OUT/ppl.json"
python3 .ci/compare_ppl.py "$OUT/ppl.json" "${labels[@]}"
[ "$positions" != 0 ] || exit 0

echo "== 3. long context: windows of 2048 (fit --positions $positions for the -pos rows) =="
short=()
for name in kq-svd kq-svd-joint quant; do
  [[ " $methods " == *" $name "* ]] && short+=(--proj "$OUT/proj-$name.safetensors")
done
"$KQ" ppl "$model" "$eval_text" --device "$dev" --ctx 2048 --max-tokens 2048 --storage f16 \
  "${threads[@]}" "${short[@]}" "${long[@]}" --json >"$OUT/ppl-2048.json"
python3 .ci/long_table.py "$OUT/ppl.json" "$OUT/ppl-2048.json"
