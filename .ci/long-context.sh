#!/usr/bin/env bash
# Long-context quality of the compressed caches (docs/long-context.md):
#   1. capture calibration from Debian's fortune file (first 4096 tokens) with
#      RoPE post at --seq-len 256 and 2048, and RoPE pre at 256;
#   2. fit at --bytes BUDGET: kq-svd per-head and joint and the quant baseline
#      (post 256), the same two on post 2048, the position-robust fits
#      (fit --positions P on the pre capture, per-head and joint) and the
#      per-head rope pre fit;
#   3. one lockstep `kqsvd ppl` per --ctx on GPL-3 (F16 storage, the first
#      MAX_TOKENS tokens, the same tokens at every ctx) and a table: ppl, ppl
#      over the full cache's ("ratio"), KL and top-1 against the full cache,
#      and ratio(ctx) / ratio(first ctx).
# Files are reused when present (delete $OUT to start over).
# Env: KQ (the CLI), KQ_OUT (default build/long), KQSVD_DEVICE, BUDGET (0.28),
#      CTXS ("256 2048"; 8192 is the model's context), MAX_TOKENS (4096),
#      POSITIONS ("2048 8192": one position-robust pair of fits per value),
#      FITS (names to score, default all below), THREADS (model threads).
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
OUT=${KQ_OUT:-build/long}
dev=${KQSVD_DEVICE:-cpu}
budget=${BUDGET:-0.28}
ctxs=${CTXS:-"256 2048"}
max_tokens=${MAX_TOKENS:-4096}
positions=${POSITIONS:-"2048 8192"}
threads=(${THREADS:+--threads "$THREADS"})
mkdir -p "$OUT"
model=$(bash .ci/fetch-model.sh)
calib_text=/usr/share/games/fortunes/fortunes
eval_text=/usr/share/common-licenses/GPL-3

capture() { # ROPE SEQ_LEN
  local f="$OUT/calib-$1-$2.safetensors"
  [ -s "$f" ] && return 0
  local s=$SECONDS
  "$KQ" capture "$model" "$calib_text" -o "$f" --seq-len "$2" --max-tokens 4096 --rope "$1" \
    --dtype f16 "${threads[@]}" 2>"$f.log"
  echo "capture rope $1 seq-len $2: $((SECONDS - s)) s"
}

fit() { # NAME CALIB ARGS...
  local name=$1 calib=$2 proj="$OUT/proj-$1.safetensors"
  shift 2
  if [ ! -s "$proj" ]; then
    local s=$SECONDS
    "$KQ" fit "$calib" -o "$proj" --bytes "$budget" "$@" 2>"$proj.log"
    echo "fit $name ($*): $((SECONDS - s)) s; $(tail -n 1 "$proj.log" | sed 's/^kqsvd fit: //')"
  fi
}

echo "== long context on $dev: fits at --bytes $budget, ppl at ctx $ctxs ($max_tokens tokens) =="
capture post 256
capture post 2048
capture pre 256
fit per-head-s256 "$OUT/calib-post-256.safetensors" --method kq-svd
fit joint-s256 "$OUT/calib-post-256.safetensors" --method kq-svd --layout joint
fit quant-s256 "$OUT/calib-post-256.safetensors" --method quant
fit per-head-s2048 "$OUT/calib-post-2048.safetensors" --method kq-svd
fit joint-s2048 "$OUT/calib-post-2048.safetensors" --method kq-svd --layout joint
fit per-head-pre "$OUT/calib-pre-256.safetensors" --method kq-svd
for n in $positions; do
  fit per-head-pos$n "$OUT/calib-pre-256.safetensors" --method kq-svd --positions "$n"
  fit joint-pos$n "$OUT/calib-pre-256.safetensors" --method kq-svd --layout joint --positions "$n"
done

names=${FITS:-"per-head-s256 joint-s256 quant-s256 per-head-s2048 joint-s2048 per-head-pre"}
[ -n "${FITS:-}" ] || for n in $positions; do names="$names per-head-pos$n joint-pos$n"; done
projs=()
for name in $names; do projs+=(--proj "$OUT/proj-$name.safetensors"); done
jsons=()
for ctx in $ctxs; do
  j="$OUT/ppl-ctx$ctx.json"
  s=$SECONDS
  "$KQ" ppl "$model" "$eval_text" --device "$dev" --ctx "$ctx" --max-tokens "$max_tokens" \
    --storage f16 "${threads[@]}" "${projs[@]}" --json >"$j"
  echo "ppl ctx $ctx: $((SECONDS - s)) s"
  jsons+=("$j")
done

python3 - "${jsons[@]}" <<'EOF'
import json, os, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
ctxs = [r["ctx"] for r in runs]
print("full cache: " + ", ".join("ctx %d ppl %.3f" % (r["ctx"], r["full"]["ppl"]) for r in runs))
head = "%-18s %6s" % ("cache", "bytes")
for c in ctxs:
    head += " | ctx %-5d %8s %6s %6s %6s" % (c, "ppl", "ratio", "KL", "top1")
head += " | ratio growth"
print(head)
ratios = {}
for i, r in enumerate(runs[0]["runs"]):
    name = os.path.basename(r["proj"])[len("proj-"):-len(".safetensors")]
    line = "%-18s %6.3f" % (name, r["kv_fraction_f16"])
    rs = []
    for run in runs:
        x = run["runs"][i]
        ratio = x["ppl"] / run["full"]["ppl"]
        rs.append(ratio)
        line += " | %9s %8.3f %6.3f %6.3f %6.3f" % ("", x["ppl"], ratio, x["kld"], x["top1"])
    line += " | " + " ".join("%.3f" % (q / rs[0]) for q in rs[1:])
    print(line)
EOF
