#!/usr/bin/python3
"""Our reference for LoRA adapters and merged models, written from PEFT's documented semantics
and the safetensors/GGUF specs, not from lorad's C code.

PEFT LoRA (LoraLayer): a module W (out, in) gets lora_A.weight (r, in) and lora_B.weight (out, r);
merging adds delta = scaling * (B @ A) with scaling = lora_alpha / r, or lora_alpha / sqrt(r) when
use_rslora is set. Tensors are saved as "base_model.model.<module>.lora_{A,B}.weight".
With use_dora (DoRA, Liu et al. 2024) the module also has "<module>.lora_magnitude_vector" (out),
1-D and without ".weight" in the saved file, and the merged weight is m * V / ||V|| row by row,
V = W + delta (the DoRA paper's eq. 5; PEFT's merge scales W + delta by m / its row norms).

lorad's merge contract (docs in engine/adapter/merge.h): the sum W + delta is formed in f32 and rounded
ONCE to the base dtype (BF16: round to nearest even). PEFT itself, on a bf16 base, adds a bf16
delta to the bf16 weight (two roundings); we check lorad's single rounding, computed here in
float64 and rounded to f32 then bf16.

usage:
  peft_merge_ref.py make-adapter CONFIG_JSON OUT_DIR R ALPHA RSLORA SEED [BASE [DORA]]
      writes a PEFT adapter (all seven projections of every layer + lm_head, random A and B; with
      DORA = 1 random magnitudes in [0.5, 2] too, and use_dora in the config).
  peft_merge_ref.py check-merged BASE ADAPTER_DIR MERGED_DIR
      BASE is an HF dir (config.json + model.safetensors), a llama2.c .bin, or a write_fixtures.py
      output dir with truth.f32 / truth_order.txt / hf_f32/config.json (for GGUF and llama2.c bases,
      merged as F32).
  peft_merge_ref.py check-gguf ADAPTER_DIR GGUF_PATH CONFIG_JSON
      the GGUF LoRA holds the PEFT tensors (q/k lora_b rows in Meta order) and alpha.
  peft_merge_ref.py same-adapter DIR1 DIR2
      two PEFT dirs hold bitwise identical tensors (names with or without the prefix).
"""
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_adapter_files import meta_to_hf_rows, read_gguf, gguf_name  # noqa: E402

