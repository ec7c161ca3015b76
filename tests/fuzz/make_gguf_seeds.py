#!/usr/bin/env python3
"""Writes the GGUF fuzz seed corpus (tests/fuzz/seeds_gguf): one small valid
file per feature (v2/v3, every value type, string arrays, F32/F16/BF16/Q8_0/
Q4_0 tensors, custom alignment) and mutants that each break one rule the
reader must check (truncation, counts, string lengths, dims, types, offsets,
alignment). Deterministic; run again after changing it:
    python3 tests/fuzz/make_gguf_seeds.py tests/fuzz/seeds_gguf
"""
import os
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
           U64: "Q", I64: "q", F64: "d"}
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(value(et, x) for x in items)
    return struct.pack("<" + fmt[t], v)


def kv(key, t, v):
    return gstr(key) + struct.pack("<I", t) + value(t, v)


def build(kvs, tensors, version=3, alignment=32, tensor_count=None, kv_count=None):
    """tensors: (name, dims, type, payload bytes, offset or None)."""
    head = b"GGUF" + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if tensor_count is None else tensor_count,
                        len(kvs) if kv_count is None else kv_count)
    head += b"".join(kvs)
    data = b""
    infos = b""
    for name, dims, ttype, payload, off in tensors:
        if off is None:
            data += b"\0" * (-len(data) % alignment)
            off = len(data)
            data += payload
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, off)
    out = head + infos
    out += b"\0" * (-len(out) % alignment)
    return out + data


def f32s(n):
    return b"".join(struct.pack("<f", (i % 7) - 3.0) for i in range(n))


def f16s(n):
    return b"".join(struct.pack("<e", (i % 5) * 0.5) for i in range(n))


def q8_0(blocks):
    return b"".join(struct.pack("<e", 0.25) + bytes((i * 7) & 0xFF for i in range(32)) for _ in range(blocks))


def q4_0(blocks):
    return b"".join(struct.pack("<e", 0.5) + bytes(range(16)) for _ in range(blocks))


