"""Shared helpers of the `lorad train` end-to-end tests: temp dirs, tiny models, jobs, metrics."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

LORAD = os.environ.get("LORAD_BIN", "lorad")
SOURCE = os.environ.get("LORAD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("LORAD_SHARED_DATA", os.path.join(SOURCE, "..", "shared", "data"))
# the ASan+UBSan build (tests/CMakeLists.txt): trim shapes, keep every check
SANITIZED = os.environ.get("LORAD_TEST_SANITIZED") == "1"


class Fail(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Fail(message)


def workdir():
    d = tempfile.mkdtemp(prefix="lorad-train-")
    return d


def make_model(out, dim=64, layers=2, seed=1234):
    """A tiny random LlamaForCausalLM with the Llama 2 SentencePiece tokenizer (vocab 32000)."""
    subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), out,
                    "--sentencepiece", os.path.join(SHARED, "llama2-tokenizer.model"), "--dim", str(dim),
                    "--layers", str(layers), "--heads", "4", "--kv-heads", "2", "--hidden", str(dim * 2 + dim // 2),
                    "--seed", str(seed)], check=True)
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def write_job(path, **spec):
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    return path


def train(job, out, *extra, check_rc=True, timeout=600, env=None):
    """Runs `lorad train`; env adds variables to the inherited environment."""
    p = subprocess.run([LORAD, "train", job, "--out", out, *extra], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env} if env else None)
    if check_rc and p.returncode != 0:
        raise Fail(f"lorad train {job} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main(test):
    d = workdir()
    try:
        test(d)
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        print(f"(work dir kept: {d})", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(d, ignore_errors=True)
    print("ok")
