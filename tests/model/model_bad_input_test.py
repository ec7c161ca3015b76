#!/usr/bin/env python3
"""Hostile and careless inputs around the model (reliability issue, round 2),
end to end through `kqsvd capture` and the model probe, on SmolLM2-135M.

Each case must fail fast with a non-zero exit (not a signal) and a message
naming the file, and leave no output behind; or, where the input is valid,
behave as stated:
  - a FIFO without a writer as the text (it used to hang), /dev/zero (read
    until memory ran out) and a directory: refused as "not a regular file";
  - `capture m.gguf t -o m.gguf` (would replace the model) and `-o TEXT`:
    refused, the file unchanged; `-o /dev/null` and `-o DIR`: refused
    before any work, /dev/null still a character device;
  - bytes the vocabulary has no token for (0x04, 0x06, ...): tokenized with a
    count of the dropped bytes (the probe reports it; capture warns);
  - a limit on tokens: exactly MAX ids, the same as the first MAX of the
    whole text's ids;
  - a model whose llama.block_count claims 16777216 layers: refused naming
    block_count before per-layer state is allocated (run under a 3 GiB
    address-space limit, where the old allocation of 3.75 GiB failed as "out
    of memory" instead);
  - a NaN in blk.0.attn_q.weight or an Inf in token_embd.weight: `ppl`
    fails at load naming the tensor (it printed perplexity 291 or -nan).
Exit 0 pass, 1 fail, 77 skip (model not fetchable).
"""
import argparse
import os
import stat
import struct
import subprocess
import sys
import tempfile

SKIP = 77
TEXT = "/usr/share/common-licenses/GPL-3"


def run(cmd, timeout=60):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"FAIL: {' '.join(cmd)} did not finish in {timeout} s (hang)")
        sys.exit(1)


failures = 0


def check(cond, msg):
    global failures
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures += 1


def refused(p, *mentions):
    return 1 <= p.returncode <= 127 and all(m in p.stderr for m in mentions)


def patched_copy(model, dst, patches):
    data = bytearray(open(model, "rb").read())
    for off, raw in patches:
        data[off:off + len(raw)] = raw
    with open(dst, "wb") as g:
        g.write(data)


