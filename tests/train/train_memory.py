#!/usr/bin/env python3
"""The memory estimate against the kernel's own count.

`lorad train` prints the estimate it checks against --memory-limit (and that the daemon checks
against memory_limit and schedules by). Here each run's peak resident set is measured by the
kernel (wait4's ru_maxrss), independently of lorad, at several small shapes: float32 and BF16
weights, a byte vocabulary and the 32000-piece SentencePiece one, activation checkpointing,
gradient accumulation and one or two threads. The estimate covers what a job allocates, not the
process itself, so the process's own footprint is measured too (the peak of `lorad version`, the
same binary and libraries) and added. The issue's bound: within 15% of the measured peak.

`lorad inspect --job` must give the same estimate before any data is read (less the dataset index,
80 bytes a line), and a --memory-limit below the estimate must refuse the job before it allocates
its activations, naming the field to change and both sizes in bytes."""
import json
import os
import random
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from train_common import LORAD, SANITIZED, SHARED, SOURCE, Fail, check, main, write_job  # noqa: E402

TOLERANCE = 0.15
N_LINES = 48
LINE_TOKENS = 1100


def peak_rss(cmd, env=None):
    """(peak RSS in bytes, combined output, exit status) of cmd run to completion."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    return usage.ru_maxrss * 1024, out, os.waitstatus_to_exitcode(status)


def make_model(d, **kw):
    args = [sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), d]
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return d


def estimate_of(out):
    m = re.search(r"memory estimate [^(]*\((\d+) bytes", out)
    check(m, f"lorad train printed no memory estimate:\n{out[-2000:]}")
    return int(m.group(1))


def inspect_total(model, job):
    p = subprocess.run([LORAD, "inspect", model, "--job", job, "--json"], capture_output=True, text=True)
    check(p.returncode == 0, f"lorad inspect --job exited {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)["memory"]


def check_attention_memory_is_linear(d, model, data):
    """With checkpointing, activations grow with layers x seq x dim: doubling seq_len at most
    doubles them (plus the per-thread score blocks, also linear in T), where a kept (heads x T x T)
    per layer would add 3 x L x H x T^2 x 4 bytes going from T to 2T."""
    sizes = {}
    for t in (1024, 2048):
        job = write_job(os.path.join(d, f"linear-{t}.json"), model=model, training_file=data,
                        hyperparameters=dict(n_epochs=1, max_steps=1, batch_size=1, max_seq_len=t, threads=2,
                                             activation_checkpointing=True),
                        lora=dict(r=8, alpha=16, target_modules="all-linear"))
        mem = inspect_total(model, job)
        sizes[t] = mem["activation_bytes"] + mem["scratch_bytes"]
    quadratic = 3 * 4 * 16 * 1024 ** 2 * 4
    grown = sizes[2048] - 2 * sizes[1024]
    print(f"activations + scratch: {sizes[1024]} bytes at T=1024, {sizes[2048]} at T=2048 "
          f"(beyond doubling: {grown}; a kept score matrix would add {quadratic})")
    check(sizes[2048] <= 2.05 * sizes[1024] and grown < quadratic / 20,
          f"activations + scratch grow from {sizes[1024]} to {sizes[2048]} bytes when seq_len doubles: not linear")


def test(d):
    rng = random.Random(7)
    data = os.path.join(d, "data.jsonl")
    with open(data, "w") as f:
        for _ in range(N_LINES):  # longer than max_seq_len: every sample is a full row
            f.write(json.dumps({"input_ids": [rng.randrange(3, 255) for _ in range(LINE_TOKENS)]}) + "\n")
    byte_f32 = make_model(os.path.join(d, "byte-f32"), dim=256, layers=4, heads=8, kv_heads=4, hidden=768)
    byte_bf16 = make_model(os.path.join(d, "byte-bf16"), dim=512, layers=6, heads=8, kv_heads=2, hidden=1376,
                           dtype="BF16")
    sp = make_model(os.path.join(d, "sp-32000"), dim=384, layers=3, heads=6, kv_heads=2, hidden=1024,
                    sentencepiece=os.path.join(SHARED, "llama2-tokenizer.model"), vocab=32000)
    # A Q4_K_M-style GGUF (kept quantised in memory; its position limit is 128, so a wide batch gives
    # the activations the weight they have in the other cases: at 1024 tokens fixed buffers the
    # run never touches make any model's estimate ~20% high, f32 ones too, measured).
    subprocess.run([sys.executable, os.path.join(SOURCE, "tests", "formats", "write_kquant_fixture.py"), d],
                   check=True, stdout=subprocess.DEVNULL)
    kquant = os.path.join(d, "gguf_q4_k_m.gguf")
    # Many heads and a long sequence: a (heads x T x T) score matrix kept per layer would be
    # 4 layers x 16 x 2048^2 x 4 bytes = 1 GiB here, far above everything else.
    many_heads = make_model(os.path.join(d, "byte-16-heads"), dim=256, layers=4, heads=16, kv_heads=4, hidden=768)
    long_data = os.path.join(d, "long.jsonl")
    with open(long_data, "w") as f:
        for _ in range(4):
            f.write(json.dumps({"input_ids": [rng.randrange(3, 255) for _ in range(2100)]}) + "\n")
    check_attention_memory_is_linear(d, many_heads, long_data)
    cases = [
        (many_heads, dict(batch_size=1, max_seq_len=2048, threads=2, activation_checkpointing=True), {}),
        (byte_f32, dict(batch_size=4, max_seq_len=512, threads=2), {}),
        (byte_f32, dict(batch_size=4, max_seq_len=512, threads=1, activation_checkpointing=True), {}),
        (byte_f32, dict(batch_size=2, max_seq_len=1024, threads=2, gradient_accumulation_steps=4), {"dropout": 0.1}),
        (byte_bf16, dict(batch_size=2, max_seq_len=512, threads=2), {}),
        (byte_bf16, dict(batch_size=2, max_seq_len=512, threads=2, compute_dtype="auto"), {}),  # bf16 where the CPU can
        (kquant, dict(batch_size=24, max_seq_len=128, threads=2), {}),
        (kquant, dict(batch_size=24, max_seq_len=128, threads=2, activation_checkpointing=True), {"r": 16}),
        (sp, dict(batch_size=2, max_seq_len=512, threads=2), {}),
        (sp, dict(batch_size=2, max_seq_len=512, threads=2, activation_checkpointing=True), {"r": 16}),
    ]
    baseline, _, rc = peak_rss([LORAD, "version"])
    check(rc == 0, "lorad version failed")
    print(f"process baseline (peak RSS of lorad version): {baseline / 2**20:.1f} MiB")
    for i, (model, hp, lora) in enumerate(cases):
        hyper = dict(n_epochs=1, max_steps=2)
        hyper.update(hp)
        if SANITIZED:  # no RSS to compare there (below): half the rows, one step
            hyper.update(max_seq_len=hp["max_seq_len"] // 2, max_steps=1)
            hp = hyper
        lo = dict(r=8, alpha=16, target_modules="all-linear")
        lo.update(lora)
        job = write_job(os.path.join(d, f"job{i}.json"), model=model,
                        training_file=long_data if hp["max_seq_len"] > LINE_TOKENS else data, hyperparameters=hyper,
                        lora=lo)
        out_dir = os.path.join(d, f"out{i}")
        peak, out, rc = peak_rss([LORAD, "train", job, "--out", out_dir])
        check(rc == 0, f"case {i}: lorad train exited {rc}:\n{out[-3000:]}")
        est = estimate_of(out)
        ratio = (est + baseline) / peak
        print(f"case {i} {os.path.basename(model)} {hp} {lora}: peak {peak / 2**20:.1f} MiB, "
              f"estimate + baseline {(est + baseline) / 2**20:.1f} MiB, ratio {ratio:.3f}")
        # Under ASan the peak is its shadow and quarantine more than lorad's: every other check runs
        # there, the kernel's count is compared in the release run.
        check(SANITIZED or abs(ratio - 1) <= TOLERANCE,
              f"case {i}: estimate {est} + baseline {baseline} is {ratio:.3f} x the measured peak {peak}")

        mem = inspect_total(model, job)
        check(mem["data_bytes"] == 0, f"case {i}: inspect counted a dataset it did not read: {mem}")
        n_lines = 4 if hp["max_seq_len"] > LINE_TOKENS else N_LINES
        check(est - mem["total_bytes"] == 80 * n_lines,
              f"case {i}: lorad train's estimate {est} is not inspect's {mem['total_bytes']} plus the "
              f"dataset index of {n_lines} lines")

        # Below the estimate: refused before the activations exist, naming the field and the bytes.
        limit = est - mem["activation_bytes"] // 2
        refused_peak, out, rc = peak_rss([LORAD, "train", job, "--out", out_dir + "-refused",
                                          "--memory-limit", str(limit)])
        check(rc != 0, f"case {i}: a --memory-limit of {limit} below the estimate {est} was not refused")
        check(f"({limit} bytes)" in out and f"({est} bytes" in out and "[hyperparameters.batch_size]" in out,
              f"case {i}: the refusal does not name both sizes and the field:\n{out[-1500:]}")
        check(SANITIZED or refused_peak < baseline + est - mem["activation_bytes"],
              f"case {i}: the refused run peaked at {refused_peak} bytes: it allocated before checking")
        check(not os.path.exists(os.path.join(out_dir + "-refused", "adapter")), "a refused run wrote an adapter")

    # Below the base weights alone: the model is what must change.
    limit = mem["base_bytes"] // 2
    _, out, rc = peak_rss([LORAD, "train", job, "--out", os.path.join(d, "refused-model"), "--memory-limit",
                           str(limit)])
    check(rc != 0 and "[model]" in out and f"({limit} bytes)" in out,
          f"a limit below the base weights was not refused naming the model:\n{out[-1500:]}")


if __name__ == "__main__":
    main(test)
