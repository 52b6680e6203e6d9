#!/usr/bin/python3
"""lorad inspect on real and generated models: the reported facts match the files (read here
with struct/json, independently of lorad) and bad input gives a one-line error naming the file."""
import json
import os
import struct
import subprocess
import sys
import tempfile

LORAD = os.environ["LORAD_BIN"]
DATA = os.environ["LORAD_SHARED_DATA"]
SRC = os.environ["LORAD_SOURCE_DIR"]


def inspect(*args):
    p = subprocess.run([LORAD, "inspect", *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def check(cond, msg):
    if not cond:
        print("FAIL: " + msg)
        sys.exit(1)


def main():
    stories = os.path.join(DATA, "stories260K.bin")
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", open(stories, "rb").read(28))
    rc, out, err = inspect(stories, "--json", "--seq-len", "256", "--batch", "2", "--lora-r", "4")
    check(rc == 0, f"inspect failed: {err}")
    j = json.loads(out)
    c = j["config"]
    check(j["format"] == "llama2c", "format")
    check((c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
           c["num_key_value_heads"], c["vocab_size"], c["max_position_embeddings"]) ==
          (dim, hidden, layers, heads, kv, vocab, seq), f"config {c}")
    check(c["tie_word_embeddings"] is (vocab > 0), "tied")
    check(c["rms_norm_eps"] == 1e-5 and c["rope_theta"] == 10000.0, "llama2.c eps/theta")
    hd = dim // heads
    per_layer = 2 * dim * heads * hd + 2 * dim * kv * hd + 3 * dim * hidden + 2 * dim
    check(j["n_params"] == vocab * dim + layers * per_layer + dim, "n_params")
    check(j["tensor_dtypes"] == {"F32": 2 + 9 * layers}, f"dtypes {j['tensor_dtypes']}")
    check(j["tokenizer"]["kind"] == "none", "tokenizer")
    q, k = heads * hd, kv * hd
    m = j["memory"]
    check((m["seq_len"], m["batch"], m["lora_r"]) == (256, 2, 4), "memory args")
    check(m["lora_params"] == layers * 4 * ((dim + q) + 2 * (dim + k) + (q + dim) + 3 * (dim + hidden)), "lora_params")
    check(m["total_bytes"] >= m["base_bytes"] + m["activation_bytes"] > 0, "memory total")
    check(m["base_bytes"] == 4 * (vocab * dim + layers * per_layer + dim), "base bytes = f32 weights, tied head once")

    rc, out, err = inspect(stories)
    check(rc == 0 and "format:" in out and "llama2c" in out and "estimate" in out, "text output")

    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, os.path.join(SRC, "tests/formats/write_fixtures.py"), d], check=True)
        rc, out, err = inspect(os.path.join(d, "gguf_q4_0.gguf"), "--json")
        j = json.loads(out)
        check(rc == 0 and j["format"] == "gguf", "gguf format")
        check(j["tensor_dtypes"] == {"Q4_0": 16, "F32": 5}, f"gguf dtypes {j['tensor_dtypes']}")
        check(j["tokenizer"] == {"kind": "gguf-embedded", "vocab_size": 300, "model": "llama"}, f"{j['tokenizer']}")
        rc, out, err = inspect(os.path.join(d, "hf_bf16"), "--json")
        j = json.loads(out)
        check(rc == 0 and j["format"] == "hf" and j["tensor_dtypes"] == {"BF16": 21}, f"hf {out}")
        check(j["config"]["eos_token_id"] == 2, "eos list -> first")
        bad = os.path.join(d, "bad.gguf")
        open(bad, "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0))
        rc, out, err = inspect(bad)
        check(rc == 1 and bad in err and "cannot fit" in err and err.count("\n") == 1, f"bad file: {rc} {err}")
    rc, out, err = inspect()
    check(rc == 2, "missing PATH is a usage error")
    rc, out, err = inspect(stories, "--seq-len", "0")
    check(rc == 2, "bad --seq-len is a usage error")
    print("ok")


if __name__ == "__main__":
    main()
