#!/usr/bin/env python3
"""End-to-end check of `kqsvd capture`, `fit`, `ppl` and `generate` on
SmolLM2-135M (test only; a few hundred tokens in all).

Properties checked:
  - full-cache perplexity on English text (GPL-3) is in the range of a 135M
    model (5..60; measured 22 on the whole text);
  - the capture file has exactly the SPEC §2 tensors, shapes and metadata
    (with the model identity: general.name and the GGUF's SHA-256);
  - at --ratio 1.0 (rank = head_dim) the compressed cache reproduces the
    full cache's perplexity, for RoPE post (latents rotated by the model) AND
    pre (the cache reconstructs and rotates keys itself): this ties the
    model's RoPE (pairs layout, theta) to the backend's;
  - at --ratio 0.5 the compressed KV bytes are at most half of the full ones;
  - KL / top-1 against the full cache (lockstep runs): identity projections
    read from a file give KL exactly 0, top-1 exactly 1 and the same
    perplexity (same code path, same scored tokens); a rank-reduced cache
    gives KL > 0, top-1 < 1; every JSON number is finite; the byte fraction
    is kv_bytes / ctx over 2·2·head_dim·n_kv_heads·n_layers (F32 full = 2,
    F16 full = 1); running a cache beside the full one (lockstep) does not
    change its perplexity (same as with --skip-full); --score-from N scores
    N fewer tokens per window;
  - generate prints the prompt and new text; bad input gives clear errors.
Exit 0 pass, 1 fail, 77 skip (model not fetchable).
"""
import argparse
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

SKIP = 77
EVAL_TEXT = "/usr/share/common-licenses/GPL-3"
CALIB_TEXT = "/usr/share/games/fortunes/fortunes"


