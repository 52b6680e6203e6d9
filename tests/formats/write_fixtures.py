#!/usr/bin/python3
"""Writes ONE random Llama model in every format lorad loads, from the format specs (not from
lorad's C code), for the cross-format loader test.

usage: write_fixtures.py OUTDIR [SEED]

OUTDIR receives:
  truth.f32            every HF-layout tensor as raw little-endian f32, in the order of
                       truth_order.txt (one HF name per line)
  hf_f32/, hf_bf16/, hf_f16/   config.json + model.safetensors (dtype as named)
  hf_sharded/          config.json + model-0000N-of-00003.safetensors + model.safetensors.index.json
  gguf_f32.gguf, gguf_f16.gguf, gguf_bf16.gguf, gguf_q8_0.gguf, gguf_q4_0.gguf
                       GGUF v3, llama architecture, q/k in Meta's interleaved RoPE order as real
                       converters write them; norms stay F32; with an embedded toy vocabulary
  model.bin            llama2.c legacy checkpoint (negative vocab_size: untied classifier)

Quantisation is ours: Q8_0 uses d = amax/127 and Q4_0 d = amax/7 (symmetric), each rounded UP to
the next f16 when f16 rounding made it smaller, so |x - d*q| <= d/2 for every element.
"""
import json
import os
import struct
import sys

import numpy as np

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 64, 96, 2, 4, 2, 300, 128
HEAD_DIM = DIM // HEADS
EPS, THETA = 1e-5, 10000.0


def make_model(seed):
    rng = np.random.default_rng(seed)
    t = {}

    def mat(name, rows, cols):
        t[name] = (rng.standard_normal((rows, cols)) * 0.5).astype(np.float32)

    def vec(name, n):
        t[name] = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    mat("model.embed_tokens.weight", VOCAB, DIM)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        vec(p + "input_layernorm.weight", DIM)
        mat(p + "self_attn.q_proj.weight", HEADS * HEAD_DIM, DIM)
        mat(p + "self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, DIM)
        mat(p + "self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, DIM)
        mat(p + "self_attn.o_proj.weight", DIM, HEADS * HEAD_DIM)
        vec(p + "post_attention_layernorm.weight", DIM)
        mat(p + "mlp.gate_proj.weight", HIDDEN, DIM)
        mat(p + "mlp.up_proj.weight", HIDDEN, DIM)
        mat(p + "mlp.down_proj.weight", DIM, HIDDEN)
    vec("model.norm.weight", DIM)
    mat("lm_head.weight", VOCAB, DIM)
    return t


def hf_to_meta(w, n_heads):
    """llama.cpp's converter: w.reshape(n_heads, 2, hd/2, in).swapaxes(1, 2)."""
    out, inp = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def meta_to_hf(w, n_heads):
    """HF's convert_llama_weights_to_hf: w.view(n_heads, hd/2, 2, in).transpose(1, 2)."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def config_json():
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": DIM, "intermediate_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": EPS,
        "rope_theta": THETA, "rope_scaling": None, "tie_word_embeddings": False,
        "attention_bias": False, "vocab_size": VOCAB, "max_position_embeddings": SEQ,
        "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "float32",
    }


# ---------------------------------------------------------------- safetensors (from the spec)

def bf16_bits(a):
    """Round-to-nearest-even f32 -> bf16 bit patterns."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def encode(a, dtype):
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        return bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        b = encode(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_hf_dir(d, t, dtype, shards=1):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(), f)
    names = list(t)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), t, dtype, {"format": "pt"})
        return
    weight_map = {}
    per = (len(names) + shards - 1) // shards
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: t[n] for n in names[s * per:(s + 1) * per]}
        write_safetensors(os.path.join(d, fn), part, dtype, {"format": "pt"})
        weight_map.update({n: fn for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


# ---------------------------------------------------------------- GGUF v3 (from the spec)

GGML = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14, "BF16": 30}
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def f16_scale_at_least(d):
    h = np.float16(d)
    if float(h) < d:
        h = np.nextafter(h, np.float16(np.inf), dtype=np.float16)
    return h


def quant_q8_0(a):
    out = bytearray()
    for blk in a.reshape(-1, 32).astype(np.float64):
        amax = np.abs(blk).max()
        h = f16_scale_at_least(amax / 127.0)
        d = float(h)
        q = np.clip(np.round(blk / d), -127, 127).astype(np.int8) if d > 0 else np.zeros(32, np.int8)
        out += struct.pack("<e", h) + q.tobytes()
    return bytes(out)


def quant_q4_0(a):
    out = bytearray()
    for blk in a.reshape(-1, 32).astype(np.float64):
        amax = np.abs(blk).max()
        h = f16_scale_at_least(amax / 7.0)
        d = float(h)
        q = (np.clip(np.round(blk / d), -8, 7) + 8).astype(np.uint8) if d > 0 else np.full(32, 8, np.uint8)
        packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
        out += struct.pack("<e", h) + packed.tobytes()
    return bytes(out)


def gguf_encode(a, typ):
    if typ == "F32":
        return a.astype("<f4").tobytes()
    if typ == "F16":
        return a.astype("<f2").tobytes()
    if typ == "BF16":
        return bf16_bits(a).astype("<u2").tobytes()
    if typ == "Q8_0":
        return quant_q8_0(a)
    if typ == "Q4_0":
        return quant_q4_0(a)
    raise ValueError(typ)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, typ, value):
    out = gstr(key) + struct.pack("<I", typ)
    if typ == U32:
        return out + struct.pack("<I", value)
    if typ == I32:
        return out + struct.pack("<i", value)
    if typ == F32:
        return out + struct.pack("<f", value)
    if typ == BOOL:
        return out + struct.pack("<B", 1 if value else 0)
    if typ == STRING:
        return out + gstr(value)
    elem, items = value
    out += struct.pack("<IQ", elem, len(items))
    if elem == STRING:
        return out + b"".join(gstr(s) for s in items)
    fmt = {I32: "<i", F32: "<f", U32: "<I"}[elem]
    return out + b"".join(struct.pack(fmt, x) for x in items)


