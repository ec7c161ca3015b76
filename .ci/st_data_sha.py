#!/usr/bin/env python3
"""Prints the SHA-256 of a safetensors file's tensor data (the bytes after
its JSON header), so that a file's identity ignores its metadata (model
identity, tool versions): the main job keys measured sensitivities by it."""
import hashlib
import struct
import sys

with open(sys.argv[1], "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    f.seek(8 + header_len)
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
