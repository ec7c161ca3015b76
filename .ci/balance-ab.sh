#!/usr/bin/env bash
# .ci/balance-ab.sh [BUDGET...]: latent balancing A/B (docs/quality.md, "Latent balancing").
# For each budget (default 0.375 0.28 0.25 0.19): kq-svd per-head, kq-svd joint and quant,
# each fitted at --bytes BUDGET with balanced latents (quant: --balance-quant) and without,
# no sensitivity, on the main job's calibration (first 4096 tokens of the fortunes file,
# F16, captured here if missing); then one lockstep `kqsvd ppl` of all six on the first 1024
# tokens of GPL-3 at ctx 256 (--storage f16) and a table of ppl, KL, top-1 and bytes.
# Env: KQ (the CLI), KQ_OUT (default build/balance-ab), THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
OUT=${KQ_OUT:-build/balance-ab}
threads=(${THREADS:+--threads "$THREADS"})
budgets=("$@")
[ ${#budgets[@]} -gt 0 ] || budgets=(0.375 0.28 0.25 0.19)
mkdir -p "$OUT"
model=$(bash .ci/fetch-model.sh)
calib=$OUT/calib.safetensors
[ -s "$calib" ] || "$KQ" capture "$model" /usr/share/games/fortunes/fortunes -o "$calib" \
  --seq-len 256 --max-tokens 4096 --dtype f16 "${threads[@]}"
for b in "${budgets[@]}"; do
  projs=()
  for name in kq-svd kq-svd-joint quant; do
    case $name in
      kq-svd-joint) args=(--method kq-svd --layout joint) ;;
      *) args=(--method "$name") ;;
    esac
    for bal in on off; do
      extra=()  # kq-svd balances by default; the quant baseline only with --balance-quant
      if [ $name = quant ]; then
        [ $bal = off ] || extra=(--balance-quant)
      else
        [ $bal = on ] || extra=(--no-balance)
      fi
      f=$OUT/$name-balance-$bal-$b.safetensors
      "$KQ" fit "$calib" -o "$f" "${args[@]}" --bytes "$b" "${extra[@]}" "${threads[@]}" -q \
        2>"$f.log" || { cat "$f.log" >&2; exit 1; }
      projs+=(--proj "$f")
    done
  done
  "$KQ" ppl "$model" /usr/share/common-licenses/GPL-3 --ctx 256 --max-tokens 1024 --storage f16 \
    "${threads[@]}" "${projs[@]}" --json >"$OUT/ppl-$b.json"
  python3 - "$OUT/ppl-$b.json" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
print(f"full ppl {j['full']['ppl']:.3f}, {j['predictions']} scored")
for r in j["runs"]:
    name = os.path.basename(r["proj"]).removesuffix(".safetensors")
    print(f"{name:32s} ppl {r['ppl']:8.3f}  KL {r['kld']:.4f}  top-1 {r['top1']:.3f}  of F16 {r['kv_fraction_f16']:.4f}")
PY
done
