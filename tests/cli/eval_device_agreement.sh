#!/bin/sh
# eval_device_agreement.sh CLI BACKEND WORKDIR
# `kqsvd eval --device D --json` on every device D of BACKEND must agree with
# the CPU device's eval to 1e-4 relative on F32 storage (issues 3-5): the
# fidelity a user sees is the fidelity of the kernels they run. With BACKEND
# cpu the reference is the host-only float64 eval instead.
# Exit 77 (ctest SKIPPED) when BACKEND has no device, unless
# KQSVD_CONFORMANCE_REQUIRE lists it (then it is a failure).
set -eu
cli=$1
backend=$2
work=$3
mkdir -p "$work"
calib="$work/calib.safetensors"
"$cli" synth "$calib" --layers 2 --heads 8 --kv-heads 2 --head-dim 64 --hidden 256 \
  --seq-len 128 --n-seqs 2 --seed 7 >/dev/null
"$cli" fit "$calib" -o "$work/proj.safetensors" --rank-k 24 --rank-v 20 2>/dev/null
if [ "$backend" = cpu ]; then
  "$cli" eval "$calib" "$work/proj.safetensors" --json >"$work/ref.json"
else
  "$cli" eval "$calib" "$work/proj.safetensors" --json --device cpu --storage f32 >"$work/ref.json"
fi
found=0
for dev in $("$cli" conformance --list-devices); do
  case "$dev" in
  "$backend" | "$backend":*) ;;
  *) continue ;;
  esac
  found=1
  "$cli" eval "$calib" "$work/proj.safetensors" --json --device "$dev" --storage f32 \
    >"$work/dev.json"
  python3 - "$work/ref.json" "$work/dev.json" "$dev" <<'PY'
import json, sys
ref = json.load(open(sys.argv[1]))
dev = json.load(open(sys.argv[2]))
name = sys.argv[3]
assert len(ref["layers"]) == len(dev["layers"]) > 0, "layer count differs"
worst = 0.0
for a, b in zip(ref["layers"], dev["layers"]):
    for key in ("output", "softmax", "logits", "key", "value"):
        x, y = a[key], b[key]
        rel = abs(x - y) / max(abs(x), 1e-30)
        worst = max(worst, rel)
        if rel > 1e-4:
            sys.exit("%s: layer %d %s: %.9g vs reference %.9g (rel %.2e > 1e-4)"
                     % (name, a["layer"], key, y, x, rel))
print("%s: eval agrees with the reference, worst relative difference %.2e" % (name, worst))
PY
done
if [ "$found" = 0 ]; then
  for required in ${KQSVD_CONFORMANCE_REQUIRE:-}; do
    [ "$required" = "$backend" ] && { echo "no $backend device, but it is required" >&2; exit 1; }
  done
  echo "no $backend device: SKIPPED" >&2
  exit 77
fi
