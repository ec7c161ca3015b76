"""Prints the mean fidelity metrics of several `kqsvd eval --json` outputs side by side.

Usage: compare_methods.py EVAL.json[:PROJ.safetensors] ...
With the projection file of a kq-svd fit, also prints the Eckart–Young optimum of the
logits error, sqrt(Σ_{j>r} σ_j²) / sqrt(Σ_j σ_j²) pooled over heads, from its key_spectrum
(σ of M = R_K R_Qᵀ), so the table shows KQ-SVD sitting at the optimum.
"""
import json
import math
import struct
import sys

KEYS = ["key", "query", "value", "logits", "softmax", "output", "value_out"]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def optimum(proj_path, eval_result):
    header, data = read_safetensors(proj_path)
    per_layer = []
    for layer in eval_result["layers"]:
        t = header["layers.%d.key_spectrum" % layer["layer"]]
        hk, d = t["shape"]
        b, e = t["data_offsets"]
        sig = struct.unpack("<%df" % (hk * d), data[b:e])
        r = layer["rank_k"]
        tail = sum(sig[h * d + j] ** 2 for h in range(hk) for j in range(r, d))
        total = sum(s * s for s in sig)
        per_layer.append(math.sqrt(tail / total) if total > 0 else 0.0)
    return sum(per_layer) / len(per_layer)


rows = []
opt = None
for arg in sys.argv[1:]:
    path, _, proj = arg.partition(":")
    with open(path) as f:
        r = json.load(f)
    ranks = sorted({(l["rank_k"], l["rank_v"]) for l in r["layers"]})
    rank = "%d/%d" % ranks[0] if len(ranks) == 1 else "per-layer"
    rows.append([r["method"], rank] + [r["mean"].get(k) for k in KEYS])
    if proj and r["method"] == "kq-svd":
        opt = optimum(proj, r)
print("%-8s %-10s" % ("method", "r_k/r_v") + "".join("%11s" % k for k in KEYS))
for row in rows:
    cells = "".join("%11s" % ("-" if v is None or v < 0 else "%.4f" % v) for v in row[2:])
    print("%-8s %-10s" % (row[0], row[1]) + cells)
if opt is not None:
    print("Eckart-Young optimum of the logits error (mean over layers): %.4f" % opt)
best = min(rows, key=lambda r: r[2 + KEYS.index("logits")])
if any(r[1] == "per-layer" for r in rows):
    print("lowest logits error: %s (ranks differ per layer and per method: compare perplexity)"
          % best[0])
else:
    print("lowest logits error: %s" % best[0])
