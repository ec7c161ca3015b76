#!/usr/bin/env bash
# The README's perplexity table: SmolLM2-135M perplexity on GPL-3 with the
# full cache and with KQ-SVD / K-SVD / Eigen caches at several latent ratios,
# for RoPE post and pre, on one device.
#   bash .ci/ppl-sweep.sh [OUT_DIR]        (env: DEVICE, RATIOS, TOKENS, CTX, ROPES, METHODS)
# Calibration: the first 4096 tokens of /usr/share/games/fortunes/fortunes
# (sequences of 256). Evaluation: the first TOKENS tokens of
# /usr/share/common-licenses/GPL-3 in windows of CTX. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
out=${1:-build/ppl-sweep}
device=${DEVICE:-cpu}
ratios=${RATIOS:-"1.0 0.75 0.5 0.375 0.25"}
tokens=${TOKENS:-1024}
ctx=${CTX:-256}
ropes=${ROPES:-"post pre"}
methods=${METHODS:-"kq-svd k-svd eigen"}
calib_text=/usr/share/games/fortunes/fortunes
eval_text=/usr/share/common-licenses/GPL-3
mkdir -p "$out"
model=$(bash .ci/fetch-model.sh)
full=$("$KQ" ppl "$model" "$eval_text" --device "$device" --ctx "$ctx" --max-tokens "$tokens" \
  --json 2>/dev/null | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["full"]["ppl"])')
echo "device $device, $tokens tokens of GPL-3 in windows of $ctx, full-cache perplexity $full" >&2
header="| RoPE | ratio |"
rule="|---|---|"
for m in $methods; do header="$header $m |"; rule="$rule---|"; done
echo "$header"
echo "$rule"
for rope in $ropes; do
  calib="$out/calib-$rope.safetensors"
  [ -f "$calib" ] || "$KQ" capture "$model" "$calib_text" -o "$calib" --seq-len 256 \
    --max-tokens 4096 --rope "$rope" 2>/dev/null
  for ratio in $ratios; do
    row="| $rope | $ratio |"
    for m in $methods; do
      proj="$out/proj-$rope-$m-$ratio.safetensors"
      "$KQ" fit "$calib" -o "$proj" --method "$m" --ratio "$ratio" 2>/dev/null
      ppl=$("$KQ" ppl "$model" "$eval_text" --proj "$proj" --device "$device" --ctx "$ctx" \
        --max-tokens "$tokens" --skip-full --json 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["compressed"]["ppl"])')
      row="$row $ppl |"
    done
    echo "$row"
  done
done
