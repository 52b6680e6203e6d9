"""bf16 compute tracks fp32 compute: on the demo task (a bf16 copy of the demo model) and on
stories260K converted to bf16, 200 steps with compute_dtype bfloat16 must stay within 2% relative
of the float32 run's training loss at every step and of its validation loss at every evaluation,
and the run must say which dtype it computed in. The float32 run on the same bf16 base is the
independent side: it multiplies the same stored weights without rounding activations or
gradients. 2% is the issue's bound; the bf16 rounding of activations (2^-9 relative per product)
moves these losses by at most 0.05% (demo) and 0.8% (stories260K, whose sharp pretrained logits
feel it most) in our runs (2026-12-06), so a kernel that rounded wrongly or multiplied wrongly
would fail. The runs use a learning rate at which training is smooth (see the comments below)."""
import json
import os
import subprocess
import sys

from train_common import LORAD, SANITIZED, SHARED, SOURCE, Fail, check, main, metrics, train, write_job, write_jsonl

sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
import numpy as np  # noqa: E402
import safetensors_io  # noqa: E402
from peft_merge_ref import load_llama2c  # noqa: E402

# Under ASan (tests/CMakeLists.txt) a shorter run: the same kernels, the same bound at every step.
STEPS = 80 if SANITIZED else 200
EVAL_EVERY = STEPS // 4
REL = 0.02


def bf16_usable():
    p = subprocess.run([LORAD, "version"], capture_output=True, text=True, check=True)
    return any(line.startswith("isa avx512bf16") for line in p.stdout.splitlines())


def to_bf16_bits(a):
    """float32 array -> bf16 bit patterns, nearest even."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def stories_as_bf16_hf(out):
    """stories260K.bin as an HF LlamaForCausalLM directory with BF16 tensors (no tokenizer)."""
    cfg, tensors = load_llama2c(os.path.join(SHARED, "stories260K.bin"))
    os.makedirs(out, exist_ok=True)
    hf = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
              max_position_embeddings=512, torch_dtype="bfloat16")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf, f)
    bits = {n: to_bf16_bits(a) for n, (_, a) in tensors.items()}
    safetensors_io.write(os.path.join(out, "model.safetensors"), bits, bf16_names=set(bits))
    return out


def run_pair(d, tag, spec):
    """Trains spec under float32 and bfloat16 compute; returns both metrics lists."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        s = json.loads(json.dumps(spec))
        s["hyperparameters"]["compute_dtype"] = dtype
        job = write_job(os.path.join(d, f"{tag}-{dtype}.json"), **s)
        out = os.path.join(d, f"{tag}-{dtype}")
        p = train(job, out, "--threads", "2")
        check(f"computing in {dtype}" in p.stdout + p.stderr, f"{tag}: lorad train did not say it computed in {dtype}")
        runs[dtype] = metrics(out)
    return runs["float32"], runs["bfloat16"]


def compare(tag, f32, b16):
    check(len(f32) == len(b16) == STEPS, f"{tag}: {len(f32)} and {len(b16)} steps, want {STEPS}")
    worst_train = worst_valid = 0.0
    n_valid = 0
    for a, b in zip(f32, b16):
        rel = abs(b["train_loss"] - a["train_loss"]) / abs(a["train_loss"])
        check(rel <= REL, f"{tag} step {a['step']}: train_loss bf16 {b['train_loss']:.5f} vs fp32 {a['train_loss']:.5f}")
        worst_train = max(worst_train, rel)
        if "valid_loss" in a or "valid_loss" in b:
            check("valid_loss" in a and "valid_loss" in b, f"{tag} step {a['step']}: only one run evaluated")
            rel = abs(b["valid_loss"] - a["valid_loss"]) / abs(a["valid_loss"])
            check(rel <= REL, f"{tag} step {a['step']}: valid_loss bf16 {b['valid_loss']:.5f} vs fp32 {a['valid_loss']:.5f}")
            worst_valid = max(worst_valid, rel)
            n_valid += 1
    check(n_valid >= 2, f"{tag}: {n_valid} evaluations, want several")
    check(f32[-1]["train_loss"] < 0.7 * f32[0]["train_loss"], f"{tag}: the loss did not fall, the comparison is weak")
    print(f"{tag}: loss {f32[0]['train_loss']:.3f} -> {f32[-1]['train_loss']:.3f}; bf16 vs fp32 worst relative "
          f"difference: train {worst_train:.2e}, valid {worst_valid:.2e} over {n_valid} evaluations")


def test(d):
    if not bf16_usable():
        print("skip: this host cannot compute in bf16 (no AVX512_BF16)")
        sys.exit(77)
    model = os.path.join(d, "demo-bf16")
    subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), model, "--dtype", "BF16"],
                   check=True, capture_output=True)
    with open(os.path.join(SOURCE, "demo", "job.json")) as f:
        demo = json.load(f)
    demo.update(model=model, training_file=os.path.join(SOURCE, "demo", "train.jsonl"),
                validation_file=os.path.join(SOURCE, "demo", "valid.jsonl"))
    # The demo's own learning rate (3e-3, batch 4) gives loss spikes (grad norm ~60 at step 21)
    # after which even float32 with 1 thread instead of 2 differs by 8% at some step (measured):
    # that would test the conditioning of the run, not bf16. 1e-3 with batch 8 learns smoothly.
    demo["hyperparameters"].update(max_steps=STEPS, eval_every_steps=EVAL_EVERY, checkpoint_every_steps=None,
                                   learning_rate=1e-3, batch_size=8)
    compare("demo", *run_pair(d, "demo", demo))

    stories = stories_as_bf16_hf(os.path.join(d, "stories-bf16"))
    import random
    rng = random.Random(16)
    rows = [{"input_ids": [1] + [rng.randrange(3, 512) for _ in range(rng.randrange(24, 60))]} for _ in range(40)]
    train_file = write_jsonl(os.path.join(d, "stories-train.jsonl"), rows[:32])
    valid_file = write_jsonl(os.path.join(d, "stories-valid.jsonl"), rows[32:])
    # Memorising random sequences at 2e-3 with batch 4 is as chaotic as the demo at 3e-3.
    spec = {"model": stories, "training_file": train_file, "validation_file": valid_file, "seed": 5,
            "hyperparameters": {"max_steps": STEPS, "n_epochs": 100, "batch_size": 8, "learning_rate": 5e-4,
                                "max_seq_len": 64, "eval_every_steps": EVAL_EVERY, "warmup_steps": 10},
            "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj", "lm_head"]}}
    compare("stories260K", *run_pair(d, "stories", spec))


if __name__ == "__main__":
    main(test)
