"""DoRA end to end (lora.use_dora, issue 19). `lorad train` with use_dora on a tiny random base
(scripts/make-demo-model, byte-level tokenizer) learns prompt/completion pairs; then, each against
something the engine did not compute:
  - the adapter directory is PEFT's DoRA layout: use_dora in adapter_config.json, and beside each
    module's lora_A/lora_B a 1-D lora_magnitude_vector of its output size (the base's config);
  - the run's magnitudes moved from where DoRA starts them (the row norms of W + s B A for the
    exported A and B, computed here in float64), so they were trained;
  - `lorad generate` with the adapter gives the float64 PyTorch reference's logits (LlamaLora with
    PEFT's DoRA, tests/reference) within the float32 logits bound, and the same greedy ids;
  - there is no adapter.gguf, and `lorad export --format gguf` refuses with the reason;
  - a run paused by SIGINT and resumed ends with files byte-identical to an uninterrupted run's;
  - a plain job refuses a DoRA init_adapter, naming lora.use_dora."""
import json
import os
import random
import signal
import subprocess
import sys

import numpy as np

from train_common import LORAD, SOURCE, check, main, metrics, train, write_job, write_jsonl
from train_resume import run_until

sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
from peft_merge_ref import load_adapter, load_base, as_f64  # noqa: E402

REF = os.path.join(SOURCE, "tests", "reference", "generate_ref.py")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


COLOURS = "red green blue gold".split()


def dataset(rng, n):
    """Short prompts, each answered by the colour its first letter names (bytes: the demo tokenizer)."""
    rows = []
    for _ in range(n):
        c = rng.choice(COLOURS)
        rows.append({"prompt": f"{c[0]}{rng.randint(0, 99)}:", "completion": f" {c}"})
    return rows


def out_features(cfg, module):
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    return {"q_proj": cfg["num_attention_heads"] * hd, "k_proj": cfg["num_key_value_heads"] * hd,
            "v_proj": cfg["num_key_value_heads"] * hd, "o_proj": d, "gate_proj": f, "up_proj": f,
            "down_proj": d}[module]


def check_files(model, adapter):
    conf = json.load(open(os.path.join(adapter, "adapter_config.json")))
    check(conf.get("use_dora") is True and conf.get("peft_type") == "LORA", f"adapter_config.json: {conf}")
    check(not os.path.exists(os.path.join(adapter, "adapter.gguf")), "a DoRA adapter must not have adapter.gguf")
    cfg = json.load(open(os.path.join(model, "config.json")))
    _, tensors, scale = load_adapter(adapter)
    hf, base = load_base(model)
    moved = 0.0
    for layer in range(cfg["num_hidden_layers"]):
        for module in TARGETS:
            group = "self_attn" if module in TARGETS[:4] else "mlp"
            prefix = f"model.layers.{layer}.{group}.{module}"
            mag = tensors.get(prefix + ".lora_magnitude_vector")
            check(mag is not None, f"{prefix}.lora_magnitude_vector missing")
            check(mag.shape == (out_features(cfg, module),), f"{prefix} magnitude shape {mag.shape}")
            a = tensors[prefix + ".lora_A.weight"].astype(np.float64)
            b = tensors[prefix + ".lora_B.weight"].astype(np.float64)
            dtype, w = base[prefix + ".weight"]
            norm = np.linalg.norm(as_f64(dtype, w) + scale * (b @ a), axis=1)
            moved = max(moved, float(np.max(np.abs(mag / norm - 1))))
    print(f"largest trained change of m / ||W + sBA||: {moved:.3g}")
    check(moved > 1e-3, f"the magnitudes did not train: m / ||W + sBA|| within {moved} of 1")


def test(d):
    model = os.path.join(d, "model")
    subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), model, "--dim", "64",
                    "--layers", "2", "--hidden", "96", "--seed", "9"], check=True)
    write_jsonl(os.path.join(d, "train.jsonl"), dataset(random.Random(3), 48))
    job = write_job(os.path.join(d, "job.json"), model=model, training_file=os.path.join(d, "train.jsonl"), seed=4,
                    hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate": 3e-3, "lr_scheduler": "constant",
                                     "max_seq_len": 64, "checkpoint_every_steps": 10, "threads": 2},
                    lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear", "use_dora": True})
    ref = os.path.join(d, "run")
    train(job, ref)
    m = metrics(ref)
    first, last = m[0]["train_loss"], sum(r["train_loss"] for r in m[-5:]) / 5
    print(f"{len(m)} steps, train loss {first:.3f} -> {last:.3f}")
    check(last < first - 0.5, f"the DoRA run did not learn: loss {first} -> {last}")
    adapter = os.path.join(ref, "adapter")
    check_files(model, adapter)
    for ck in sorted(os.listdir(os.path.join(ref, "checkpoints"))):
        check(not os.path.exists(os.path.join(ref, "checkpoints", ck, "adapter.gguf")), f"checkpoint {ck} has a GGUF")

    # lorad's decoder with the adapter against the float64 reference, teacher-forced and greedy
    dump = os.path.join(d, "dump.st")
    p = subprocess.run([LORAD, "generate", model, "--adapter", adapter, "--prompt", "g7:", "--max-tokens", "8",
                        "--ignore-eos", "--temperature", "0", "--dump-logits", dump], capture_output=True, text=True)
    check(p.returncode == 0, f"lorad generate with the DoRA adapter: {p.stderr[-1500:]}")
    p = subprocess.run([sys.executable, REF, "check", model, dump, "--adapter", adapter, "--max-tokens", "8",
                        "--greedy"], capture_output=True, text=True)
    print(p.stdout.strip())
    check(p.returncode == 0, f"generate_ref check: {p.stdout[-1500:]}{p.stderr[-1500:]}")

    p = subprocess.run([LORAD, "export", "--adapter", adapter, "--format", "gguf", "--out", os.path.join(d, "x.gguf"),
                        "--model", model], capture_output=True, text=True)
    check(p.returncode == 1 and "DoRA" in p.stderr and "merged" in p.stderr, f"export gguf: {p.returncode} {p.stderr}")

    # pause with SIGINT after a few steps, resume: the same bytes as the uninterrupted run
    paused = os.path.join(d, "paused")
    rc, err = run_until(job, paused, False, 7, signal.SIGINT, random.Random(1))
    check(rc != 0 or os.path.exists(os.path.join(paused, "checkpoints")), f"pause: exit {rc} {err[-500:]}")
    train(job, paused, "--resume")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        a = open(os.path.join(ref, "adapter", name), "rb").read()
        b = open(os.path.join(paused, "adapter", name), "rb").read()
        check(a == b, f"after pause and resume, adapter/{name} differs from the uninterrupted run's")

    # a plain job starting from the DoRA adapter is refused
    plain = write_job(os.path.join(d, "plain.json"), model=model, training_file=os.path.join(d, "train.jsonl"),
                      hyperparameters={"max_seq_len": 64, "threads": 1},
                      lora={"r": 4, "alpha": 8, "target_modules": "all-linear", "init_adapter": adapter})
    p = train(plain, os.path.join(d, "plain"), check_rc=False)
    check(p.returncode == 1 and "lora.use_dora" in p.stderr, f"plain job from a DoRA adapter: {p.stderr[-800:]}")


if __name__ == "__main__":
    main(test)
