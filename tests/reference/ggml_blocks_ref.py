#!/usr/bin/python3
"""Our own decoder of GGML's block formats Q8_0, Q4_0, Q4_K and Q6_K, written from the GGUF /
ggml block definitions with numpy over whole arrays of blocks (the engine decodes a 32-value
group at a time in C; engine/weights/quant_blocks.h states the same layouts).

    ggml_blocks_ref.py check DTYPE BLOCKS_FILE DECODED_F32_FILE
        exit 0 when the engine's decoding (float32, in block order) matches, 1 otherwise.

The arithmetic is float32 in the formula's order (scale products first), as the engine's is;
the comparison allows one float32 rounding of each term (an engine may contract a multiply-add),
|a - b| <= 2^-23 * (|d*sc*q| + |dmin*m|), which is far below one quantisation step.
"""
import sys

import numpy as np

F32 = np.float32


def f16(raw):
    """(..., 2) uint8 -> float32 of the little-endian halves."""
    return np.ascontiguousarray(raw).view("<f2").astype(F32)[..., 0]


def q8_0(b):
    b = b.reshape(-1, 34)
    d = f16(b[:, 0:2])
    q = b[:, 2:].view(np.int8).astype(F32)
    return (d[:, None] * q).reshape(-1), np.abs(d[:, None] * q).reshape(-1)


def q4_0(b):
    b = b.reshape(-1, 18)
    d = f16(b[:, 0:2])
    qs = b[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int32) - 8  # values 0..15, then 16..31
    v = d[:, None] * q.astype(F32)
    return v.reshape(-1), np.abs(v).reshape(-1)


def q4_k_scales(sc):
    """(n, 12) uint8 -> (n, 8) 6-bit scales and mins."""
    sc = sc.astype(np.int32)
    s = np.empty((sc.shape[0], 8), np.int32)
    m = np.empty_like(s)
    s[:, :4] = sc[:, 0:4] & 63
    m[:, :4] = sc[:, 4:8] & 63
    s[:, 4:] = (sc[:, 8:12] & 15) | ((sc[:, 0:4] >> 6) << 4)
    m[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return s, m


def q4_k(b):
    b = b.reshape(-1, 144)
    d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
    s, m = q4_k_scales(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 32)  # four chunks of 32 bytes
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32).astype(F32)  # group 2c low, 2c+1 high
    ds = (d[:, None] * s.astype(F32))[:, :, None]
    dm = (dmin[:, None] * m.astype(F32))[:, :, None]
    v = ds * q - dm
    return v.reshape(-1), (np.abs(ds * q) + np.abs(dm)).reshape(-1)


def q6_k(b):
    b = b.reshape(-1, 210)
    ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(F32).reshape(-1, 2, 8)
    d = f16(b[:, 208:210])
    lo = np.stack([ql[:, :, :32] & 15, ql[:, :, 32:] & 15, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2)
    hi = np.stack([(qh >> (2 * i)) & 3 for i in range(4)], axis=2)
    q = (lo.astype(np.int32) | (hi.astype(np.int32) << 4)) - 32  # (n, half, i, 32)
    sc = scales.reshape(-1, 2, 4, 2)  # scale 2i + (l >= 16)
    sc = np.repeat(sc, 16, axis=3)  # (n, half, i, 32)
    v = (d[:, None, None, None] * sc) * q.astype(F32)
    return v.reshape(-1), np.abs(v).reshape(-1)


DECODERS = {"Q8_0": q8_0, "Q4_0": q4_0, "Q4_K": q4_k, "Q6_K": q6_k}


def main(argv):
    if len(argv) != 5 or argv[1] != "check" or argv[2] not in DECODERS:
        print(__doc__, file=sys.stderr)
        return 2
    blocks = np.fromfile(argv[3], dtype=np.uint8)
    got = np.fromfile(argv[4], dtype="<f4")
    want, mag = DECODERS[argv[2]](blocks)
    if got.shape != want.shape:
        print(f"{argv[2]}: engine decoded {got.size} values, the reference {want.size}")
        return 1
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    tol = 2.0 ** -23 * mag.astype(np.float64)
    bad = np.nonzero(~(err <= tol))[0]
    if bad.size:
        i = bad[0]
        print(f"{argv[2]}: {bad.size} of {want.size} values differ; first at {i} (block {i // (want.size // (blocks.size // {'Q8_0': 34, 'Q4_0': 18, 'Q4_K': 144, 'Q6_K': 210}[argv[2]]))}): "
              f"engine {got[i]!r}, reference {want[i]!r}")
        return 1
    print(f"{argv[2]}: {want.size} values agree (max |diff| {err.max():.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
