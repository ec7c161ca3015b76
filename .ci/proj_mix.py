#!/usr/bin/env python3
"""proj_mix.py BASE FROM OUT SIDE LAYER: writes OUT, the projection file BASE
with the tensors of one side (keys: key_down, query_down, key_spectrum,
key_segments; values: value_down, value_up, value_spectrum, value_segments)
of one layer taken from FROM. With BASE a full-rank float fit this gives a
cache that compresses only that side of that layer, as FROM does
(.ci/sensitivity.sh). LAYER "all" takes that side of every layer (e.g. keys
of one --bytes fit with values of another: a different key/value split of
the bytes). Both files must have the same layout and shapes."""
import json
import struct
import sys

SIDES = {
    "keys": ("key_down", "query_down", "key_spectrum", "key_segments"),
    "values": ("value_down", "value_up", "value_spectrum", "value_segments"),
}


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(blob[8 : 8 + n])
    meta = head.pop("__metadata__", None)
    base = 8 + n
    tensors = {
        k: (v["dtype"], v["shape"], blob[base + v["data_offsets"][0] : base + v["data_offsets"][1]])
        for k, v in head.items()
    }
    return tensors, meta


def write(path, tensors, meta):
    head, blobs, off = {}, [], 0
    if meta is not None:
        head["__metadata__"] = meta
    for k in sorted(tensors):
        dtype, shape, data = tensors[k]
        head[k] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    if len(sys.argv) != 6 or sys.argv[4] not in SIDES:
        sys.exit(__doc__)
    base, base_meta = read(sys.argv[1])
    src, src_meta = read(sys.argv[2])
    for key in ("layout", "n_layers", "n_kv_heads", "head_dim", "rope"):
        if (base_meta or {}).get(key) != (src_meta or {}).get(key):
            sys.exit("proj_mix.py: %s differs between %s and %s" % (key, sys.argv[1], sys.argv[2]))
    if sys.argv[5] == "all":
        layers = sorted({int(k.split(".")[1]) for k in base if k.startswith("layers.")})
    else:
        layers = [int(sys.argv[5])]
    for layer in layers:
        for name in SIDES[sys.argv[4]]:
            k = "layers.%d.%s" % (layer, name)
            base.pop(k, None)
            if k in src:
                base[k] = src[k]
    write(sys.argv[3], base, base_meta)


if __name__ == "__main__":
    main()