def toy_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581w{i}" for i in range(VOCAB - len(tokens))]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(VOCAB - 259)]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    return tokens, scores, types


def gguf_tensors(t):
    """(gguf name, HF-layout array, rope heads or 0) in GGUF naming."""
    out = [("token_embd.weight", t["model.embed_tokens.weight"], 0)]
    for l in range(LAYERS):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        out += [
            (g + "attn_norm.weight", t[p + "input_layernorm.weight"], 0),
            (g + "attn_q.weight", t[p + "self_attn.q_proj.weight"], HEADS),
            (g + "attn_k.weight", t[p + "self_attn.k_proj.weight"], KV_HEADS),
            (g + "attn_v.weight", t[p + "self_attn.v_proj.weight"], 0),
            (g + "attn_output.weight", t[p + "self_attn.o_proj.weight"], 0),
            (g + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], 0),
            (g + "ffn_gate.weight", t[p + "mlp.gate_proj.weight"], 0),
            (g + "ffn_up.weight", t[p + "mlp.up_proj.weight"], 0),
            (g + "ffn_down.weight", t[p + "mlp.down_proj.weight"], 0),
        ]
    out += [("output_norm.weight", t["model.norm.weight"], 0), ("output.weight", t["lm_head.weight"], 0)]
    return out