def run(cmd, expect=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect is not None and p.returncode != expect:
        print(f"FAIL: {' '.join(cmd)} exited {p.returncode} (expected {expect})\n{p.stderr[-2000:]}")
        sys.exit(1)
    return p


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def write_identity(fitted, out):
    """Copies a rank-d projection file with A, B, C, E replaced by exact
    identities (same header and metadata, so the file still names its model)."""
    with open(fitted, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = f.read(n)
        data = bytearray(f.read())
    h = json.loads(head)
    for name, t in h.items():
        if name == "__metadata__" or name.split(".")[-1] not in (
                "key_down", "query_down", "value_down", "value_up"):
            continue
        heads, d, r = t["shape"]
        assert t["dtype"] == "F32" and d == r, (name, t)
        eye = b"".join(struct.pack("<%df" % d, *[1.0 if j == i else 0.0 for j in range(d)])
                       for i in range(d))
        lo, hi = t["data_offsets"]
        data[lo:hi] = eye * heads
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", n) + head + bytes(data))


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    return cond


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kqsvd", required=True)
    ap.add_argument("--fetch", required=True)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    for p in (EVAL_TEXT, CALIB_TEXT):
        if not os.path.exists(p):
            print(f"SKIP: {p} missing (Debian packages base-files / fortunes-min)")
            sys.exit(SKIP)
    f = subprocess.run(["bash", a.fetch], capture_output=True, text=True)
    if f.returncode != 0:
        print(f"SKIP: model fetch failed: {f.stderr[-500:]}")
        sys.exit(SKIP)
    model = f.stdout.strip().splitlines()[-1]
    work = tempfile.mkdtemp(prefix="kq_cli_model_", dir=a.workdir)
    kq = a.kqsvd
    ok = True

    def ppl(*projs, tokens=128, extra=()):
        cmd = [kq, "ppl", model, EVAL_TEXT, "--ctx", "64", "--max-tokens", str(tokens), "--json"]
        for p in projs:
            cmd += ["--proj", p]
        return json.loads(run(cmd + list(extra)).stdout)

    with open(model, "rb") as f:  # the identity capture records (SPEC §1b)
        model_sha256 = hashlib.sha256(f.read()).hexdigest()
    base = ppl()
    ok &= check(base["tokens"] == 128 and 5 < base["full"]["ppl"] < 60,
                f"full-cache perplexity {base['full']['ppl']:.3f} on {base['tokens']} tokens in (5, 60)")
    ok &= check(base["compressed"] is None, "no --proj gives \"compressed\": null")

    for rope in ("post", "pre"):
        calib = os.path.join(work, f"calib-{rope}.safetensors")
        run([kq, "capture", model, CALIB_TEXT, "-o", calib, "--seq-len", "64", "--max-tokens",
             "128", "--rope", rope])
        h = st_header(calib)
        meta = h.pop("__metadata__")
        shapes_ok = len(h) == 30 * 4 and all(
            h[f"layers.{l}.q"]["shape"] == [9, 128, 64] and h[f"layers.{l}.k"]["shape"] == [3, 128, 64]
            and h[f"layers.{l}.v"]["shape"] == [3, 128, 64] and h[f"layers.{l}.wo"]["shape"] == [576, 576]
            for l in range(30))
        ok &= check(shapes_ok, f"capture --rope {rope}: 30 layers of q [9,T,64], k/v [3,T,64], wo [576,576]")
        ok &= check(meta == {"seq_len": "64", "rope": rope, "rope_theta": "100000",
                             "rope_layout": "pairs", "model_name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
                             "model_sha256": model_sha256}, f"capture --rope {rope}: metadata {meta}")
        proj = os.path.join(work, f"proj-{rope}-1.0.safetensors")
        run([kq, "fit", calib, "-o", proj, "--ratio", "1.0"])
        r = ppl(proj)
        full, comp = r["full"]["ppl"], r["compressed"]["ppl"]
        # Rank d: A Bᵀ = I and C Eᵀ = I up to the conditioning of the fitted
        # factors; measured |Δppl|/ppl < 1e-4. A RoPE mismatch between model
        # and cache changes perplexity by a factor, not by 1e-3.
        ok &= check(abs(comp - full) <= 1e-3 * full,
                    f"rope {rope}, ratio 1.0: compressed ppl {comp:.4f} == full {full:.4f}")
    # F16 latent storage rounds K and V to 11 significant bits (relative
    # 2^-11 ~ 5e-4); measured perplexity change ~0.05%: allow 1%.
    r16 = json.loads(run([kq, "ppl", model, EVAL_TEXT, "--ctx", "64", "--max-tokens", "128",
                          "--storage", "f16", "--json"]).stdout)
    ok &= check(abs(r16["full"]["ppl"] - base["full"]["ppl"]) <= 0.01 * base["full"]["ppl"]
                and r16["full"]["kv_bytes"] * 2 == base["full"]["kv_bytes"],
                f"f16 storage: ppl {r16['full']['ppl']:.4f}, half the kv_bytes")
    # Bytes: SmolLM2-135M has 30 layers, 3 kv heads of 64; F32 stores 4 bytes a value.
    f16_per_token = 2 * 2 * 64 * 3 * 30
    ok &= check(base["full"]["kv_bytes"] == 64 * 30 * 3 * 64 * 2 * 4
                and base["full"]["kv_bytes_per_token"] == 2 * f16_per_token
                and base["full"]["kv_fraction_f16"] == 2.0,
                f"f32 full cache: kv_bytes {base['full']['kv_bytes']} at ctx 64, fraction of F16 "
                f"{base['full']['kv_fraction_f16']} == 2")
    ok &= check(r16["full"]["kv_fraction_f16"] == 1.0,
                f"f16 full cache: fraction of F16 {r16['full']['kv_fraction_f16']} == 1")

    proj = os.path.join(work, "proj-post-0.5.safetensors")
    run([kq, "fit", os.path.join(work, "calib-post.safetensors"), "-o", proj, "--ratio", "0.5"])
    ident = os.path.join(work, "identity.safetensors")
    write_identity(os.path.join(work, "proj-post-1.0.safetensors"), ident)
    r = ppl(ident, proj)
    full, idr, comp = r["full"], r["runs"][0], r["runs"][1]
    fields = ("ppl", "nll", "kld", "top1", "kv_bytes", "kv_bytes_per_token", "kv_fraction_f16",
              "seconds")
    finite = all(isinstance(x[k], (int, float)) and math.isfinite(x[k])
                 for x in (idr, comp) for k in fields)
    finite &= all(isinstance(full[k], (int, float)) and math.isfinite(full[k])
                  for k in fields if k not in ("kld", "top1"))
    ok &= check(finite and full["kld"] is None and full["top1"] is None,
                "ppl --json: every field of every run present and finite (full: kld/top1 null)")
    ok &= check(r["predictions"] == 2 * 63 and r["windows"] == 2 and "2..n" in r["scored"]
                and r["compressed"] == idr,
                f"scored {r['predictions']} tokens ({r['scored']}), 63 of each of 2 windows")
    ok &= check(idr["kld"] == 0.0 and idr["top1"] == 1.0 and idr["ppl"] == full["ppl"],
                f"identity projections from a file: KL {idr['kld']} == 0, top-1 {idr['top1']} == 1, "
                f"ppl {idr['ppl']} == full {full['ppl']}")
    ok &= check(comp["kld"] > 1e-3 and 0 <= comp["top1"] < 1 and comp["ppl"] > full["ppl"],
                f"ratio 0.5: KL {comp['kld']:.4f} > 0, top-1 {comp['top1']:.3f} < 1")
    ok &= check(comp["kv_bytes"] * 2 <= full["kv_bytes"]
                and comp["kv_fraction_f16"] == comp["kv_bytes"] / 64 / f16_per_token <= 1.0,
                f"ratio 0.5: kv_bytes {comp['kv_bytes']} <= half of {full['kv_bytes']}, "
                f"fraction of F16 {comp['kv_fraction_f16']:.4f} = kv_bytes / ctx / {f16_per_token}")
    alone = ppl(proj, extra=["--skip-full"])
    tail = ppl(extra=["--score-from", "33"])
    ok &= check(tail["predictions"] == 2 * (64 - 33) and tail["scored"] == "tokens 34..n of each window",
                f"--score-from 33: {tail['predictions']} scored ({tail['scored']}), 31 of each window")
    p = run([kq, "ppl", model, EVAL_TEXT, "--ctx", "64", "--score-from", "64"], expect=2)
    ok &= check("--score-from" in p.stderr, "ppl --score-from >= --ctx is a usage error")
    ok &= check(alone["full"] is None and alone["compressed"]["kld"] is None
                and alone["compressed"]["top1"] is None and alone["compressed"]["ppl"] == comp["ppl"],
                f"--skip-full: KL/top-1 null, ppl {alone['compressed']['ppl']} as in lockstep")

    g = run([kq, "generate", model, "--prompt", "The capital of France is", "-n", "6"])
    ok &= check(g.stdout.startswith("The capital of France is") and len(g.stdout) > 26
                and "tokens/s" in g.stderr, f"generate: {g.stdout.strip()!r}")

    # --special: control-token strings become single tokens (chat transcripts).
    chat = os.path.join(work, "chat.txt")
    with open(chat, "w") as f:
        f.write("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n" * 4)
    plain = json.loads(run([kq, "ppl", model, chat, "--ctx", "256", "--json"]).stdout)
    spec = json.loads(run([kq, "ppl", model, chat, "--ctx", "256", "--json", "--special"]).stdout)
    # Each of the 16 markers is 1 token with --special and several without.
    ok &= check(spec["tokens"] <= plain["tokens"] - 16,
                f"ppl --special: {spec['tokens']} tokens, plain {plain['tokens']}")
    calib = os.path.join(work, "calib-chat.safetensors")
    for flag, name in (([], "plain"), (["--special"], "special")):
        run([kq, "capture", model, chat, "-o", calib, "--seq-len", "8", "--max-tokens", "0"] + flag)
        T = st_header(calib)["layers.0.k"]["shape"][1]
        ok &= check(T == (spec if flag else plain)["tokens"] // 8 * 8,
                    f"capture {name}: T = {T} whole sequences of the text's tokens")

    # Bad input: clear messages, exit 1 (failure) or 2 (usage), no output file.
    bad = os.path.join(work, "truncated.gguf")
    with open(model, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(os.path.getsize(model) - 4096))
    p = run([kq, "ppl", bad, EVAL_TEXT], expect=1)
    ok &= check("truncated.gguf" in p.stderr and "past the end" in p.stderr,
                f"model cut short: {p.stderr.strip()[:200]}")
    p = run([kq, "ppl", model, "/nonexistent.txt"], expect=1)
    ok &= check("/nonexistent.txt" in p.stderr, f"missing text: {p.stderr.strip()[:120]}")
    p = run([kq, "ppl", model, EVAL_TEXT, "--ctx", "1"], expect=2)
    ok &= check("--ctx" in p.stderr, "ppl --ctx 1 is a usage error")
    out = os.path.join(work, "never.safetensors")
    p = run([kq, "capture", model, CALIB_TEXT, "-o", out, "--seq-len", "100000", "--max-tokens",
             "0"], expect=1)
    ok &= check(not os.path.exists(out) and "sequence" in p.stderr,
                f"capture with too little text writes nothing: {p.stderr.strip()[:120]}")
    for c in ("capture", "ppl", "generate"):
        ok &= check(run([kq, c, "--help"]).stdout.startswith("usage: kqsvd " + c), f"{c} --help")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
