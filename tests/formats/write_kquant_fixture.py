#!/usr/bin/python3
"""Writes a GGUF whose matrices are Q4_K and Q6_K as llama.cpp's Q4_K_M mix has them (attn_v,
ffn_down and output in Q6_K, the other matrices Q4_K; norms F32), with its truth, for the loader
and training tests of quantised bases.

usage: write_kquant_fixture.py OUTDIR [SEED]

The blocks are random (random quant bytes, random small f16 scales) and the truth is what our
numpy decoder (tests/reference/ggml_blocks_ref.py, written from the format definitions) makes of
them, moved from Meta's to HF's RoPE row order for q/k. OUTDIR gets gguf_q4_k_m.gguf,
truth.f32 and truth_order.txt as write_fixtures.py writes them. K-quant rows are whole 256-value
super-blocks, so this model is wider than write_fixtures.py's: dim 256, hidden 512.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import write_fixtures as wf  # noqa: E402
from ggml_blocks_ref import DECODERS  # noqa: E402

# write_fixtures' writers read the model's shape from its module constants.
wf.DIM, wf.HIDDEN, wf.LAYERS, wf.HEADS, wf.KV_HEADS, wf.VOCAB, wf.SEQ = 256, 512, 2, 4, 2, 300, 128
wf.HEAD_DIM = wf.DIM // wf.HEADS
BLOCK = {"Q4_K": 144, "Q6_K": 210}
Q6_K_TENSORS = ("attn_v.weight", "ffn_down.weight", "output.weight")


# f16 super-block scales that keep weights near 1/sqrt(dim), so the model's activations stay sane
# (a Q4_K value is d*sc*q - dmin*m with sc, m < 64 and q < 16; a Q6_K one d*scale*(q-32), |scale|
# < 128): the training test needs a base whose loss is finite and moves.
SCALE_RANGE = {"Q4_K": (1e-4, 4e-4), "Q6_K": (2e-5, 8e-5)}


def random_blocks(rng, typ, rows, cols):
    nb = rows * cols // 256
    b = rng.integers(0, 256, size=(nb, BLOCK[typ]), dtype=np.uint8)
    lo, hi = SCALE_RANGE[typ]
    scale = lambda: (lo + (hi - lo) * rng.random(nb)).astype(np.float16).view(np.uint8).reshape(nb, 2)  # noqa: E731
    if typ == "Q4_K":
        b[:, 0:2], b[:, 2:4] = scale(), scale()
    else:
        b[:, 208:210] = scale()
    return b


def main():
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 77
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = wf.make_model(seed)  # shapes and norms; the matrices are replaced by decoded blocks
    encoded = {}
    for name, a, heads in wf.gguf_tensors(t):
        if a.ndim == 1:
            continue
        typ = "Q6_K" if name.endswith(Q6_K_TENSORS) else "Q4_K"
        blocks = random_blocks(rng, typ, *a.shape)
        encoded[name] = (typ, blocks.tobytes())
        values, _ = DECODERS[typ](blocks)
        stored = values.reshape(a.shape)  # rows as the file holds them (Meta order for q/k)
        hf = wf.meta_to_hf(stored, heads) if heads else stored
        hf_name = next(n for n, arr in t.items() if arr is a)
        t[hf_name] = hf.astype(np.float32)
    with open(os.path.join(out, "truth.f32"), "wb") as f:
        for a in t.values():
            f.write(a.astype("<f4").tobytes())
    with open(os.path.join(out, "truth_order.txt"), "w") as f:
        f.write("".join(n + "\n" for n in t))
    wf.write_gguf(os.path.join(out, "gguf_q4_k_m.gguf"), t, "Q4_K", encoded=encoded)


if __name__ == "__main__":
    main()