def bf16s(n):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", i * 0.25))[0])[2:] for i in range(n))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    meta = [
        kv("general.architecture", STR, "llama"),
        kv("llama.block_count", U32, 1),
        kv("llama.rope.freq_base", F32, 10000.0),
        kv("general.flag", BOOL, True),
        kv("small.u8", U8, 7), kv("small.i8", I8, -7), kv("small.u16", U16, 700),
        kv("small.i16", I16, -700), kv("small.i32", I32, -70000), kv("big.u64", U64, 1 << 40),
        kv("big.i64", I64, -(1 << 40)), kv("big.f64", F64, 0.125),
        kv("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "<s>", ""])),
        kv("tokenizer.ggml.scores", ARR, (F32, [0.0, -1.0, 2.5, 3.0])),
        kv("tokenizer.ggml.token_type", ARR, (I32, [1, 1, 3, 1])),
    ]
    tensors = [
        ("token_embd.weight", [8, 4], 0, f32s(32), None),
        ("blk.0.attn_q.weight", [32, 2], 1, f16s(64), None),
        ("blk.0.attn_k.weight", [64, 1], 8, q8_0(2), None),
        ("blk.0.attn_v.weight", [32, 2], 2, q4_0(2), None),
        ("output_norm.weight", [16], 30, bf16s(16), None),
    ]
    seeds = {}
    seeds["valid_v3"] = build(meta, tensors)
    seeds["valid_v2"] = build(meta[:4], tensors[:2], version=2)
    seeds["valid_align64"] = build(meta[:2] + [kv("general.alignment", U32, 64)], tensors, alignment=64)
    seeds["valid_empty"] = build([], [])
    seeds["valid_kv_only"] = build(meta, [])
    good = seeds["valid_v3"]
    seeds["truncated_half"] = good[: len(good) // 2]
    seeds["truncated_data"] = good[:-5]
    seeds["truncated_header"] = good[:13]
    seeds["bad_magic"] = b"GGUG" + good[4:]
    seeds["version_1"] = build(meta[:2], tensors[:1], version=1)
    seeds["version_99"] = build(meta[:2], tensors[:1], version=99)
    seeds["tensor_count_huge"] = build(meta[:2], tensors[:1], tensor_count=(1 << 62))
    seeds["kv_count_huge"] = build(meta[:2], tensors[:1], kv_count=(1 << 61) + 3)
    seeds["kv_count_past_eof"] = build(meta[:2], tensors[:1], kv_count=40)
    seeds["string_len_past_eof"] = build([gstr("k")[:8] + struct.pack("<Q", 1 << 40)], [])
    seeds["string_len_huge"] = build([struct.pack("<Q", (1 << 64) - 2) + b"key"], [])
    seeds["value_type_bad"] = build([gstr("k") + struct.pack("<I", 13) + b"\0" * 8], [])
    seeds["array_count_huge"] = build([gstr("a") + struct.pack("<IIQ", ARR, U32, 1 << 61)], [])
    seeds["array_of_arrays"] = build([gstr("a") + struct.pack("<IIQ", ARR, ARR, 1) + struct.pack("<IQ", U8, 1) + b"\1"], [])
    seeds["array_type_bad"] = build([gstr("a") + struct.pack("<IIQ", ARR, 77, 2) + b"\0" * 8], [])
    seeds["bool_not_01"] = build([gstr("b") + struct.pack("<IB", BOOL, 2)], [])
    seeds["duplicate_key"] = build(meta[:2] + meta[1:2], tensors[:1])
    seeds["duplicate_tensor"] = build(meta[:1], [tensors[0], tensors[0][:4] + (256,)])
    seeds["alignment_zero"] = build([kv("general.alignment", U32, 0)], tensors[:1])
    seeds["alignment_not_pow2"] = build([kv("general.alignment", U32, 24)], tensors[:1], alignment=24)
    seeds["alignment_wrong_type"] = build([kv("general.alignment", STR, "32")], tensors[:1])
    seeds["n_dims_zero"] = build([], [("t", [], 0, b"", None)])
    seeds["n_dims_5"] = build([], [("t", [1, 1, 1, 1, 4], 0, f32s(4), None)])
    seeds["dim_zero"] = build([], [("t", [0, 4], 0, b"", None)])
    seeds["dims_overflow"] = build([], [("t", [1 << 32, 1 << 32, 1 << 8], 0, f32s(8), None)])
    seeds["dims_overflow_bytes"] = build([], [("t", [1 << 61, 1], 0, f32s(8), None)])
    seeds["type_unknown"] = build([], [("t", [32], 4, q4_0(1), None)])
    seeds["type_huge"] = build([], [("t", [32], 0xFFFFFFFF, q4_0(1), None)])
    seeds["type_q2k_not_dequant"] = build([], [("t", [256], 10, b"\0" * 84, None)])
    seeds["block_not_multiple"] = build([], [("t", [33], 8, q8_0(2), None)])
    seeds["offset_past_eof"] = build([], [("t", [8], 0, f32s(8), 1 << 20)])
    seeds["offset_misaligned"] = build([], [("t", [8], 0, f32s(8), 4), ("u", [1], 0, f32s(9), 0)])
    seeds["offset_overflow"] = build([], [("t", [8], 0, f32s(8), (1 << 64) - 32)])
    seeds["tensors_overlap"] = build([], [("t", [8], 0, f32s(8), 0), ("u", [8], 0, f32s(8), 0)])
    seeds["name_too_long"] = build([], [("n" * 80, [8], 0, f32s(8), None)])
    seeds["name_empty"] = build([], [("", [8], 0, f32s(8), None)])
    seeds["name_with_nul"] = build([], [("a\0b", [8], 0, f32s(8), None)])
    seeds["key_empty"] = build([kv("", U32, 1)], [])
    nan_f32 = struct.pack("<f", float("nan")) + f32s(7)
    seeds["tensor_nan"] = build([], [("t", [8], 0, nan_f32, None)])
    for name, blob in seeds.items():
        with open(os.path.join(out_dir, name + ".gguf"), "wb") as f:
            f.write(blob)
    print(f"wrote {len(seeds)} seeds to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "seeds_gguf"))
