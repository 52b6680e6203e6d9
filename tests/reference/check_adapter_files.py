#!/usr/bin/python3
"""Independent reader for lorad's adapter outputs (PEFT dir, GGUF LoRA, tar).

Written from the formats' specifications (safetensors; GGUF v3; POSIX ustar via Python's tarfile),
not from lorad's C code. The C test fills tensor k of shape (rows, cols) with
value[i] = sin(0.01 * i + k) (f32), so the expected values are recomputed here.

usage: check_adapter_files.py DIR N_HEADS N_KV_HEADS HEAD_DIM R ALPHA RSLORA
  DIR holds peft/ (adapter_model.safetensors, adapter_config.json), adapter.gguf, adapter.tar and
  tensors.json (the list of [name, rows, cols] in the order the C test numbered them).
"""
import json
import math
import struct
import sys
import tarfile

import numpy as np


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def expected(k, rows, cols):
    i = np.arange(rows * cols, dtype=np.float64)
    return np.sin(0.01 * i + k).astype(np.float32).reshape(rows, cols)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if (8 + n) % 8 != 0:
        fail("safetensors header not padded to 8 bytes")
    base = 8 + n
    meta = header.pop("__metadata__", {})
    out = {}
    spans = []
    for name, t in header.items():
        if t["dtype"] != "F32":
            fail(f"{name}: dtype {t['dtype']}, want F32")
        b, e = t["data_offsets"]
        spans.append((b, e))
        arr = np.frombuffer(data[base + b:base + e], dtype="<f4").reshape(t["shape"])
        out[name] = arr
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            fail("safetensors data not contiguous")
        pos = e
    if base + pos != len(data):
        fail("safetensors trailing bytes")
    return meta, out


def read_gguf(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    if data[:4] != b"GGUF":
        fail("bad GGUF magic")
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    if version != 3:
        fail(f"GGUF version {version}")
    kv = {}
    for _ in range(n_kv):
        key = string()
        vtype = take("I")
        if vtype == 8:
            kv[key] = string()
        elif vtype == 6:
            kv[key] = take("f")
        elif vtype == 4:
            kv[key] = take("I")
        else:
            fail(f"unexpected KV type {vtype} for {key}")
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        ttype = take("I")
        off = take("Q")
        infos.append((name, dims, ttype, off))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    tensors = {}
    for name, dims, ttype, off in infos:
        if ttype != 0:
            fail(f"{name}: ggml type {ttype}, want F32 (0)")
        if off % align:
            fail(f"{name}: offset {off} not aligned")
        count = int(np.prod(dims))
        arr = np.frombuffer(data[start + off:start + off + 4 * count], dtype="<f4")
        tensors[name] = arr.reshape(list(reversed(dims)))  # ne[0] is the innermost (row) length
    return kv, tensors


def meta_to_hf_rows(w, n_heads, head_dim):
    """The Meta->HF q/k permutation as Hugging Face's conversion defines it:
    w.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)."""
    rows, cols = w.shape
    return w.reshape(n_heads, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


GGUF_MODULE = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    ab = "a" if ".lora_A." in hf else "b"
    if hf.startswith("lm_head."):
        return f"output.weight.lora_{ab}"
    parts = hf.split(".")
    layer = int(parts[2])
    module = parts[3] + "." + parts[4]
    return f"blk.{layer}.{GGUF_MODULE[module]}.weight.lora_{ab}"


def main():
    d, n_heads, n_kv, head_dim, r, alpha, rslora = sys.argv[1], *map(int, sys.argv[2:5]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7] == "1"
    names = json.load(open(f"{d}/tensors.json"))

    meta, st = read_safetensors(f"{d}/peft/adapter_model.safetensors")
    if meta != {"format": "pt"}:
        fail(f"safetensors metadata {meta}")
    if set(st) != {"base_model.model." + n for n, _, _ in names}:
        fail(f"PEFT tensor names {sorted(st)}")
    for k, (name, rows, cols) in enumerate(names):
        got = st["base_model.model." + name]
        if got.shape != (rows, cols) or not np.array_equal(got, expected(k, rows, cols)):
            fail(f"PEFT tensor {name} differs")
    cfg = json.load(open(f"{d}/peft/adapter_config.json"))
    want = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "use_rslora": rslora}
    for key, val in want.items():
        if cfg.get(key) != val:
            fail(f"adapter_config.json {key} = {cfg.get(key)!r}, want {val!r}")
    for key in ("lora_dropout", "target_modules", "base_model_name_or_path"):
        if key not in cfg:
            fail(f"adapter_config.json lacks {key}")

    kv, gg = read_gguf(f"{d}/adapter.gguf")
    for key, val in {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora"}.items():
        if kv.get(key) != val:
            fail(f"GGUF {key} = {kv.get(key)!r}")
    want_alpha = alpha * math.sqrt(r) if rslora else alpha
    if abs(kv["adapter.lora.alpha"] - want_alpha) > 1e-5 * want_alpha:
        fail(f"GGUF adapter.lora.alpha {kv['adapter.lora.alpha']}, want {want_alpha}")
    for k, (name, rows, cols) in enumerate(names):
        g = gg.get(gguf_name(name))
        if g is None:
            fail(f"GGUF lacks {gguf_name(name)}")
        if ".lora_B." in name and (".q_proj." in name or ".k_proj." in name):
            heads = n_heads if ".q_proj." in name else n_kv
            g = meta_to_hf_rows(g, heads, head_dim)
        if g.shape != (rows, cols) or not np.array_equal(g, expected(k, rows, cols)):
            fail(f"GGUF tensor {gguf_name(name)} differs from {name}")

    with tarfile.open(f"{d}/adapter.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            m = members.get(f"adapter/{f}")
            if m is None or not m.isfile():
                fail(f"adapter.tar lacks adapter/{f}: {sorted(members)}")
            if tar.extractfile(m).read() != open(f"{d}/peft/{f}", "rb").read():
                fail(f"adapter.tar's {f} differs from the file")
    print("adapter files: all checks passed")


if __name__ == "__main__":
    main()
