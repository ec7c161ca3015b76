#!/usr/bin/env python3
"""Independent reference for kqsvd's model code (test only).

Checks, against the C implementation driven through tests/model/model_probe:
  1. dequantisation: random blocks of every supported quantised type, written
     into a GGUF with the `gguf` package, dequantised by gguf.quants.dequantize
     and by our reader;
  2. tokenisation: tricky strings encoded by the HF `tokenizers` library (BPE
     built from the GGUF's own vocab and merges, pre-tokenizer Digits(individual)
     + ByteLevel, as SmolLM2's tokenizer.json declares) and by ours;
  3. logits: a float64 numpy forward pass of SmolLM2-135M (weights dequantised
     by gguf's dequantize) for a short prompt, against our float32 forward
     through the naive attention and through the kqsvd cpu cache.

Exit 0 = pass, 1 = fail, 77 = skipped (Python packages or the model missing).
"""
import argparse
import os
import subprocess
import sys
import tempfile

SKIP = 77

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:  # pragma: no cover
    print(f"SKIP: python packages missing ({e}); see .ci/deps.sh", file=sys.stderr)
    sys.exit(SKIP)

try:
    import tokenizers
except ImportError:
    tokenizers = None

PROMPT = "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts"

TRICKY = [
    "",
    "Hello world",
    "  leading and   internal   spaces  ",
    "tabs\tand\nnewlines\n\n\nand\r\ncrlf",
    "numbers 1234567 and 3.14159, 42nd, 1,000,000",
    "don't you'll we've I'm she'd they're it's O'Neil 'quoted'",
    "Unicode: café naïve Zürich — “quotes” … 東京 日本語 한국어 😀👍🏽 Ελληνικά русский",
    "mixed٣٤ arabic digits ①② and ½",
    "code: if (x != y) { return a->b[i]++; } // comment",
    "    \n    indented\n\t\tblock",
    "trailing spaces   ",
    "!!!??? ... --- ***",
    "a" * 300 + " " + "=" * 200,
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def fetch_model(fetch):
    try:
        out = run(["bash", fetch], timeout=240)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"SKIP: model fetch failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        sys.exit(SKIP)
    return out.stdout.decode().strip().splitlines()[-1]


# ---------------------------------------------------------------- dequantise
def check_dequant(probe, work):
    rng = np.random.default_rng(1234)
    types = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
    path = os.path.join(work, "dequant_blocks.gguf")
    w = gguf.GGUFWriter(path, "test")
    expected = {}
    for name in types:
        qt = gguf.GGMLQuantizationType[name]
        block, nbytes = gguf.GGML_QUANT_SIZES[qt]
        rows, blocks_per_row = 3, (2 if block > 1 else 64)
        good = []
        while len(good) < rows * blocks_per_row:
            raw = rng.integers(0, 256, size=(64, nbytes), dtype=np.uint8)
            with np.errstate(all="ignore"):
                vals = quants.dequantize(raw, qt).reshape(64, block)
            for b in range(64):
                if np.all(np.isfinite(vals[b])) and np.max(np.abs(vals[b])) < 1e30:
                    good.append(raw[b])
        data = np.stack(good[: rows * blocks_per_row]).reshape(rows, blocks_per_row * nbytes)
        expected[name] = quants.dequantize(data, qt).astype(np.float64).reshape(-1)
        w.add_tensor(f"t_{name}", data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ok = True
    for name in types:
        out = os.path.join(work, f"t_{name}.f32")
        run([probe, "tensor", path, f"t_{name}", out])
        got = np.fromfile(out, dtype=np.float32).astype(np.float64)
        exp = expected[name]
        # Same arithmetic up to float32 rounding order: 4 ulp of the value scale.
        tol = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(exp), 1e-30) + 1e-30
        bad = np.abs(got - exp) > np.maximum(tol, 4 * np.finfo(np.float32).eps * np.abs(exp).max())
        status = "ok" if got.shape == exp.shape and not bad.any() else "MISMATCH"
        if status != "ok":
            ok = False
        print(f"dequant {name:5s}: {exp.size} values, max |diff| "
              f"{np.abs(got - exp).max() if got.shape == exp.shape else float('nan'):.3g} {status}")
    return ok


# ---------------------------------------------------------------- tokenizer
def field_strings(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build_hf_tokenizer(r):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(field_strings(r, "tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in field_strings(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    return tok


def c_tokenize(probe, model, text, work):
    p = os.path.join(work, "tok_input.txt")
    with open(p, "wb") as f:
        f.write(text.encode("utf-8"))
    out = run([probe, "tokenize", model, p]).stdout.decode().split()
    return [int(x) for x in out]


def check_tokenizer(probe, model, r, work):
    if tokenizers is None:
        print("tokenizer: SKIP (no `tokenizers` package)", file=sys.stderr)
        return None
    hf = build_hf_tokenizer(r)
    ok = True
    for text in TRICKY + [PROMPT]:
        exp = hf.encode(text).ids
        got = c_tokenize(probe, model, text, work)
        if exp != got:
            ok = False
            print(f"tokenizer MISMATCH on {text[:40]!r}:\n  ref {exp[:40]}\n  got {got[:40]}")
    print(f"tokenizer: {len(TRICKY) + 1} strings {'ok' if ok else 'MISMATCH'}")
    return ok


# ---------------------------------------------------------------- forward pass
def tensor_f64(r, name):
    t = next(t for t in r.tensors if t.name == name)
    return quants.dequantize(t.data, t.tensor_type).astype(np.float64)


def field_value(r, key):
    return r.fields[key].contents()


def reference_logits(r, ids):
    n_layers = int(field_value(r, "llama.block_count"))
    n_head = int(field_value(r, "llama.attention.head_count"))
    n_kv = int(field_value(r, "llama.attention.head_count_kv"))
    theta = float(field_value(r, "llama.rope.freq_base"))
    eps = float(field_value(r, "llama.attention.layer_norm_rms_epsilon"))
    emb = tensor_f64(r, "token_embd.weight")  # [vocab, D]
    D = emb.shape[1]
    d = D // n_head
    T = len(ids)
    names = {t.name for t in r.tensors}
    out_w = tensor_f64(r, "output.weight") if "output.weight" in names else emb

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    # RoPE on adjacent pairs (2j, 2j+1), angle pos * theta^(-2j/d).
    pos = np.arange(T)[:, None]
    ang = pos * theta ** (-2.0 * np.arange(d // 2)[None, :] / d)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # [T, heads, d]
        a, b = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        y[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return y

    x = emb[ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layers):
        def W(s):
            return tensor_f64(r, f"blk.{l}.{s}")
        h = rms(x, W("attn_norm.weight"))
        q = rope((h @ W("attn_q.weight").T).reshape(T, n_head, d))
        k = rope((h @ W("attn_k.weight").T).reshape(T, n_kv, d))
        v = (h @ W("attn_v.weight").T).reshape(T, n_kv, d)
        o = np.empty((T, n_head, d))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(d) + mask
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            o[:, hh, :] = p @ v[:, kv, :]
        x = x + o.reshape(T, D) @ W("attn_output.weight").T
        h = rms(x, W("ffn_norm.weight"))
        g = h @ W("ffn_gate.weight").T
        u = h @ W("ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ W("ffn_down.weight").T
    return rms(x, tensor_f64(r, "output_norm.weight")) @ out_w.T


def check_logits(probe, model, r, ids, work):
    ref = reference_logits(r, ids)
    out = os.path.join(work, "logits.f32")
    run([probe, "logits", model, out] + [str(i) for i in ids])
    got = np.fromfile(out, dtype=np.float32).astype(np.float64).reshape(2, len(ids), -1)
    # Tolerance: our pass is float32 (products with 8-way partial sums over
    # rows of 576/1536, float32 residual stream) against float64 here, on the
    # same dequantised weights. A float32 dot of length K carries a rounding
    # error of roughly sqrt(K)*2^-24 of |w||x|; through 30 residual layers and
    # the output product that stays around 1e-6 of the logit scale (measured:
    # 1.1e-6). A wrong RoPE layout, a transposed weight, a bad dequantiser or
    # a wrong GQA head mapping moves logits by O(1). So: max |diff| <= 1e-4 *
    # max|logit| (about 100x the measured error) and the greedy token must
    # agree at every position.
    scale = np.abs(ref).max()
    ok = True
    for label, g in (("naive attention", got[0]), ("kqsvd cpu cache", got[1])):
        diff = np.abs(g - ref).max()
        same_argmax = np.array_equal(g.argmax(-1), ref.argmax(-1))
        good = diff <= 1e-4 * scale and same_argmax
        ok = ok and good
        print(f"logits via {label}: {len(ids)} tokens, max|logit| {scale:.3f}, max |diff| "
              f"{diff:.3g} (rel {diff / scale:.2e}), argmax equal {same_argmax}: "
              f"{'ok' if good else 'MISMATCH'}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", required=True)
    ap.add_argument("--fetch", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--model", default=None, help="use this GGUF instead of fetching")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kq_model_ref_", dir=a.workdir)
    ok = check_dequant(a.probe, work)
    model = a.model or fetch_model(a.fetch)
    r = gguf.GGUFReader(model)
    tok_ok = check_tokenizer(a.probe, model, r, work)
    if tok_ok is not None:
        ok = ok and tok_ok
    if tokenizers is not None:
        ids = build_hf_tokenizer(r).encode(PROMPT).ids
    else:
        ids = c_tokenize(a.probe, model, PROMPT, work)
    ok = check_logits(a.probe, model, r, ids, work) and ok
    if tok_ok is None and ok:
        print("SKIP: tokenizer reference unavailable", file=sys.stderr)
        sys.exit(SKIP)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
