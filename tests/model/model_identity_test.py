#!/usr/bin/env python3
"""The model identity of SPEC §1b, end to end on the tiny GGUF of the fuzz
seeds (no network):

  - capture records model_name (general.name) and model_sha256, which is
    the SHA-256 of the GGUF file as hashlib computes it;
  - fit copies both into the projection file;
  - ppl and generate accept the projections with their own model, and refuse
    them with a model of the same shapes but other bytes (a changed
    general.name), naming both files and both hashes, before any pass runs
    (no progress line, nothing on stdout);
  - eval refuses a calibration file captured from the other model;
  - a projection file without an identity (written before it was recorded)
    is accepted with a warning naming it.
Usage: model_identity_test.py KQSVD TINY.gguf. Exit 0 pass, 1 fail.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

TEXT = "the cat sat on the mat and the dog ran to the cat " * 20


def run(cmd, expect=0):
    env = dict(os.environ, KQSVD_PROGRESS_INTERVAL="0")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    ok = p.returncode == 0 if expect == 0 else p.returncode != 0
    if not ok:
        print(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr[-2000:]}")
        sys.exit(1)
    return p


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n)), f.read()


def strip_identity(src, dst):
    """The file as an older kqsvd wrote it: no model_name / model_sha256
    (header padded with spaces to its old length, so offsets stay valid)."""
    n, head, data = read_header(src)
    for key in ("model_name", "model_sha256"):
        head["__metadata__"].pop(key, None)
    text = json.dumps(head, separators=(",", ":")).encode()
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", n) + text.ljust(n, b" ") + data)


def main():
    kqsvd, tiny = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda name: os.path.join(tmp, name)
        with open(p("t.txt"), "w") as f:
            f.write(TEXT)
        raw = open(tiny, "rb").read()
        name = b"kqsvd fuzz tiny llama"
        check(raw.count(name) == 1, "the tiny GGUF names itself once")
        other = raw.replace(name, b"kqsvd fuzz tiny llamb")
        with open(p("other.gguf"), "wb") as f:
            f.write(other)
        sha, sha_other = hashlib.sha256(raw).hexdigest(), hashlib.sha256(other).hexdigest()

        run([kqsvd, "capture", "-m", tiny, "-f", p("t.txt"), "-o", p("c.st"), "--seq-len", "16", "-q"])
        meta = read_header(p("c.st"))[1]["__metadata__"]
        check(meta.get("model_sha256") == sha, f"capture model_sha256 {meta.get('model_sha256')} != {sha}")
        check(meta.get("model_name") == "kqsvd fuzz tiny llama", f"capture model_name {meta.get('model_name')}")

        run([kqsvd, "fit", p("c.st"), "-o", p("p.st"), "--ratio", "0.5", "-q"])
        meta = read_header(p("p.st"))[1]["__metadata__"]
        check(meta.get("model_sha256") == sha and meta.get("model_name") == "kqsvd fuzz tiny llama",
              f"fit did not copy the identity: {meta}")

        ok = run([kqsvd, "ppl", "-m", tiny, "-f", p("t.txt"), "--proj", p("p.st"), "-c", "32"])
        check("warning" not in ok.stderr, f"same model warned: {ok.stderr}")

        for cmd in (["ppl", "-m", p("other.gguf"), "-f", p("t.txt"), "--proj", p("p.st"), "-c", "32"],
                    ["generate", "-m", p("other.gguf"), "-p", "the cat", "-n", "4", "--proj", p("p.st")]):
            bad = run([kqsvd] + cmd, expect=1)
            for needle in (p("p.st"), p("other.gguf"), sha, sha_other):
                check(needle in bad.stderr, f"{cmd[0]}: refusal does not name {needle}: {bad.stderr}")
            check("pass" not in bad.stderr and bad.stdout == "",
                  f"{cmd[0]}: work started before the refusal: {bad.stdout} {bad.stderr}")

        run([kqsvd, "capture", "-m", p("other.gguf"), "-f", p("t.txt"), "-o", p("c_other.st"),
             "--seq-len", "16", "-q"])
        bad = run([kqsvd, "eval", p("c_other.st"), p("p.st")], expect=1)
        check(sha in bad.stderr and sha_other in bad.stderr, f"eval refusal: {bad.stderr}")

        strip_identity(p("p.st"), p("p_old.st"))
        check("model_sha256" not in read_header(p("p_old.st"))[1]["__metadata__"], "stripped")
        old = run([kqsvd, "ppl", "-m", p("other.gguf"), "-f", p("t.txt"), "--proj", p("p_old.st"),
                   "-c", "32"])
        check("warning" in old.stderr and p("p_old.st") in old.stderr and "no model identity" in old.stderr,
              f"no warning for a file without identity: {old.stderr}")
        gen = run([kqsvd, "generate", "-m", tiny, "-p", "the cat", "-n", "4", "--proj", p("p_old.st")])
        check("no model identity" in gen.stderr, f"generate did not warn: {gen.stderr}")
    print("model identity: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
