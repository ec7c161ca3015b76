#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_model and fuzz_tokenizer:

  seeds_model/tiny_llama.gguf   a TINY valid llama model (2 layers, n_embd 16,
      2 heads, 1 kv head, n_ff 32, F32 weights, blk.0.ffn_down in Q8_0 and
      blk.1.ffn_down in Q4_1) with a GPT-2 byte-level tokenizer (the 256 byte
      tokens of the GPT-2 byte alphabet, a few merges, three control tokens
      and one user-defined token, bos/eos, token_type, model "gpt2", pre
      "smollm"). fuzz_tokenizer loads its tokenizer from this file.
  seeds_model/*.gguf            variants: untied F16 output, and damaged
      copies that each break one rule the loader must check (huge
      block_count, NaN weights, a missing tensor, a wrong shape, ...).
  seeds_tokenizer/*             texts for fuzz_tokenizer: the first byte is
      the token limit (see fuzz_tokenizer.c), the rest is the text.

The GGUF container is written by make_gguf_seeds.py's build(). Every file is
small (< 64 KiB) and the output is deterministic; run again after changing it:
    python3 tests/fuzz/make_model_seeds.py tests/fuzz
"""
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gguf_seeds import ARR, BOOL, F32, I32, STR, U32, build, kv  # noqa: E402

GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
N_LAYERS, N_EMBD, N_HEADS, N_KV_HEADS, N_FF = 2, 16, 2, 1, 32
HEAD_DIM = N_EMBD // N_HEADS
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def byte_alphabet():
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for
    themselves, the other 68 take U+0100.. in byte order."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def vocab():
    """(tokens, token types, merges): specials first, then the 256 byte
    tokens in byte order, then one token per merge."""
    alpha = byte_alphabet()
    specials = [("<|endoftext|>", TOKEN_CONTROL), ("<|im_start|>", TOKEN_CONTROL),
                ("<|im_end|>", TOKEN_CONTROL), ("<tool>", TOKEN_USER_DEFINED)]
    tokens = [s for s, _ in specials] + [alpha[b] for b in range(256)]
    types = [t for _, t in specials] + [TOKEN_NORMAL] * 256

    def enc(text):
        return "".join(alpha[b] for b in text.encode())

    # Pairs of byte-level strings, in rank order; later ones build on earlier.
    pairs = [(enc(" "), enc("t")), (enc("h"), enc("e")), (enc(" t"), enc("he")),
             (enc("i"), enc("n")), (enc(" "), enc(" ")), (enc("  "), enc("  ")),
             (enc("\n"), enc("\n")), (enc("e"), enc("r")), (enc(" "), enc("a")),
             (enc("é")[0], enc("é")[1]), (enc("in"), enc("g")), (enc("n"), enc("d")),
             (enc(" a"), enc("nd"))]
    merges = []
    for a, b in pairs:
        merges.append(a + " " + b)
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(TOKEN_NORMAL)
    return tokens, types, merges


class Rng:
    """A fixed linear congruential generator: the weights never change
    between runs or Python versions."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return ((self.s >> 11) / float(1 << 53)) * 2.0 - 1.0


def f32_tensor(rng, n, scale):
    return b"".join(struct.pack("<f", scale * rng.uniform()) for _ in range(n))


def f16_tensor(rng, n, scale):
    return b"".join(struct.pack("<e", scale * rng.uniform()) for _ in range(n))


def q8_0_tensor(rng, rows, cols):
    out = b""
    for _ in range(rows * cols // 32):
        out += struct.pack("<e", 0.004) + bytes((int(127 * rng.uniform())) & 0xFF for _ in range(32))
    return out


def q4_1_tensor(rng, rows, cols):
    out = b""
    for _ in range(rows * cols // 32):
        out += struct.pack("<ee", 0.02, -0.15) + bytes(int(8 + 7.9 * rng.uniform()) & 0xFF
                                                     for _ in range(16))
    return out


def ones(n):
    return struct.pack("<%df" % n, *([1.0] * n))


def model_tensors(n_vocab, untied=False):
    """[(name, ne, type, payload)] of the tiny model; ne is ggml order
    (columns first)."""
    rng = Rng(20261205)
    kvd = N_KV_HEADS * HEAD_DIM
    out = [("token_embd.weight", [N_EMBD, n_vocab], GGML_F32, f32_tensor(rng, N_EMBD * n_vocab, 0.5)),
           ("output_norm.weight", [N_EMBD], GGML_F32, ones(N_EMBD))]
    if untied:
        out.append(("output.weight", [N_EMBD, n_vocab], GGML_F16, f16_tensor(rng, N_EMBD * n_vocab, 0.5)))
    s = 1.0 / math.sqrt(N_EMBD)
    for layer in range(N_LAYERS):
        p = "blk.%d." % layer
        down = (GGML_Q8_0, q8_0_tensor(rng, N_EMBD, N_FF)) if layer == 0 else \
            (GGML_Q4_1, q4_1_tensor(rng, N_EMBD, N_FF))
        out += [(p + "attn_norm.weight", [N_EMBD], GGML_F32, ones(N_EMBD)),
                (p + "ffn_norm.weight", [N_EMBD], GGML_F32, ones(N_EMBD)),
                (p + "attn_q.weight", [N_EMBD, N_EMBD], GGML_F32, f32_tensor(rng, N_EMBD * N_EMBD, s)),
                (p + "attn_k.weight", [N_EMBD, kvd], GGML_F32, f32_tensor(rng, N_EMBD * kvd, s)),
                (p + "attn_v.weight", [N_EMBD, kvd], GGML_F32, f32_tensor(rng, N_EMBD * kvd, s)),
                (p + "attn_output.weight", [N_EMBD, N_EMBD], GGML_F32,
                 f32_tensor(rng, N_EMBD * N_EMBD, s)),
                (p + "ffn_gate.weight", [N_EMBD, N_FF], GGML_F32, f32_tensor(rng, N_EMBD * N_FF, s)),
                (p + "ffn_up.weight", [N_EMBD, N_FF], GGML_F32, f32_tensor(rng, N_EMBD * N_FF, s)),
                (p + "ffn_down.weight", [N_FF, N_EMBD]) + down]
    return out


def model_meta(tokens, types, merges, **override):
    """The metadata; override replaces a key's (type, value), None drops it."""
    items = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "kqsvd fuzz tiny llama"),
        ("llama.block_count", U32, N_LAYERS),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, N_EMBD),
        ("llama.feed_forward_length", U32, N_FF),
        ("llama.attention.head_count", U32, N_HEADS),
        ("llama.attention.head_count_kv", U32, N_KV_HEADS),
        ("llama.rope.dimension_count", U32, HEAD_DIM),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.merges", ARR, (STR, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
    ]
    out = []
    for key, t, v in items:
        if key in override:
            if override[key] is None:
                continue
            t, v = override[key]
        out.append(kv(key, t, v))
    return out


def gguf(meta, tensors):
    return build(meta, [(name, ne, t, payload, None) for name, ne, t, payload in tensors])


def with_nan(payload, index):
    return payload[:4 * index] + struct.pack("<f", float("nan")) + payload[4 * index + 4:]


def model_seeds():
    tokens, types, merges = vocab()
    n_vocab = len(tokens)
    meta = model_meta(tokens, types, merges)
    tensors = model_tensors(n_vocab)

    def replace(name, **fields):
        out = []
        for t in tensors:
            if t[0] == name:
                t = (fields.get("name", t[0]), fields.get("ne", t[1]), fields.get("type", t[2]),
                     fields.get("payload", t[3]))
            out.append(t)
        return out

    seeds = {}
    seeds["tiny_llama"] = gguf(meta, tensors)
    seeds["untied_f16_output"] = gguf(meta, model_tensors(n_vocab, untied=True))
    seeds["block_count_huge"] = gguf(model_meta(tokens, types, merges,
                                                **{"llama.block_count": (U32, 1 << 20)}), tensors)
    seeds["block_count_three"] = gguf(model_meta(tokens, types, merges,
                                                 **{"llama.block_count": (U32, 3)}), tensors)
    q = [t for t in tensors if t[0] == "blk.1.attn_q.weight"][0]
    seeds["nan_weight"] = gguf(meta, replace(q[0], payload=with_nan(q[3], 37)))
    down = [t for t in tensors if t[0] == "blk.0.ffn_down.weight"][0]
    nan_scale = down[3][:34 * 5] + struct.pack("<e", float("nan")) + down[3][34 * 5 + 2:]
    seeds["nan_q8_0_scale"] = gguf(meta, replace(down[0], payload=nan_scale))
    seeds["missing_tensor"] = gguf(meta, [t for t in tensors if t[0] != "blk.1.ffn_up.weight"])
    k = [t for t in tensors if t[0] == "blk.0.attn_k.weight"][0]
    seeds["wrong_shape"] = gguf(meta, replace(k[0], ne=[HEAD_DIM, N_EMBD]))
    seeds["embd_wrong_vocab"] = gguf(meta, replace("token_embd.weight", ne=[N_EMBD * 2, n_vocab // 2]))
    seeds["kv_heads_not_dividing"] = gguf(
        model_meta(tokens, types, merges, **{"llama.attention.head_count_kv": (U32, 3)}), tensors)
    seeds["merge_unknown_token"] = gguf(
        model_meta(tokens, types, merges + ["zz qq"]), tensors)
    seeds["bos_outside_vocab"] = gguf(
        model_meta(tokens, types, merges, **{"tokenizer.ggml.bos_token_id": (U32, n_vocab)}), tensors)
    seeds["token_type_short"] = gguf(
        model_meta(tokens, types, merges, **{"tokenizer.ggml.token_type": (ARR, (I32, types[:-1]))}),
        tensors)
    seeds["no_merges"] = gguf(model_meta(tokens, types, merges, **{"tokenizer.ggml.merges": None}),
                              tensors)
    seeds["tokenizer_llama"] = gguf(
        model_meta(tokens, types, merges, **{"tokenizer.ggml.model": (STR, "llama")}), tensors)
    seeds["rms_eps_zero"] = gguf(
        model_meta(tokens, types, merges, **{"llama.attention.layer_norm_rms_epsilon": (F32, 0.0)}),
        tensors)
    seeds["truncated"] = seeds["tiny_llama"][:len(seeds["tiny_llama"]) - 700]
    return seeds


def tokenizer_seeds():
    """Name -> bytes: limit byte (0: no limit), then the text."""
    return {
        "ascii": b"\x00Hello there, the thing and the other thing is here.",
        "ascii_limit3": b"\x03the theater, the end",
        "contractions": b"\x00I'm sure they'll say it's what we'd've done. DON'T",
        "utf8_multibyte": "\x00café, naïve, Ünïcödé — 日本語のテキスト, emoji 🙂👍🏽".encode(),
        "digits": b"\x00In 2024 we paid 1,234.56 for 7 items (x10^3)",
        "digits_limit5": b"\x05123456789",
        "whitespace_runs": b"\x00a  b   c\t\t d\n\n\n  e \r\n   \n",
        "control_tokens": b"\x00<|im_start|>user\nhi<|im_end|><|endoftext|><tool>x</tool>",
        "control_tokens_limit2": b"\x02<|im_start|><|im_end|><|im_start|>",
        "one_piece_limit1": b"\x01xyz",
        "invalid_utf8": b"\x00ok \xff\xfe \xc3 \xe2\x82 \xed\xa0\x80 end",
        "empty_text": b"\x00",
    }


def main(out_root):
    for sub, seeds, ext in (("seeds_model", model_seeds(), ".gguf"),
                            ("seeds_tokenizer", tokenizer_seeds(), ".txt")):
        out_dir = os.path.join(out_root, sub)
        os.makedirs(out_dir, exist_ok=True)
        for name, blob in seeds.items():
            if len(blob) >= 64 * 1024:
                raise SystemExit("seed %s is %d bytes (>= 64 KiB)" % (name, len(blob)))
            with open(os.path.join(out_dir, name + ext), "wb") as f:
                f.write(blob)
        print("wrote %d seeds to %s" % (len(seeds), out_dir))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