def check_damaged_models(a, model, d, text):
    try:
        import gguf
    except ImportError:
        check(False, "python package gguf (installed by .ci/deps.sh) is missing")
        return
    reader = gguf.GGUFReader(model)
    raw = open(model, "rb").read(1 << 20)
    key = b"llama.block_count"
    at = raw.find(key)
    check(at > 0, "found llama.block_count in the header")
    bad = os.path.join(d, "layers.gguf")
    # key, then u32 value type (4 = UINT32), then the value.
    patched_copy(model, bad, [(at + len(key) + 4, struct.pack("<I", 1 << 24))])
    # The address-space limit shows the refusal comes before the allocation;
    # AddressSanitizer reserves terabytes of shadow, so under it (ASAN_OPTIONS
    # set by .ci/jobs/10-asan.sh) only the message is checked.
    limit = "" if os.environ.get("ASAN_OPTIONS") else "ulimit -v 3145728; "
    p = subprocess.run(["bash", "-c", limit + " ".join([a.kqsvd, "ppl", bad, text, "--ctx", "64",
                                                        "--max-tokens", "64"])],
                       capture_output=True, text=True, timeout=120)
    check(refused(p, bad, "block_count"), "16777216 claimed layers are refused naming block_count "
          f"(got: {p.stderr.strip()[-160:]})")
    tensors = {t.name: t for t in reader.tensors}
    for name, value, label in (("blk.0.attn_q.weight", 0x7E00, "NaN"),
                               ("token_embd.weight", 0x7C00, "Inf")):
        t = tensors[name]
        dst = os.path.join(d, "damaged.gguf")
        # The first block's F16 scale (Q4_1 / Q8_0 blocks start with it).
        patched_copy(model, dst, [(t.data_offset, struct.pack("<H", value))])
        p = run([a.kqsvd, "ppl", dst, text, "--ctx", "64", "--max-tokens", "64"], timeout=120)
        check(refused(p, dst, name, "finite"), f"{label} in {name} fails at load naming it")
        os.unlink(dst)
    os.unlink(bad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kqsvd", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--fetch", required=True)
    a = ap.parse_args()
    f = subprocess.run(["bash", a.fetch], capture_output=True, text=True)
    if f.returncode != 0:
        print("SKIP: model not available:", f.stderr[-300:])
        sys.exit(SKIP)
    model = f.stdout.strip()
    model_size = os.path.getsize(model)
    with tempfile.TemporaryDirectory() as d:
        fifo = os.path.join(d, "fifo")
        os.mkfifo(fifo)
        out = os.path.join(d, "calib.safetensors")
        for bad, what in ((fifo, "FIFO"), ("/dev/zero", "/dev/zero"), (d, "directory")):
            p = run([a.kqsvd, "capture", model, bad, "-o", out, "--max-tokens", "256",
                     "--seq-len", "64"])
            check(refused(p, bad, "not a regular file"), f"capture refuses a {what} as text")
            check(not os.path.exists(out), f"  and writes no output ({what})")
        text = os.path.join(d, "t.txt")
        with open(TEXT, "rb") as src, open(text, "wb") as dst:
            dst.write(src.read()[:4000])
        before = open(text, "rb").read()
        for target, name in ((model, "the model"), (text, "the text")):
            p = run([a.kqsvd, "capture", model, text, "-o", target, "--seq-len", "64"])
            check(refused(p, target, "is the input"), f"capture -o {name} is refused")
        check(os.path.getsize(model) == model_size, "  the model is unchanged")
        check(open(text, "rb").read() == before, "  the text is unchanged")
        for target, kind in (("/dev/null", "character device"), (d, "directory")):
            p = run([a.kqsvd, "capture", model, text, "-o", target, "--seq-len", "64"], timeout=20)
            check(refused(p, target, kind), f"capture -o {target} is refused before any work")
        check(stat.S_ISCHR(os.stat("/dev/null").st_mode), "  /dev/null is still a device")
        check(sorted(os.listdir(d)) == ["fifo", "t.txt"], "  nothing left in the folder")

        # Bytes without a token: SmolLM2's vocabulary lacks 0x04 and 0x06.
        ctl = os.path.join(d, "ctl.txt")
        with open(ctl, "wb") as g:
            g.write(b"abc\x04def\x06\x06 ghi")
        p = run([a.probe, "tokenize", model, ctl])
        check(p.returncode == 0 and "dropped 3" in p.stderr,
              f"the tokenizer reports 3 dropped bytes (got: {p.stderr.strip()[-80:]})")
        p = run([a.kqsvd, "capture", model, ctl, text, "-o", out, "--seq-len", "64",
                 "--max-tokens", "64"])
        check(p.returncode == 0 and "3 bytes have no token" in p.stderr and ctl in p.stderr,
              "capture warns about the dropped bytes, naming the file")

        # ppl: the same text checks, and a text too short names the file.
        p = run([a.kqsvd, "ppl", model, fifo, "--ctx", "64"])
        check(refused(p, fifo, "not a regular file"), "ppl refuses a FIFO as text")
        short = os.path.join(d, "short.txt")
        with open(short, "w") as g:
            g.write("a")
        p = run([a.kqsvd, "ppl", model, short, "--ctx", "64"])
        check(refused(p, short, "at least 2"), "ppl on a one-token text names the text file")
        p = run([a.kqsvd, "ppl", model, ctl, "--ctx", "64"])
        check("3 bytes have no token" in p.stderr and ctl in p.stderr,
              "ppl warns about dropped bytes, naming the file")
        os.unlink(short)

        # A token limit: exactly MAX ids, a prefix of the whole encoding.
        full = run([a.probe, "tokenize", model, text]).stdout.split()
        part = run([a.probe, "tokenize", model, text, "100"]).stdout.split()
        check(len(full) > 100 and part == full[:100], "a limit of 100 gives the first 100 ids")
        check_damaged_models(a, model, d, text)
    print(f"{failures} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
