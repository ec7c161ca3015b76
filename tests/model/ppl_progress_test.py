#!/usr/bin/env python3
"""`kqsvd ppl` progress off a terminal (KQSVD_PROGRESS_INTERVAL=0: a line per
batch) on the tiny GGUF of the fuzz seeds: every line carries the pass label
and the running perplexity of each cache ("ppl full X, P Y"); the running
values change as tokens are scored, and the last line's values are the
final perplexities of --json (to the 3 decimals shown). --skip-full labels
the compressed pass and shows only the projection's value.
Usage: ppl_progress_test.py KQSVD TINY.gguf. Exit 0 pass, 1 fail.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

TEXT = "the cat sat on the mat and the dog ran to the cat " * 20


def run(cmd):
    env = dict(os.environ, KQSVD_PROGRESS_INTERVAL="0")
    p = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", env=env)
    if p.returncode != 0:
        print(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr[-2000:]}")
        sys.exit(1)
    return p


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def main():
    kqsvd, tiny = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        text, calib, proj = (os.path.join(tmp, n) for n in ("t.txt", "c.st", "p.st"))
        with open(text, "w") as f:
            f.write(TEXT)
        run([kqsvd, "capture", tiny, text, "-o", calib, "--seq-len", "16", "-q"])
        run([kqsvd, "fit", calib, "-o", proj, "--ratio", "0.5", "-q"])

        p = run([kqsvd, "ppl", tiny, text, "--proj", proj, "-c", "32", "--json"])
        final = json.loads(p.stdout)
        pat = re.compile(r"^ppl: full \+ 1 compressed pass (\d+)/(\d+).*, ppl full ([0-9.]+), "
                         + re.escape(proj) + r" ([0-9.]+)$")
        lines = [l for l in p.stderr.splitlines() if l.startswith("ppl: full + 1 compressed pass")]
        check(len(lines) >= 10, f"expected a progress line per batch, got {len(lines)}:\n{p.stderr}")
        values = []
        for line in lines:
            m = pat.match(line)
            check(m, f"progress line without both running perplexities: {line!r}")
            values.append((float(m.group(3)), float(m.group(4))))
        check(len(set(values)) > 1, "the running perplexity never changed")
        full, comp = final["full"]["ppl"], final["compressed"]["ppl"]
        check(abs(values[-1][0] - full) <= 6e-4 and abs(values[-1][1] - comp) <= 6e-4,
              f"last progress {values[-1]} != final ({full}, {comp})")

        p = run([kqsvd, "ppl", tiny, text, "--proj", proj, "-c", "32", "--skip-full"])
        lines = [l for l in p.stderr.splitlines() if l.startswith("ppl: ")]
        check(lines and all(l.startswith("ppl: compressed pass (1 cache)") for l in lines),
              f"--skip-full label: {lines[:2]}")
        check(all(", ppl " + proj + " " in l and "full" not in l for l in lines[1:]),
              f"--skip-full running value: {lines[-1]!r}")
    print("ppl progress: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
