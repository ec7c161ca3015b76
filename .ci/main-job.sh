#!/usr/bin/env bash
# README command 1's job, on the default device (KQSVD_DEVICE, else cpu):
#   1. synthetic check: KQ-SVD vs K-SVD vs Eigen at equal ranks (logits error
#      at the Eckart–Young optimum, below both baselines);
#   2. the real model: fetch SmolLM2-135M, capture calibration activations from
#      Debian's fortune file, fit the three methods at --ratio 0.5, print the fidelity
#      table and the perplexity on a different text with the full cache and
#      each compressed cache.
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

echo "== 2. SmolLM2-135M: capture, fit at --ratio 0.5, perplexity =="
model=$(bash .ci/fetch-model.sh)
calib_text=(/usr/share/games/fortunes/fortunes)  # its first 4096 tokens
eval_text=/usr/share/common-licenses/GPL-3
"$KQ" capture "$model" "${calib_text[@]}" -o "$OUT/calib.safetensors" --seq-len 256 --max-tokens 4096
for m in kq-svd k-svd eigen; do
  "$KQ" fit "$OUT/calib.safetensors" -o "$OUT/proj-$m.safetensors" --method "$m" --ratio 0.5 2>/dev/null
  "$KQ" eval "$OUT/calib.safetensors" "$OUT/proj-$m.safetensors" --json --max-seqs 4 >"$OUT/eval-$m.json"
done
python3 .ci/compare_methods.py "$OUT/eval-kq-svd.json:$OUT/proj-kq-svd.safetensors" \
  "$OUT"/eval-{k-svd,eigen}.json
ppl=("$KQ" ppl "$model" "$eval_text" --device "$dev" --ctx 256 --max-tokens 1024 --json)
"${ppl[@]}" >"$OUT/ppl-full.json"  # the full cache once; each method then skips it
for m in kq-svd k-svd eigen; do
  "${ppl[@]}" --proj "$OUT/proj-$m.safetensors" --skip-full >"$OUT/ppl-$m.json"
done
python3 .ci/compare_ppl.py "$OUT/ppl-full.json" "$OUT"/ppl-{kq-svd,k-svd,eigen}.json
