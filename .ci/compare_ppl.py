"""Prints perplexity with the full cache and each compressed cache (`kqsvd ppl --json` files)."""
import json
import os
import sys

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        r = json.load(f)
    name = os.path.basename(path)[len("ppl-"):-len(".json")]
    rows.append((name, r))
full = rows[0][1]["full"]
print("%-10s %8s %10s %12s %8s" % ("cache", "tokens", "ppl", "kv_bytes", "Δppl"))
print("%-10s %8d %10.3f %12d %8s" % ("full", rows[0][1]["tokens"], full["ppl"], full["kv_bytes"], "-"))
for name, r in rows:
    c = r["compressed"]
    print("%-10s %8d %10.3f %12d %+8.3f" % (name, r["tokens"], c["ppl"], c["kv_bytes"], c["ppl"] - full["ppl"]))
