#!/usr/bin/env bash
# docs/kl-vs-bytes.svg: KL(p_full || p_compressed) of SmolLM2-135M's next-token
# distributions against the KV cache's bytes (fraction of a full F16 cache) for each
# method over several byte budgets, and a markdown table of the same runs on stdout.
#   bash .ci/kl-chart.sh [OUT_DIR]
# Env: BUDGETS (default "0.19 0.25 0.28 0.375 0.5"), METHODS (default "kq-svd
# kq-svd-joint quant k-svd eigen"), BUDGET_FLAG (default --bytes; see .ci/fit-budget.sh),
# DEVICE (default cpu), TOKENS (1024), CTX (256), SVG (default docs/kl-vs-bytes.svg).
# Calibration: the first 4096 tokens of the fortunes file (sequences of 256), as the main
# job; evaluation: the first TOKENS tokens of GPL-3 in windows of CTX, F16 storage, the
# full F16 cache as the KL reference, one lockstep `kqsvd ppl` per budget.
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
out=${1:-build/kl-chart}
budgets=${BUDGETS:-"0.19 0.25 0.28 0.375 0.5"}
methods=${METHODS:-"kq-svd kq-svd-joint quant k-svd eigen"}
device=${DEVICE:-cpu}
tokens=${TOKENS:-1024}
ctx=${CTX:-256}
svg=${SVG:-docs/kl-vs-bytes.svg}
mkdir -p "$out"
model=$(bash .ci/fetch-model.sh)
calib="$out/calib.safetensors"
[ -f "$calib" ] || "$KQ" capture "$model" /usr/share/games/fortunes/fortunes -o "$calib" \
  --seq-len 256 --max-tokens 4096 2>/dev/null
. .ci/fit-budget.sh
labels=()
for budget in $budgets; do
  projs=()
  for name in $methods; do
    proj="$out/proj-$name-$budget.safetensors"
    kq_fit_at_budget "$name" "$calib" "$proj" "$budget"
    projs+=(--proj "$proj")
    labels+=(--label "$proj=$kq_fit_label")
  done
  echo "budget $budget: ppl of the full cache and ${methods// /, }" >&2
  "$KQ" ppl "$model" /usr/share/common-licenses/GPL-3 --device "$device" --ctx "$ctx" \
    --max-tokens "$tokens" --storage f16 "${projs[@]}" --json >"$out/ppl-$budget.json" 2>/dev/null
done
files=()
for budget in $budgets; do files+=("$out/ppl-$budget.json"); done
python3 .ci/kl_chart.py "${files[@]}" "${labels[@]}" -o "$svg"
