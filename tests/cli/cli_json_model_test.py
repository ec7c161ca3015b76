#!/usr/bin/env python3
"""The CLI conventions on the commands that need a model (SmolLM2-135M, a few
hundred tokens in all): `capture`, `generate` and `ppl` take llama.cpp's short
aliases (-m model, -f text file, -p prompt, -n, -c ctx, -t, -o) and
--opt=value; `capture --json` and `generate --json` print one JSON object
that parses and agrees with the file written / the options given; -q leaves
only the results; ppl labels its lockstep pass "full + N compressed pass".
Exit 0 pass, 1 fail, 77 skip (model or text not available).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

SKIP = 77
TEXT = "/usr/share/common-licenses/GPL-3"


def run(cmd, expect=0, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != expect:
        print(f"FAIL: {' '.join(cmd)} exited {p.returncode} (expected {expect})\n{p.stderr[-2000:]}")
        sys.exit(1)
    return p


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    return cond


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kqsvd", required=True)
    ap.add_argument("--fetch", required=True)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    if not os.path.exists(TEXT):
        print(f"SKIP: {TEXT} missing (Debian package base-files)")
        sys.exit(SKIP)
    f = subprocess.run(["bash", a.fetch], capture_output=True, text=True)
    if f.returncode != 0:
        print(f"SKIP: model fetch failed: {f.stderr[-500:]}")
        sys.exit(SKIP)
    model = f.stdout.strip().splitlines()[-1]
    work = tempfile.mkdtemp(prefix="kq_cli_json_", dir=a.workdir)
    kq = a.kqsvd
    ok = True

    # capture: -m / -f / -o / -t and --opt=value, --json agrees with the file.
    calib = os.path.join(work, "calib.safetensors")
    p = run([kq, "capture", "-m", model, "-f", TEXT, "-o", calib, "--seq-len=32",
             "--max-tokens=96", "-t", "2", "--json", "-q"])
    c = json.loads(p.stdout)
    h = st_header(calib)
    T = h["layers.0.k"]["shape"][1]
    n_layers = sum(1 for k in h if k.endswith(".k"))
    ok &= check(c["tokens"] == T == 96 and c["sequences"] * c["seq_len"] == T
                and c["seq_len"] == 32 and c["layers"] == n_layers == 30
                and c["rope"] == "post" and c["dtype"] == "f32"
                and c["output"] == calib and c["text_tokens"] >= T and c["seconds"] > 0,
                f"capture --json {c} matches the file (T {T}, {n_layers} layers)")
    ok &= check(p.stderr == "", f"capture -q --json: nothing on stderr ({p.stderr[:200]!r})")

    # fit --json on it: ranks as asked.
    proj = os.path.join(work, "proj.safetensors")
    fj = json.loads(run([kq, "fit", calib, "-o", proj, "--rank-k=16", "--rank-v=16", "--json",
                         "-q"]).stdout)
    ok &= check(fj["mean_rank_k"] == 16 and fj["mean_rank_v"] == 16
                and abs(fj["fraction_of_f16"] - 32 / 128) < 1e-9,
                f"fit --json on a capture: {fj}")

    # generate: -m / -p / -n / -t, --json: the text, not the stream.
    p = run([kq, "generate", "-m", model, "-p", "The capital of France is", "-n", "5", "-t", "2",
             "--proj", proj, "--json"])
    g = json.loads(p.stdout)
    ok &= check(g["prompt"] == "The capital of France is" and len(g["text"]) > 0
                and 1 <= g["generated_tokens"] <= 5 and g["cache"] == "compressed"
                and g["proj"] == proj and g["device"] == "cpu" and g["kv_bytes"] > 0
                and g["prompt_tokens"] > 0 and g["decode_tokens_per_s"] >= 0,
                f"generate --json: {g['text']!r}, {g['generated_tokens']} tokens")
    plain = run([kq, "generate", model, "--prompt", "The capital of France is", "-n", "5",
                 "--proj", proj, "-q"])
    ok &= check(plain.stdout.rstrip("\n") == g["prompt"] + g["text"] and plain.stderr == "",
                "generate -q prints the same text and nothing on stderr")

    # ppl: -m / -f / -c / -b, progress labels the lockstep pass; -q silences it.
    env = dict(os.environ, KQSVD_PROGRESS_INTERVAL="0")
    p = run([kq, "ppl", "-m", model, "-f", TEXT, "-c", "32", "-b", "16", "--max-tokens=64",
             "--proj", proj, "--json"], env=env)
    j = json.loads(p.stdout)
    ok &= check(j["ctx"] == 32 and j["tokens"] == 64 and len(j["runs"]) == 1,
                f"ppl -c 32 --max-tokens=64: ctx {j['ctx']}, tokens {j['tokens']}")
    ok &= check("full + 1 compressed pass" in p.stderr, "ppl progress names the lockstep pass")
    p = run([kq, "ppl", model, TEXT, "--ctx", "32", "--max-tokens", "64", "--proj", proj,
             "--skip-full", "-q"], env=env)
    ok &= check("pass" not in p.stderr, f"ppl -q: no progress ({p.stderr[:200]!r})")
    p = run([kq, "ppl", model, TEXT, "--ctx", "32", "--max-tokens", "64", "--proj", proj,
             "--skip-full"], env=env)
    ok &= check("compressed pass" in p.stderr and "full +" not in p.stderr,
                "ppl --skip-full progress says compressed pass")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
