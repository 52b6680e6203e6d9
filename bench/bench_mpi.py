#!/usr/bin/env python3
"""Data-parallel `lorad train` (issue 16): K = 2 MPI ranks against one process on the 110M shape,
every process with 1 compute thread, on this host over Open MPI's shared-memory transport.

The model is a random base of the 110M shape (dim 768, 12 layers, 12 heads, hidden 2048, Llama 2
SentencePiece vocabulary of 32000), LoRA r=8 on q,v, seq 512; the global batch is 4 rows of 512
tokens, so each of the two ranks trains 2 rows a step. Each round runs K=1 then K=2 on the same
job (same seed and global batch, so the same tokens), and prints:
- tokens/s of each (steps after the first, from metrics.jsonl's elapsed_s) and their ratio;
- the payload each rank hands to the sums per step (metrics.jsonl's collective_bytes: the LoRA
  gradients in f32 plus a few counters), which MPI_Allreduce sums;
- the sums' share of rank 0's step time (collective_s / step time), waiting for the slower rank
  included, so it bounds what overlapping them with the backward pass could win.
Rounds alternate so that a slow spell of the shared host falls on both; the median ratio is
printed at the end.

    /usr/bin/python3 bench/bench_mpi.py --lorad build/release/daemon/lorad [--rounds 3] [--steps 6]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
SP_MODEL = os.path.join(SOURCE, "..", "shared", "data", "llama2-tokenizer.model")
SHAPE = ["--dim", "768", "--layers", "12", "--heads", "12", "--kv-heads", "12", "--hidden", "2048",
         "--sentencepiece", SP_MODEL, "--vocab", "32000"]
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMPI_MCA_btl": "self,vader"}


def run(lorad, job, out, ranks):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [lorad, "train", job, "--out", out, "--threads", "1"]
    if ranks > 1:
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "core", "-np", str(ranks)] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        m = [json.loads(line) for line in f]
    # steps after the first: the first carries page faults of the mapped base and OpenBLAS warm-up
    tokens = m[-1]["tokens_seen"] - m[0]["tokens_seen"]
    seconds = m[-1]["elapsed_s"] - m[0]["elapsed_s"]
    step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(m, m[1:])]
    coll = [x.get("collective_s", 0.0) for x in m[1:]]
    return {"tok_s": tokens / seconds, "step_s": statistics.median(step_s),
            "coll_share": sum(coll) / sum(step_s), "coll_s": statistics.median(coll),
            "bytes": m[-1].get("collective_bytes", 0), "losses": [x["train_loss"] for x in m]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lorad", default=os.path.join(SOURCE, "build", "release", "daemon", "lorad"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    if not shutil.which("mpirun"):
        sys.exit("mpirun not found (apt install openmpi-bin)")
    work = a.work or tempfile.mkdtemp(prefix="lorad-bench-mpi-")
    model = os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, "config.json")):
        subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), model] + SHAPE,
                       check=True, stdout=subprocess.DEVNULL)
    rng = random.Random(1)
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as f:
        for _ in range(4 * a.steps):
            f.write(json.dumps({"input_ids": [rng.randrange(3, 32000) for _ in range(512)]}) + "\n")
    job = os.path.join(work, "job.json")
    with open(job, "w") as f:
        json.dump({"model": model, "training_file": data, "seed": 1,
                   "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_len": 512, "max_steps": a.steps,
                                       "learning_rate": 1e-4, "checkpoint_every_steps": 1000},
                   "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}, f)
    print(f"110M shape, seq 512, global batch 4, r=8 q,v, {a.steps} steps, 1 thread per process; "
          f"host has {os.cpu_count()} cores")
    ratios = []
    for k in range(a.rounds):
        one = run(a.lorad, job, os.path.join(work, "k1"), 1)
        two = run(a.lorad, job, os.path.join(work, "k2"), 2)
        worst = max(abs(x - y) / abs(x) for x, y in zip(one["losses"], two["losses"]))
        ratios.append(two["tok_s"] / one["tok_s"])
        print(f"round {k + 1}: K=1 {one['tok_s']:.1f} tok/s ({one['step_s']:.2f} s/step), "
              f"K=2 {two['tok_s']:.1f} tok/s ({two['step_s']:.2f} s/step): {ratios[-1]:.2f}x; "
              f"sums {two['bytes'] / 1e6:.3f} MB/step/rank, {two['coll_s'] * 1e3:.1f} ms/step = "
              f"{100 * two['coll_share']:.1f}% of the step; losses agree to {worst:.1e}")
    print(f"median K=2 / K=1 tokens/s: {statistics.median(ratios):.2f}x over {a.rounds} rounds")


if __name__ == "__main__":
    main()
