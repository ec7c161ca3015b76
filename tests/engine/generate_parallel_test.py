#!/usr/bin/env python3
"""`kqsvd generate --parallel N` (issue 15) on SmolLM2-135M: N prompts
decoded as N sequences of one cache give, for each prompt, the same text and
token count as a separate run of that prompt, with

  - the full cache (the model's RoPE applied per sequence by the batch),
  - a compressed cache with RoPE pre (the cache rotates at per-sequence
    positions), fitted here from a short capture,
  - fewer sequences than prompts (--parallel 2 over 4 prompts: a finished
    sequence is cleared and takes the next prompt), prompts from -f FILE.

Exit 0 pass, 1 fail, 77 skip (model not fetchable).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SKIP = 77
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The three primary colors are"]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr[-2000:]}")
        sys.exit(1)
    return p


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kqsvd", required=True)
    ap.add_argument("--fetch", required=True)
    a = ap.parse_args()
    f = subprocess.run(["bash", a.fetch], capture_output=True, text=True)
    if f.returncode != 0 or not f.stdout.strip():
        print(f"SKIP: model fetch failed: {f.stderr[-500:]}")
        return SKIP
    model = f.stdout.strip().splitlines()[-1]
    kq = a.kqsvd
    common = ["-n", "10", "-t", "2", "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "text.txt")
        with open(text, "w") as fh:
            fh.write(" ".join(PROMPTS) * 40)
        calib, proj = os.path.join(tmp, "calib.st"), os.path.join(tmp, "pre.proj")
        run([kq, "capture", model, text, "-o", calib, "--seq-len", "32", "--max-tokens", "128",
             "--rope", "pre", "-q"])
        run([kq, "fit", calib, "-o", proj, "--ratio", "0.5", "-q"])
        pfile = os.path.join(tmp, "prompts.txt")
        with open(pfile, "w") as fh:
            fh.write("\n".join(PROMPTS) + "\n\n")
        for cache in ([], ["--proj", proj]):
            alone = [json.loads(run([kq, "generate", model, "-p", p] + cache + common).stdout)
                     for p in PROMPTS]
            batched = []
            for par in ("4", "2"):
                args = [x for p in PROMPTS for x in ("-p", p)] if par == "4" else ["-f", pfile]
                g = json.loads(run([kq, "generate", model] + args + ["--parallel", par] + cache +
                                   common).stdout)
                check(g["parallel"] == int(par) and len(g["results"]) == len(PROMPTS),
                      f"--parallel {par}: {g['parallel']} sequences, {len(g['results'])} results")
                check(g["generated_tokens"] == sum(r["generated_tokens"] for r in g["results"]),
                      "total generated tokens")
                check(g["tokens_per_s"] > 0 and g["decode_steps"] >= 9, "throughput fields")
                batched.append((par, g))
            for par, g in batched:
                for p, one, r in zip(PROMPTS, alone, g["results"]):
                    what = f"{'compressed' if cache else 'full'} cache, --parallel {par}, {p!r}"
                    check(r["prompt"] == p, f"{what}: prompt order")
                    check(r["text"] == one["text"],
                          f"{what}: text {r['text']!r} differs from the separate run's "
                          f"{one['text']!r}")
                    check(r["generated_tokens"] == one["generated_tokens"],
                          f"{what}: {r['generated_tokens']} tokens, alone "
                          f"{one['generated_tokens']}")
            print(f"{'compressed' if cache else 'full'} cache: 4 prompts, --parallel 4 and 2 "
                  f"match separate runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
