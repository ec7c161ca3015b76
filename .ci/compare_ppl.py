"""Prints perplexity with the full cache and each compressed cache.

usage: compare_ppl.py FULL.json METHOD.json...   (`kqsvd ppl --json` outputs: FULL without
--proj, each METHOD with --proj P --skip-full; a method's name is its file name ppl-NAME.json)
"""
import json
import os
import sys

with open(sys.argv[1]) as f:
    base = json.load(f)
full = base["full"]
print("%-10s %8s %10s %12s %8s" % ("cache", "tokens", "ppl", "kv_bytes", "Δppl"))
print("%-10s %8d %10.3f %12d %8s" % ("full", base["tokens"], full["ppl"], full["kv_bytes"], "-"))
for path in sys.argv[2:]:
    with open(path) as f:
        r = json.load(f)
    name = os.path.basename(path)[len("ppl-"):-len(".json")]
    c = r["compressed"]
    print("%-10s %8d %10.3f %12d %+8.3f" % (name, r["tokens"], c["ppl"], c["kv_bytes"], c["ppl"] - full["ppl"]))
