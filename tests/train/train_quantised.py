"""A Q4_K_M-style GGUF base (tests/formats/write_kquant_fixture.py: Q4_K and Q6_K matrices kept
as stored) trains: 40 steps lower the loss on a few token sequences under float32 compute, and
bfloat16 compute (dequantised blocks rounded to bf16 while packed) tracks it within 2% at every
step where the host has AVX512_BF16. The run reports the base's dtype and a memory estimate whose
base weights are the file's quantised bytes, not an f32 copy."""
import json
import os
import random
import re
import subprocess
import sys

from train_common import LORAD, SOURCE, check, main, metrics, train, write_job, write_jsonl

STEPS = 40


def test(d):
    subprocess.run([sys.executable, os.path.join(SOURCE, "tests", "formats", "write_kquant_fixture.py"), d], check=True)
    model = os.path.join(d, "gguf_q4_k_m.gguf")
    rng = random.Random(4)
    rows = [{"input_ids": [1] + [rng.randrange(3, 300) for _ in range(30)]} for _ in range(8)]
    data = write_jsonl(os.path.join(d, "ids.jsonl"), rows)
    runs = {}
    bf16 = any(line.startswith("isa avx512bf16") for line in
               subprocess.run([LORAD, "version"], capture_output=True, text=True, check=True).stdout.splitlines())
    for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
        job = write_job(os.path.join(d, f"job-{dtype}.json"), model=model, training_file=data, seed=9,
                        hyperparameters={"max_steps": STEPS, "n_epochs": 50, "batch_size": 4, "learning_rate": 2e-3,
                                         "max_seq_len": 32, "compute_dtype": dtype},
                        lora={"r": 8, "alpha": 16, "target_modules": "all-linear"})
        out = os.path.join(d, f"run-{dtype}")
        p = train(job, out, "--threads", "2")
        text = p.stdout + p.stderr
        check(f"computing in {dtype}" in text, f"{dtype}: the run did not report its compute dtype:\n{text[-2000:]}")
        m = re.search(r"memory estimate .*base weights ([0-9.]+)", text)
        check(m is not None, f"no memory estimate in:\n{text[-2000:]}")
        file_gib = os.path.getsize(model) / 2**30
        check(float(m.group(1)) <= file_gib * 1.5 + 0.01,
              f"base weights estimated at {m.group(1)} GiB for a {file_gib:.4f} GiB file: converted, not kept quantised?")
        runs[dtype] = metrics(out)
        check(len(runs[dtype]) == STEPS, f"{dtype}: {len(runs[dtype])} steps")
        first, last = runs[dtype][0]["train_loss"], runs[dtype][-1]["train_loss"]
        check(last < 0.8 * first, f"{dtype}: loss {first:.3f} -> {last:.3f} did not fall")
        print(f"{dtype}: loss {first:.3f} -> {last:.3f}")
    if "bfloat16" in runs:
        for a, b in zip(runs["float32"], runs["bfloat16"]):
            rel = abs(a["train_loss"] - b["train_loss"]) / a["train_loss"]
            check(rel <= 0.02, f"step {a['step']}: bf16 {b['train_loss']:.5f} vs fp32 {a['train_loss']:.5f}")


if __name__ == "__main__":
    main(test)
