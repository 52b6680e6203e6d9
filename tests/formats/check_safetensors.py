#!/usr/bin/python3
"""Independent safetensors parser (written from the format spec) used to check lorad's writer.

usage: check_safetensors.py FILE
Parses FILE, checks the spec's structural rules (8-byte LE header length, JSON object header,
known dtypes, shape x size == byte length, tensors tiling the data section), then checks the
values test_safetensors.c wrote: a = F32 [3,4] i*0.25-1; b = BF16 [5] i+0.5; c = I32 [2,2,2]
7i-5; s = F32 scalar 42; e = F16 [0]; metadata {"format":"pt","note":"h\u00e9llo"}.
Exits non-zero with a message on any mismatch."""
import json
import struct
import sys

import numpy as np

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def fail(msg):
    print("check_safetensors: " + msg)
    sys.exit(1)


def parse(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        fail("header length beyond the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        fail("header is not an object")
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    spans, out = [], {}
    for name, info in header.items():
        dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        if int(np.prod(shape, dtype=np.int64)) * SIZES[dt] != e - b:
            fail(f"{name}: shape/dtype disagree with data_offsets")
        spans.append((b, e))
        buf = data[b:e]
        if dt == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, {"F32": "<f4", "F16": "<f2", "I32": "<i4"}[dt])
        out[name] = (dt, shape, a.reshape(shape))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            fail("data section has a gap or an overlap")
        pos = e
    if pos != len(data):
        fail("data section has trailing bytes")
    return meta, out


def main():
    meta, t = parse(sys.argv[1])
    if meta != {"format": "pt", "note": "h\u00e9llo"}:
        fail(f"metadata {meta}")
    exp = {
        "a": ("F32", [3, 4], np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25 - 1),
        "b": ("BF16", [5], np.arange(5, dtype=np.float32) + 0.5),
        "c": ("I32", [2, 2, 2], (np.arange(8) * 7 - 5).reshape(2, 2, 2)),
        "s": ("F32", [], np.float32(42)),
        "e": ("F16", [0], np.zeros(0)),
    }
    if set(t) != set(exp):
        fail(f"tensor names {sorted(t)}")
    for name, (dt, shape, val) in exp.items():
        gdt, gshape, gval = t[name]
        if gdt != dt or gshape != shape or not np.array_equal(gval, val):
            fail(f"tensor {name}: got {gdt} {gshape} {gval}")
    print("ok")


if __name__ == "__main__":
    main()
