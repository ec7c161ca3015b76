#!/usr/bin/env bash
# .ci/sensitivity.sh CALIB PROJ OUT: the model's sensitivity to each layer's
# compressed keys and values, for `kqsvd fit --sensitivity OUT`.
#   PROJ is a --bytes fit (without --sensitivity) from calibration file CALIB.
#   For every layer L and side S (keys, values), a cache that compresses only
#   side S of layer L as PROJ does (the rest full rank, float: a --ratio 1
#   kq-svd fit of the same layout, merged by .ci/proj_mix.py) is scored
#   against the full cache by `kqsvd ppl` on calibration text (TEXT, the
#   first TOKENS tokens in windows of CTX), 15 caches per ppl call; OUT gets
#   one line "S L KL" each (mean KL(full ‖ that cache) in nats), after a
#   header naming the sha256 of PROJ's tensor data (.ci/st_data_sha.py: metadata such as the
#   model identity does not count), which the main job matches to reuse OUT.
# Cost: 2 · n_layers forward passes over TOKENS tokens plus one full pass per
# call (SmolLM2-135M, 512 tokens: about 5 min on 2 cores).
# Env: KQ (the CLI), KQSVD_DEVICE, TEXT (default the fortunes file), TOKENS
#      (512), CTX (256), THREADS.
set -euo pipefail
[ $# = 3 ] || { sed -n '2,16p' "$0"; exit 2; }
calib=$1 proj=$2 out=$3
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
dev=${KQSVD_DEVICE:-cpu}
text=${TEXT:-/usr/share/games/fortunes/fortunes}
tokens=${TOKENS:-512}
ctx=${CTX:-256}
threads=(${THREADS:+--threads "$THREADS"})
model=$(bash .ci/fetch-model.sh)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kq-sensitivity.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

read -r layout n_layers < <(python3 - "$proj" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n)).get("__metadata__", {})
print(meta.get("layout", "per-head"), meta["n_layers"])
PY
)
"$KQ" fit "$calib" -o "$tmp/full.safetensors" --method kq-svd --layout "$layout" --ratio 1 \
  "${threads[@]}" 2>"$tmp/full.log" || { cat "$tmp/full.log" >&2; exit 1; }
names=()
for side in keys values; do
  for ((l = 0; l < n_layers; l++)); do
    python3 .ci/proj_mix.py "$tmp/full.safetensors" "$proj" "$tmp/$side-$l.safetensors" "$side" "$l"
    names+=("$side-$l")
  done
done
{
  echo "# kqsvd fit --sensitivity file: KL(full ‖ one side of one layer compressed)"
  echo "# proj $(basename "$proj") data_sha256 $(python3 .ci/st_data_sha.py "$proj")"
  echo "# text $(basename "$text"), first $tokens tokens, ctx $ctx, device $dev"
} >"$tmp/out"
for ((i = 0; i < ${#names[@]}; i += 15)); do
  projs=()
  for n in "${names[@]:i:15}"; do projs+=(--proj "$tmp/$n.safetensors"); done
  "$KQ" ppl "$model" "$text" --device "$dev" --ctx "$ctx" --max-tokens "$tokens" --storage f16 \
    "${threads[@]}" "${projs[@]}" --json 2>"$tmp/ppl.log" >"$tmp/ppl.json" ||
    { cat "$tmp/ppl.log" >&2; exit 1; }
  python3 - "$tmp/ppl.json" >>"$tmp/out" <<'PY'
import json, os, sys
for run in json.load(open(sys.argv[1]))["runs"]:
    side, layer = os.path.basename(run["proj"])[: -len(".safetensors")].split("-")
    print(side, layer, "%.8f" % run["kld"])
PY
done
mv "$tmp/out" "$out"
