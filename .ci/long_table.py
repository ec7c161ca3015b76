"""Perplexity ratio to the full cache and KL at several window sizes.

usage: long_table.py PPL.json [PPL.json...]

Each PPL.json is a `kqsvd ppl --json` output at one --ctx; rows are the projection files
(proj-NAME.safetensors -> NAME) of the last file, matched by path in the others (a cell is
"-" where a file has no such run). ratio = ppl / that file's full-cache ppl; growth = the
last file's ratio over the first's (1.0: the cache does not get worse with longer windows).
"""
import json
import math
import os
import sys


def name_of(proj):
    base = os.path.basename(proj)
    base = base[len("proj-"):] if base.startswith("proj-") else base
    return base[: -len(".safetensors")] if base.endswith(".safetensors") else base


def num(fmt, v):
    return fmt % v if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def main(paths):
    if not paths:
        sys.exit(__doc__)
    results = [json.load(open(p)) for p in paths]
    head = "%-22s %7s" % ("cache", "of F16")
    for r in results:
        head += " | ctx %-5d %8s %6s %7s" % (r["ctx"], "ppl", "ratio", "KL")
    print(head + " | growth")
    line = "%-22s %7s" % ("full", "1.0000")
    for r in results:
        line += " | %9s %8.3f %6s %7s" % ("", r["full"]["ppl"], "1", "-")
    print(line)
    for run in results[-1]["runs"]:
        line = "%-22s %7.4f" % (name_of(run["proj"]), run["kv_fraction_f16"])
        ratios = []
        for r in results:
            x = next((y for y in r["runs"] if y["proj"] == run["proj"]), None)
            if x is None:
                line += " | %9s %8s %6s %7s" % ("", "-", "-", "-")
                ratios.append(None)
                continue
            ratio = x["ppl"] / r["full"]["ppl"]
            ratios.append(ratio)
            line += " | %9s %8.3f %6.3f %7s" % ("", x["ppl"], ratio, num("%.4f", x["kld"]))
        growth = ratios[-1] / ratios[0] if ratios[0] and ratios[-1] else None
        print(line + " | " + num("%.3f", growth))


main(sys.argv[1:])
