"""Shared helpers of the `lorad generate` tests: running the binary, reading its logits dumps,
building fixtures (the real stories260K, a demo HF model, the cross-format fixtures)."""
import os
import shutil
import subprocess
import sys
import tempfile

LORAD = os.environ.get("LORAD_BIN", "lorad")
PY = os.environ.get("LORAD_PYTHON", "/usr/bin/python3")
SOURCE = os.environ.get("LORAD_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SHARED = os.environ.get("LORAD_SHARED_DATA", os.path.join(SOURCE, "..", "shared", "data"))
# the ASan+UBSan build (tests/CMakeLists.txt): trim shapes, keep every check
SANITIZED = os.environ.get("LORAD_TEST_SANITIZED") == "1"
REF = os.path.join(SOURCE, "tests", "reference", "generate_ref.py")
STORIES = os.path.join(SHARED, "stories260K.bin")
STORIES_EOS = 2  # llama2.c's convention: 1 is BOS, 2 is EOS
sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))

import safetensors_io  # noqa: E402
from float32_bound import float32_logits_bound  # noqa: E402


def llama2c_config(path):
    """The HF-style sizes of a llama2.c checkpoint, from its header of seven int32s (dim,
    hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: untied), seq_len)."""
    import struct
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", f.read(28))
    return {"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": abs(vocab),
            "max_position_embeddings": seq}


def two_float32_runs(path, tokens):
    """How far two float32 computations of a model's logits (say with and without the KV cache, or
    adapter and merged weights) may differ relative to the row's scale: each within the logits
    bound of the exact value. path is a llama2.c .bin or an HF directory."""
    if os.path.isdir(path):
        import json
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    else:
        cfg = llama2c_config(path)
    return 2 * float32_logits_bound(cfg, tokens)

failures = []


def check(cond, message):
    if not cond:
        failures.append(message)
        print("FAIL:", message)
    return cond


def run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def generate(*args, status=0, timeout=120):
    """Runs `lorad generate ARGS`; records a failure when the exit status is not `status`."""
    p = run([LORAD, "generate", *map(str, args)], timeout)
    check(p.returncode == status,
          f"lorad generate {' '.join(map(str, args))}: exit {p.returncode}, want {status}\n{p.stdout[-1500:]}"
          f"{p.stderr[-1500:]}")
    return p


def ids_of(p):
    return [int(x) for x in p.stdout.split()]


def read_dump(path):
    tensors, meta = safetensors_io.read(path)
    return tensors, meta


def reference(*args):
    """Runs tests/reference/generate_ref.py; a non-zero exit is a failure."""
    p = run([PY, REF, *map(str, args)], timeout=300)
    print(p.stdout.strip())
    check(p.returncode == 0, f"generate_ref.py {' '.join(map(str, args))}: exit {p.returncode}\n{p.stdout[-3000:]}"
                             f"{p.stderr[-3000:]}")
    return p


def demo_model(d):
    """A tiny random HF LlamaForCausalLM with a byte-level tokenizer (scripts/make-demo-model)."""
    out = os.path.join(d, "demo")
    subprocess.run([PY, os.path.join(SOURCE, "scripts", "make-demo-model"), out, "--dim", "64", "--layers", "2",
                    "--hidden", "96"], check=True, capture_output=True)
    return out


def fixtures(d):
    """One random model in every format (tests/formats/write_fixtures.py)."""
    out = os.path.join(d, "fx")
    subprocess.run([PY, os.path.join(SOURCE, "tests", "formats", "write_fixtures.py"), out], check=True,
                   capture_output=True)
    return out


def main(test):
    d = tempfile.mkdtemp(prefix="lorad-generate-")
    try:
        test(d)
    except subprocess.TimeoutExpired as e:
        failures.append(f"timeout: {e}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("ok")
