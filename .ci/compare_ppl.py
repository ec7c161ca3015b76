"""Prints perplexity, KL divergence and top-1 agreement against the full cache, and the KV
bytes, of the full cache and each compressed cache, in one table.

usage: compare_ppl.py PPL.json [PPL.json...] [--label PROJ=NAME]...

Each PPL.json is a `kqsvd ppl --json` output; every run in its "runs" (one per --proj) is a
row, named after its projection file (proj-NAME.safetensors -> NAME) unless --label gives a
name. The full-cache row comes from the first file that has one. KL and top-1 are measured
against that file's full cache over the same scored tokens ("-" where the run had none, as
with --skip-full). "of F16" is the cache's bytes per token over a full F16 cache's.
"""
import json
import math
import os
import sys


def name_of(proj, labels):
    if proj in labels:
        return labels[proj]
    base = os.path.basename(proj)
    if base.startswith("proj-"):
        base = base[len("proj-"):]
    return base[: -len(".safetensors")] if base.endswith(".safetensors") else base


def num(fmt, v):
    return fmt % v if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def main(argv):
    files, labels = [], {}
    i = 0
    while i < len(argv):
        if argv[i] == "--label" and i + 1 < len(argv):
            proj, _, name = argv[i + 1].partition("=")
            labels[proj] = name
            i += 2
        else:
            files.append(argv[i])
            i += 1
    if not files:
        sys.exit(__doc__)
    results = []
    for path in files:
        with open(path) as f:
            results.append(json.load(f))
    full = next((r for r in results if r.get("full")), None)
    head = results[0]
    print("%d tokens, windows of %d, %d scored (%s), device %s, storage %s" % (
        head["tokens"], head["ctx"], head["predictions"], head["scored"], head["device"],
        head["storage"]))
    print("%-24s %9s %9s %9s %7s %8s %11s" % ("cache", "ppl", "Δppl", "KL", "top-1", "of F16",
                                             "B/token"))
    full_ppl = full["full"]["ppl"] if full else None

    def row(name, run):
        d = run["ppl"] - full_ppl if full_ppl is not None and run is not full["full"] else None
        print("%-24s %9s %9s %9s %7s %8s %11s" % (
            name, num("%.3f", run["ppl"]), num("%+.3f", d), num("%.4f", run["kld"]),
            num("%.4f", run["top1"]), num("%.4f", run["kv_fraction_f16"]),
            num("%.1f", run["kv_bytes_per_token"])))

    if full:
        row("full", full["full"])
    for r in results:
        for run in r.get("runs") or ([r["compressed"]] if r.get("compressed") else []):
            row(name_of(run["proj"], labels), run)


if __name__ == "__main__":
    main(sys.argv[1:])
