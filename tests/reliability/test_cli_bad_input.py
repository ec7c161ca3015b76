#!/usr/bin/env python3
"""Bad input end to end through the CLI (issue 8): a table of generated bad
calibration / projection / safetensors files, each given to `kqsvd fit`,
`kqsvd eval` and `kqsvd info`. For every (case, command) that must fail:
exit code in [1, 127] (non-zero, and not a signal: subprocess reports those
as negative codes, and shells as >= 128), a message on stderr naming the
file (and, where the case says so, the tensor / index / field), and no output
file or temporary left in the folder. Cases the project documents as valid
(T < d, all-zero tensors: fit succeeds with finite results, see
tests/cli/test_cli_fit.c) must exit 0 and still never raise a signal.
`info` only checks the file structure, so for semantic cases (NaN, H % Hk,
wrong dtype class...) it may succeed, but must not crash.

usage: test_cli_bad_input.py KQSVD_CLI
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

CLI = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "kqsvd"
FMT = {"F32": ("f", 4), "F16": ("e", 2), "I32": ("i", 4), "F64": ("d", 8)}


def st_bytes(tensors, meta=None, header_override=None, raw_len=None):
    """tensors: list of (name, dtype, shape, values or raw bytes). Packed in order."""
    header, data = {}, b""
    for name, dtype, shape, vals in tensors:
        if isinstance(vals, bytes):
            blob = vals
        else:
            code, _ = FMT[dtype]
            blob = struct.pack("<%d%s" % (len(vals), code), *vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if meta is not None:
        header["__metadata__"] = meta
    h = header_override if header_override is not None else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    n = len(h) if raw_len is None else raw_len
    return struct.pack("<Q", n) + h + data


def rnd(n, seed):
    x, out = seed * 2654435761 % 4294967296 or 1, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2147483648
        out.append(x / 2147483648.0 - 0.5)
    return out


def calib(L=1, H=4, Hk=2, T=16, d=8, dtype="F32", fill=None, skip=(), meta=None, dtypes=None):
    ts = []
    for l in range(L):
        for kind, heads in (("k", Hk), ("q", H), ("v", Hk)):
            name = "layers.%d.%s" % (l, kind)
            if name in skip:
                continue
            vals = rnd(heads * T * d, sum(name.encode()) + 1)
            if fill:
                vals = fill(name, vals)
            ts.append((name, (dtypes or {}).get(name, dtype), [heads, T, d], vals))
    return st_bytes(ts, meta if meta is not None else {"seq_len": str(T)})


def proj(L=1, H=4, Hk=2, d=8, rk=2, rv=2, meta_over=None, shape_over=None, skip=()):
    meta = {"format": "kqsvd-projections", "version": "1", "method": "kq-svd", "n_layers": str(L),
            "n_heads": str(H), "n_kv_heads": str(Hk), "head_dim": str(d), "rope": "post",
            "rope_theta": "10000", "rope_layout": "pairs"}
    meta.update(meta_over or {})
    ts = []
    for l in range(L):
        for kind, r in (("key_down", rk), ("query_down", rk), ("value_down", rv), ("value_up", rv),
                        ("key_spectrum", None), ("value_spectrum", None)):
            name = "layers.%d.%s" % (l, kind)
            if name in skip:
                continue
            shape = [Hk, d] if r is None else [Hk, d, r]
            shape = (shape_over or {}).get(name, shape)
            n = 1
            for s in shape:
                n *= s
            ts.append((name, "F32", shape, [0.5 / (1 + i % 7) for i in range(n)]))
    return st_bytes(ts, meta)


def with_nan(target, index, value):
    def f(name, vals):
        if name == target:
            vals = list(vals)
            vals[index] = value
        return vals
    return f


GOOD = calib()
# Structural damage: every command fails, info included. (name, bytes, words the message must contain)
STRUCTURAL = [
    ("truncated", GOOD[: len(GOOD) // 2], []),
    ("truncated_header", GOOD[:20], []),
    ("empty_file", b"", []),
    ("header_len_past_eof", struct.pack("<Q", 1 << 20) + GOOD[8:], []),
    ("header_len_huge", struct.pack("<Q", (1 << 64) - 1) + GOOD[8:], []),
    ("not_json", st_bytes([], header_override=b"this is not json at all!"), []),
    ("json_array", st_bytes([], header_override=b'[1, 2, 3]'), []),
    ("offsets_overlap", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "layers.0.q": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}).encode()) + b"\0" * 24,
     ["layers.0."]),
    ("offsets_outside", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()) + b"\0" * 8,
     ["layers.0.k"]),
    ("offsets_backwards", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}).encode()) + b"\0" * 16,
     ["layers.0.k"]),
    ("shape_overflows_size_t", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "F32", "shape": [1 << 40, 1 << 40, 1 << 40], "data_offsets": [0, 16]}}).encode())
     + b"\0" * 16, ["layers.0.k"]),
    ("shape_bytes_mismatch", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}).encode()) + b"\0" * 16,
     ["layers.0.k"]),
    ("unknown_dtype", st_bytes([], header_override=json.dumps({
        "layers.0.k": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}).encode()) + b"\0" * 16,
     ["layers.0.k"]),
]
# Semantically bad calibration files: fit and eval fail, info may list them.
SEMANTIC = [
    ("missing_tensor", calib(skip=("layers.0.v",)), ["layers.0.v"]),
    ("missing_layer_q", calib(L=2, skip=("layers.1.q",)), ["layers.1.q"]),
    ("dtype_not_float", calib(dtypes={"layers.0.k": "I32"}, fill=lambda n, v: [int(x * 100) for x in v] if n == "layers.0.k" else v), ["layers.0.k"]),
    ("nan_in_q", calib(fill=with_nan("layers.0.q", 37, float("nan"))), ["layers.0.q", "37"]),
    ("inf_in_v", calib(fill=with_nan("layers.0.v", 5, float("inf"))), ["layers.0.v", "5"]),
    ("neg_inf_in_k", calib(fill=with_nan("layers.0.k", 0, float("-inf"))), ["layers.0.k"]),
    ("heads_not_multiple", calib(H=3, Hk=2), []),
    ("k_v_shapes_differ", st_bytes([("layers.0.k", "F32", [2, 16, 8], rnd(256, 1)),
                                    ("layers.0.q", "F32", [4, 16, 8], rnd(512, 2)),
                                    ("layers.0.v", "F32", [2, 12, 8], rnd(192, 3))], {"seq_len": "16"}),
     ["layers.0."]),
    ("seq_len_not_divisor", calib(meta={"seq_len": "5"}), ["seq_len"]),
    ("rope_meta_unknown", calib(meta={"seq_len": "16", "rope": "sideways"}), ["rope"]),
    # SPEC §2: q, v and wo have k's dtype.
    ("dtypes_differ", calib(dtypes={"layers.0.q": "F16"}), ["layers.0.q", "F16"]),
]
# Documented as valid: fit succeeds (finite results), see tests/cli/test_cli_fit.c.
ACCEPTED = [
    ("t_less_than_d", calib(T=3, d=8, meta={"seq_len": "3"})),
    ("all_zero", calib(fill=lambda n, v: [0.0] * len(v))),
]
# Lenient on purpose: must not crash; exit 0, or a clean error naming the
# file. (Empty now: the one case, mixed dtypes, became a SEMANTIC error.)
LENIENT = []
# Bad projection files given to eval (with a good calibration file) and info.
PROJ_BAD = [
    ("rank_k_above_d", proj(rk=9), ["layers.0.key_down"], True),
    ("rank_v_above_d", proj(rv=12), ["layers.0.value_down"], True),
    ("shape_contradicts_head_dim", proj(shape_over={"layers.0.key_down": [2, 7, 2]}), ["layers.0.key_down"], True),
    ("shape_contradicts_kv_heads", proj(shape_over={"layers.0.value_up": [3, 8, 2]}), ["layers.0.value_up"], True),
    ("meta_heads_not_multiple", proj(meta_over={"n_heads": "3"}), ["n_heads"], True),
    ("meta_more_layers", proj(meta_over={"n_layers": "2"}), ["layers.1"], True),
    ("missing_value_up", proj(skip=("layers.0.value_up",)), ["layers.0.value_up"], True),
    ("query_rank_differs", proj(shape_over={"layers.0.query_down": [2, 8, 3]}), ["layers.0.query_down"], True),
    # A good projection file whose geometry does not match the calibration file: only eval fails.
    ("proj_for_other_model", proj(H=8, Hk=4), [], False),
]

failures = []


def run(args, cwd):
    p = subprocess.run([CLI] + args, cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def leftovers(cwd, keep):
    return sorted(f for f in os.listdir(cwd) if f not in keep)


def check_fail(case, cmd, args, cwd, keep, words, fname=None):
    rc, err = run(args, cwd)
    what = "%s: kqsvd %s" % (case, " ".join(args))
    if rc < 0 or rc >= 128:
        failures.append("%s: killed by a signal (exit %d)" % (what, rc))
    elif rc == 0:
        failures.append("%s: exit 0 on bad input" % what)
    if not err.strip():
        failures.append("%s: no message on stderr" % what)
    for w in [fname or args[1]] + words:
        if w not in err:
            failures.append("%s: message does not mention '%s': %s" % (what, w, err.strip()[:300]))
    left = leftovers(cwd, keep)
    if left:
        failures.append("%s: left files behind: %s" % (what, left))
        for f in left:  # so that later cases start clean
            os.unlink(os.path.join(cwd, f))
    return err


def check_no_signal(case, args, cwd):
    rc, err = run(args, cwd)
    if rc < 0 or rc >= 128:
        failures.append("%s: kqsvd %s: killed by a signal (exit %d)" % (case, " ".join(args), rc))
    return rc


def main():
    n_checks = 0
    with tempfile.TemporaryDirectory(prefix="kq_rel_bad_") as cwd:
        def put(name, blob):
            with open(os.path.join(cwd, name), "wb") as f:
                f.write(blob)
            return name

        put("good.st", GOOD)
        rc, err = run(["fit", "good.st", "-o", "good_proj.st", "--rank-k", "2", "--rank-v", "2"], cwd)
        if rc != 0:
            print("positive control failed: fit on the good file: exit %d: %s" % (rc, err))
            return 1
        keep = {"good.st", "good_proj.st"}
        fit = lambda f: ["fit", f, "-o", "out.st", "--rank-k", "2", "--rank-v", "2"]
        for name, blob, words in STRUCTURAL + SEMANTIC:
            f = put(name + ".st", blob)
            keep.add(f)
            check_fail(name, "fit", fit(f), cwd, keep, words)
            check_fail(name, "eval", ["eval", f, "good_proj.st"], cwd, keep, words)
            n_checks += 2
            if (name, blob, words) in STRUCTURAL:
                check_fail(name, "info", ["info", f], cwd, keep, words)
            else:
                check_no_signal(name, ["info", f], cwd)
            n_checks += 1
        for name, blob in ACCEPTED:
            f = put(name + ".st", blob)
            keep.add(f)
            rc = check_no_signal(name, fit(f), cwd)
            if rc != 0:
                failures.append("%s: documented as valid, but fit exited %d" % (name, rc))
            if os.path.exists(os.path.join(cwd, "out.st")):
                rc = check_no_signal(name, ["eval", f, "out.st"], cwd)
                if rc != 0:
                    failures.append("%s: eval of its own fit exited %d" % (name, rc))
                os.unlink(os.path.join(cwd, "out.st"))
            else:
                failures.append("%s: fit exited 0 but wrote no out.st" % name)
            n_checks += 2
        for name, blob in LENIENT:
            f = put(name + ".st", blob)
            keep.add(f)
            for args in (fit(f), ["eval", f, "good_proj.st"], ["info", f]):
                rc = check_no_signal(name, args, cwd)
                print("lenient %s: kqsvd %s: exit %d" % (name, args[0], rc))
                for extra in leftovers(cwd, keep | {"out.st"} if rc == 0 else keep):
                    failures.append("%s: kqsvd %s left %s behind" % (name, args[0], extra))
                if os.path.exists(os.path.join(cwd, "out.st")):
                    os.unlink(os.path.join(cwd, "out.st"))
                n_checks += 1
        for name, blob, words, info_fails in PROJ_BAD:
            f = put(name + ".st", blob)
            keep.add(f)
            check_fail(name, "eval", ["eval", "good.st", f], cwd, keep, words, fname=f)
            if info_fails:
                check_fail(name, "info", ["info", f], cwd, keep, words)
            else:
                check_no_signal(name, ["info", f], cwd)
            n_checks += 2
    for f in failures:
        print("FAIL " + f)
    print("%d CLI runs on %d bad / %d accepted files, %d failures" % (
        n_checks, len(STRUCTURAL) + len(SEMANTIC) + len(PROJ_BAD), len(ACCEPTED), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