def write_gguf(path, t, typ, alignment=32, encoded=None):
    """encoded: optional {gguf name: (type, bytes)} for tensors given as ready blocks (their
    bytes in the file's Meta row order)."""
    tokens, scores, types = toy_vocab()
    kvs = [
        kv("general.architecture", STRING, "llama"),
        kv("general.alignment", U32, alignment),
        kv("llama.context_length", U32, SEQ),
        kv("llama.embedding_length", U32, DIM),
        kv("llama.block_count", U32, LAYERS),
        kv("llama.feed_forward_length", U32, HIDDEN),
        kv("llama.attention.head_count", U32, HEADS),
        kv("llama.attention.head_count_kv", U32, KV_HEADS),
        kv("llama.attention.layer_norm_rms_epsilon", F32, EPS),
        kv("llama.rope.freq_base", F32, THETA),
        kv("llama.rope.dimension_count", U32, HEAD_DIM),
        kv("tokenizer.ggml.model", STRING, "llama"),
        kv("tokenizer.ggml.pre", STRING, "default"),
        kv("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        kv("tokenizer.ggml.scores", ARRAY, (F32, scores)),
        kv("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        kv("tokenizer.ggml.merges", ARRAY, (STRING, ["\u2581 w", "w 1"])),
        kv("tokenizer.ggml.bos_token_id", U32, 1),
        kv("tokenizer.ggml.eos_token_id", U32, 2),
        kv("tokenizer.ggml.unknown_token_id", U32, 0),
        kv("tokenizer.ggml.add_bos_token", BOOL, True),
        kv("tokenizer.ggml.add_eos_token", BOOL, False),
    ]
    infos, blobs, off = [], [], 0
    for name, a, heads in gguf_tensors(t):
        if heads:
            a = hf_to_meta(a, heads)
        ty = "F32" if a.ndim == 1 else typ  # norms stay F32, as llama.cpp keeps 1-D tensors
        if encoded and name in encoded:
            ty, b = encoded[name]
        else:
            b = gguf_encode(a, ty)
        ne = list(reversed(a.shape))  # innermost first
        infos.append(gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
                     + struct.pack("<IQ", GGML[ty], off))
        blobs.append(b + b"\0" * (-len(b) % alignment))
        off += len(blobs[-1])
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- llama2.c legacy .bin

def write_llama2c(path, t):
    hdr = struct.pack("<7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, -VOCAB, SEQ)
    parts = [t["model.embed_tokens.weight"]]
    L = range(LAYERS)
    lay = lambda suffix, heads=0: [hf_to_meta(t[f"model.layers.{l}.{suffix}"], heads) if heads
                                   else t[f"model.layers.{l}.{suffix}"] for l in L]
    parts += lay("input_layernorm.weight")
    parts += lay("self_attn.q_proj.weight", HEADS)
    parts += lay("self_attn.k_proj.weight", KV_HEADS)
    parts += lay("self_attn.v_proj.weight")
    parts += lay("self_attn.o_proj.weight")
    parts += lay("post_attention_layernorm.weight")
    parts += lay("mlp.gate_proj.weight")  # w1
    parts += lay("mlp.down_proj.weight")  # w2
    parts += lay("mlp.up_proj.weight")    # w3
    parts.append(t["model.norm.weight"])
    # freq_cis_real / freq_cis_imag: (seq_len, head_size/2) each; loaders skip them.
    freqs = 1.0 / THETA ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    ang = np.outer(np.arange(SEQ), freqs)
    parts += [np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)]
    parts.append(t["lm_head.weight"])
    with open(path, "wb") as f:
        f.write(hdr)
        for p in parts:
            f.write(p.astype("<f4").tobytes())


def main():
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1234
    os.makedirs(out, exist_ok=True)
    t = make_model(seed)
    # The two published permutations must be inverses of each other, or the fixtures are wrong.
    for n, h in (("model.layers.0.self_attn.q_proj.weight", HEADS), ("model.layers.0.self_attn.k_proj.weight", KV_HEADS)):
        assert np.array_equal(meta_to_hf(hf_to_meta(t[n], h), h), t[n])
        assert not np.array_equal(hf_to_meta(t[n], h), t[n])
    with open(os.path.join(out, "truth.f32"), "wb") as f:
        for a in t.values():
            f.write(a.astype("<f4").tobytes())
    with open(os.path.join(out, "truth_order.txt"), "w") as f:
        f.write("".join(n + "\n" for n in t))
    write_hf_dir(os.path.join(out, "hf_f32"), t, "F32")
    write_hf_dir(os.path.join(out, "hf_bf16"), t, "BF16")
    write_hf_dir(os.path.join(out, "hf_f16"), t, "F16")
    write_hf_dir(os.path.join(out, "hf_sharded"), t, "F32", shards=3)
    for typ in ("F32", "F16", "BF16", "Q8_0", "Q4_0"):
        write_gguf(os.path.join(out, f"gguf_{typ.lower()}.gguf"), t, typ)
    write_llama2c(os.path.join(out, "model.bin"), t)


if __name__ == "__main__":
    main()