PREFIX = "base_model.model."
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def read_safetensors(path):
    """{name: (dtype, array)}; BF16 arrays are returned as their uint16 bit patterns."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        np_type = {"F32": "<f4", "BF16": "<u2", "F16": "<f2"}[t["dtype"]]
        out[name] = (t["dtype"], np.frombuffer(data[base + b:base + e], dtype=np_type).reshape(t["shape"]))
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def shapes(cfg):
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    io = {"self_attn.q_proj": (d, q), "self_attn.k_proj": (d, kv), "self_attn.v_proj": (d, kv),
          "self_attn.o_proj": (q, d), "mlp.gate_proj": (d, f), "mlp.up_proj": (d, f), "mlp.down_proj": (f, d)}
    out = {}
    for l in range(cfg["num_hidden_layers"]):
        for m, (i, o) in io.items():
            out[f"model.layers.{l}.{m}"] = (i, o)
    out["lm_head"] = (d, v)
    return out


def make_adapter(config_json, out_dir, r, alpha, rslora, seed, base, dora=False):
    cfg = json.load(open(config_json))
    rng = np.random.default_rng(seed)
    t = {}
    for module, (i, o) in shapes(cfg).items():
        t[PREFIX + module + ".lora_A.weight"] = rng.uniform(-0.5, 0.5, (r, i)).astype(np.float32)
        t[PREFIX + module + ".lora_B.weight"] = rng.uniform(-0.5, 0.5, (o, r)).astype(np.float32)
        if dora:
            t[PREFIX + module + ".lora_magnitude_vector"] = rng.uniform(0.5, 2.0, (o,)).astype(np.float32)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), t)
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "use_rslora": rslora, "use_dora": dora, "bias": "none", "fan_in_fan_out": False,
            "base_model_name_or_path": base,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                               "lm_head"]}
    json.dump(conf, open(os.path.join(out_dir, "adapter_config.json"), "w"), indent=2)


def load_adapter(d):
    conf = json.load(open(os.path.join(d, "adapter_config.json")))
    t = {}
    for name, (dtype, a) in read_safetensors(os.path.join(d, "adapter_model.safetensors")).items():
        if dtype != "F32":
            fail(f"{d}: {name} is {dtype}")
        t[name[len(PREFIX):] if name.startswith(PREFIX) else name] = a
    r = conf["r"]
    scale = conf["lora_alpha"] / (math.sqrt(r) if conf.get("use_rslora") else r)
    return conf, t, scale


def load_llama2c(path):
    """A llama2.c legacy checkpoint (llama2.c's export.py "version 0"): seven int32 (dim, hidden,
    layers, heads, kv_heads, vocab (negative: separate classifier), seq_len), then f32 tensors
    embeddings, attention norms, wq, wk, wv, wo, ffn norms, w1 (gate), w2 (down), w3 (up), final
    norm, the RoPE tables (seq_len * head_dim/2 twice), and the classifier when not shared.
    q/k rows are in Meta's interleaved RoPE order and are moved to HF's here."""
    data = np.fromfile(path, dtype="<f4")
    dim, hidden, layers, heads, kv_heads, vocab, seq = (int(x) for x in data[:7].view("<i4"))
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // heads
    cfg = {"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab, "head_dim": hd, "tie_word_embeddings": shared,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    pos = 7

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = data[pos:pos + n].reshape(shape)
        pos += n
        return a

    t = {"model.embed_tokens.weight": take(vocab, dim)}
    per_layer = [("input_layernorm", (dim,)), ("self_attn.q_proj", (heads * hd, dim)),
                 ("self_attn.k_proj", (kv_heads * hd, dim)), ("self_attn.v_proj", (kv_heads * hd, dim)),
                 ("self_attn.o_proj", (dim, heads * hd)), ("post_attention_layernorm", (dim,)),
                 ("mlp.gate_proj", (hidden, dim)), ("mlp.down_proj", (dim, hidden)), ("mlp.up_proj", (hidden, dim))]
    for name, shape in per_layer:
        stacked = take(layers, *shape)
        for l in range(layers):
            w = stacked[l]
            if name in ("self_attn.q_proj", "self_attn.k_proj"):
                w = meta_to_hf_rows(w, shape[0] // hd, hd)
            t[f"model.layers.{l}.{name}.weight"] = w
    t["model.norm.weight"] = take(dim)
    take(seq, hd // 2)
    take(seq, hd // 2)
    if not shared:
        t["lm_head.weight"] = take(vocab, dim)
    if pos != data.size:
        fail(f"{path}: {data.size - pos} floats left over")
    return cfg, {k: ("F32", v) for k, v in t.items()}


def load_base(base):
    """(config dict, {HF name: (dtype, array as stored)}) of an HF dir, a fixtures dir or a
    llama2.c .bin."""
    if base.endswith(".bin"):
        return load_llama2c(base)
    if os.path.exists(os.path.join(base, "truth.f32")):
        cfg = json.load(open(os.path.join(base, "hf_f32", "config.json")))
        names = open(os.path.join(base, "truth_order.txt")).read().split()
        flat = np.fromfile(os.path.join(base, "truth.f32"), dtype="<f4")
        d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        sh = {m: (o, i) for m, (i, o) in shapes(cfg).items()}
        t, pos = {}, 0
        for n in names:
            module = n[:-len(".weight")]
            shape = sh.get(module, (d,) if "norm" in n else (v, d))
            count = int(np.prod(shape))
            t[n] = ("F32", flat[pos:pos + count].reshape(shape))
            pos += count
        if pos != flat.size:
            fail("truth.f32 size does not match truth_order.txt")
        return cfg, t
    cfg = json.load(open(os.path.join(base, "config.json")))
    return cfg, read_safetensors(os.path.join(base, "model.safetensors"))


def as_f64(dtype, a):
    return (bf16_to_f32(a) if dtype == "BF16" else a.astype(np.float32)).astype(np.float64)


def check_merged(base, adapter_dir, merged_dir):
    cfg, bt = load_base(base)
    conf, ad, scale = load_adapter(adapter_dir)
    fixtures = not os.path.exists(os.path.join(base, "config.json"))  # merged as F32
    mt = read_safetensors(os.path.join(merged_dir, "model.safetensors"))
    mcfg = json.load(open(os.path.join(merged_dir, "config.json")))
    tied = cfg.get("tie_word_embeddings", False)
    head_adapted = "lm_head.lora_A.weight" in ad
    want_names = set(bt)
    if tied and head_adapted:
        want_names.add("lm_head.weight")  # the merged head is no longer the embeddings
        bt["lm_head.weight"] = bt["model.embed_tokens.weight"]
    if set(mt) != want_names:
        fail(f"merged tensors {sorted(set(mt) ^ want_names)} differ from the expected set")
    if mcfg.get("tie_word_embeddings", False) != (tied and not head_adapted):
        fail(f"merged config tie_word_embeddings = {mcfg.get('tie_word_embeddings')}")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta"):
        if abs(float(mcfg.get(key, -1)) - float(cfg[key])) > 1e-6 * abs(float(cfg[key])):
            fail(f"merged config {key} = {mcfg.get(key)}, want {cfg[key]}")
    if fixtures and (mcfg.get("model_type") != "llama" or mcfg.get("architectures") != ["LlamaForCausalLM"]):
        fail("synthesised config lacks model_type llama")
    n_checked = n_boundary = 0
    for name, (bdtype, w) in bt.items():
        gdtype, got = mt[name]
        want_dtype = "F32" if fixtures else bdtype
        if gdtype != want_dtype:
            fail(f"{name}: merged dtype {gdtype}, want {want_dtype}")
        if list(got.shape) != list(w.shape):
            fail(f"{name}: merged shape {got.shape}, want {w.shape}")
        module = name[:-len(".weight")]
        if module + ".lora_A.weight" not in ad:
            if not np.array_equal(got, w):
                fail(f"{name}: not adapted, but differs from the base")
            continue
        A = ad[module + ".lora_A.weight"].astype(np.float64)
        B = ad[module + ".lora_B.weight"].astype(np.float64)
        w64 = as_f64(bdtype, w)
        exact = w64 + scale * (B @ A)
        bound = np.abs(w64) + scale * (np.abs(B) @ np.abs(A))  # the magnitude f32 rounding scales with
        # W + scale * (a sum of r products) in float32 is within gamma_{r+2} of that magnitude
        # (Higham, "Accuracy and Stability of Numerical Algorithms", sec. 3.1), u = 2^-24.
        k = A.shape[0] + 2
        gamma = k * 2.0 ** -24 / (1 - k * 2.0 ** -24)
        tol = gamma * bound
        if conf.get("use_dora"):
            # DoRA: f = m / ||V|| per row, then f * V. An error e (|e| <= tol) in V moves f * V by
            # at most f (|e| + |V| ||e|| / ||V||) to first order (the norm's own change), and f's
            # division and the product round once each (2u of the result, plus slack for the norm's
            # square root and sum, which run in double or as one more float32 rounding).
            mag = ad[module + ".lora_magnitude_vector"].astype(np.float64)
            if mag.shape != (exact.shape[0],):
                fail(f"{module}.lora_magnitude_vector has shape {mag.shape}, want ({exact.shape[0]},)")
            norm = np.linalg.norm(exact, axis=1, keepdims=True)
            f = mag[:, None] / norm
            e_norm = np.linalg.norm(tol, axis=1, keepdims=True)
            exact = f * exact
            tol = np.abs(f) * (tol + np.abs(exact / f) * e_norm / norm) + 4 * 2.0 ** -24 * np.abs(exact)
        if gdtype == "F32":
            err = np.abs(got.astype(np.float64) - exact)
            worst = float(np.max(err / np.maximum(tol, 1e-30)))
            if worst > 1.0:
                fail(f"{name}: merged F32 off by {worst:.3g} times its bound (|W| + scale*|B||A| times {gamma:.3g}"
                     f"{', through DoRA' if conf.get('use_dora') else ''})")
        else:
            want = f32_to_bf16(exact.astype(np.float32))
            diff = got != want
            if diff.any():
                # Only where the f32 computation's own rounding error (tol, e.g. after
                # cancellation) straddles a bf16 rounding boundary may the result differ.
                lo = bf16_to_f32(f32_to_bf16((exact - tol).astype(np.float32)))
                hi = bf16_to_f32(f32_to_bf16((exact + tol).astype(np.float32)))
                g = bf16_to_f32(got)
                ok = (g >= lo) & (g <= hi)
                if not ok[diff].all():
                    i = np.argwhere(diff & ~ok)[0]
                    fail(f"{name}{list(i)}: bf16 {got[tuple(i)]:#06x}, want {want[tuple(i)]:#06x}")
                n_boundary += int(diff.sum())
        n_checked += got.size
    if n_boundary > max(1, n_checked // 1000):
        fail(f"{n_boundary} of {n_checked} bf16 values differ at rounding boundaries: too many")
    print(f"merged {merged_dir}: {len(mt)} tensors match the reference ({n_boundary} bf16 boundary cases)")


def check_gguf(adapter_dir, gguf_path, config_json):
    cfg = json.load(open(config_json))
    conf, ad, _ = load_adapter(adapter_dir)
    kv, gg = read_gguf(gguf_path)
    for key, val in {"general.type": "adapter", "adapter.type": "lora"}.items():
        if kv.get(key) != val:
            fail(f"GGUF {key} = {kv.get(key)!r}")
    r = conf["r"]
    want_alpha = conf["lora_alpha"] * (math.sqrt(r) if conf.get("use_rslora") else 1)
    if abs(kv["adapter.lora.alpha"] - want_alpha) > 1e-6 * want_alpha:
        fail(f"adapter.lora.alpha {kv['adapter.lora.alpha']}, want {want_alpha}")
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if len(gg) != len(ad):
        fail(f"GGUF has {len(gg)} tensors, PEFT {len(ad)}")
    for name, a in ad.items():
        g = gg.get(gguf_name(name))
        if g is None:
            fail(f"GGUF lacks {gguf_name(name)}")
        if ".lora_B." in name and (".q_proj." in name or ".k_proj." in name):
            heads = cfg["num_attention_heads"] if ".q_proj." in name else cfg["num_key_value_heads"]
            g = meta_to_hf_rows(g, heads, hd)
        if not np.array_equal(g, a):
            fail(f"GGUF {gguf_name(name)} differs from {name}")
    print(f"gguf {gguf_path}: {len(gg)} tensors match the PEFT adapter")


def same_adapter(d1, d2):
    c1, t1, s1 = load_adapter(d1)
    c2, t2, s2 = load_adapter(d2)
    if set(t1) != set(t2):
        fail(f"tensor names differ: {sorted(set(t1) ^ set(t2))}")
    for n in t1:
        if t1[n].shape != t2[n].shape or t1[n].tobytes() != t2[n].tobytes():
            fail(f"{n} differs")
    if abs(s1 - s2) > 1e-6 * s1:
        fail(f"scale {s1} vs {s2}")
    if bool(c1.get("use_dora")) != bool(c2.get("use_dora")):
        fail(f"use_dora {c1.get('use_dora')} vs {c2.get('use_dora')}")
    print(f"{d1} and {d2}: same {len(t1)} tensors")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make-adapter":
        make_adapter(args[0], args[1], int(args[2]), float(args[3]), args[4] == "1", int(args[5]),
                     args[6] if len(args) > 6 else "none", len(args) > 7 and args[7] == "1")
    elif cmd == "check-merged":
        check_merged(*args)
    elif cmd == "check-gguf":
        check_gguf(*args)
    elif cmd == "same-adapter":
        same_adapter(*args)
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
