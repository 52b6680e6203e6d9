"""Exact resume: a run killed with SIGKILL at random moments (and one paused with SIGINT), then
resumed with --resume, must end with adapter files byte-identical to an uninterrupted run's, and its
metrics history must be the uninterrupted one's: every step once, the same losses (the whole
held-out set's at the checkpoints too, so a run killed and resumed around its full validation passes
reports what the uninterrupted one does)."""
import os
import random
import signal
import subprocess
import time

from train_common import LORAD, check, main, make_model, metrics, train, write_job, write_jsonl

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def dataset(rng, n):
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        completion = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run_until(job, out, resume, kill_after_steps, sig, rng):
    """Starts lorad train and sends sig once metrics.jsonl has kill_after_steps lines (plus a random
    few milliseconds, so the signal may land inside a step or a checkpoint write)."""
    args = [LORAD, "train", job, "--out", out] + (["--resume"] if resume else [])
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 300
    while p.poll() is None and lines(path) < kill_after_steps and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(rng.random() * 0.05)
    if p.poll() is None:
        p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def test(d):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seed_note = rng.randint(0, 1 << 30)
    rng = random.Random(seed_note)
    print(f"random seed of this test run: {seed_note}")
    model = make_model(os.path.join(d, "model"))
    write_jsonl(os.path.join(d, "train.jsonl"), dataset(random.Random(5), 80))
    job = write_job(os.path.join(d, "job.json"), model=model, training_file=os.path.join(d, "train.jsonl"), seed=11,
                    hyperparameters={"n_epochs": 3, "batch_size": 3, "gradient_accumulation_steps": 2,
                                     "learning_rate": 2e-3, "warmup_steps": 2, "lr_scheduler": "cosine",
                                     "max_seq_len": 48, "packing": True, "eval_every_steps": 4,
                                     "checkpoint_every_steps": 3, "keep_checkpoints": 2, "threads": 2},
                    lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]})

    ref = os.path.join(d, "uninterrupted")
    train(job, ref)
    want = metrics(ref)
    total = want[-1]["total_steps"]
    check(total >= 12, f"the test needs a longer run, got {total} steps")
    check([m["step"] for m in want] == list(range(1, total + 1)), "uninterrupted run has a gap in metrics.jsonl")
    # the held-out set's whole-set figures at every scheduled checkpoint (every 3 steps) and the last
    full = [m["step"] for m in want if "full_valid_loss" in m]
    check(full == [s for s in range(1, total + 1) if s % 3 == 0 or s == total],
          f"full_valid_loss at steps {full}, want every checkpoint step")

    def same_as_ref(out, what):
        for name in ("adapter_model.safetensors", "adapter.gguf", "adapter_config.json"):
            a = open(os.path.join(ref, "adapter", name), "rb").read()
            b = open(os.path.join(out, "adapter", name), "rb").read()
            check(a == b, f"{what}: adapter/{name} differs from the uninterrupted run's")
        got = metrics(out)
        check([m["step"] for m in got] == list(range(1, total + 1)),
              f"{what}: metrics steps are {[m['step'] for m in got]}, want 1..{total} once each")
        for g, w in zip(got, want):
            for key in ("train_loss", "grad_norm", "lr", "tokens_seen", "valid_loss", "full_valid_loss",
                        "full_valid_mean_token_accuracy"):
                check(g.get(key) == w.get(key), f"{what}: step {g['step']} {key} {g.get(key)} != {w.get(key)}")

    # Two SIGKILLs at random steps, then a resume to the end.
    killed = os.path.join(d, "killed")
    k1 = rng.randint(1, total // 2)
    k2 = rng.randint(k1 + 1, total - 1)
    rc, _ = run_until(job, killed, False, k1, signal.SIGKILL, rng)
    check(rc == -signal.SIGKILL, f"first run was not killed (rc {rc}); the run is too short for the test")
    rc, _ = run_until(job, killed, True, k2, signal.SIGKILL, rng)
    check(rc in (-signal.SIGKILL, 0), f"second run exited {rc}")
    train(job, killed, "--resume")
    same_as_ref(killed, f"killed at steps ~{k1} and ~{k2}")

    # SIGINT pauses with a checkpoint; --resume continues.
    paused = os.path.join(d, "paused")
    # at most half way, so the steps left outlast run_until's random delay of up to 50 ms (with
    # k near the end a fast host finished the run before the signal was sent)
    k = rng.randint(1, total // 2)
    rc, err = run_until(job, paused, False, k, signal.SIGINT, rng)
    check(rc == 130, f"SIGINT should pause with exit 130, got {rc}: {err[-500:]}")
    check("--resume" in err, f"the pause message should say how to resume: {err[-500:]}")
    check(lines(os.path.join(paused, "metrics.jsonl")) >= k, "paused before the requested step")
    train(job, paused, "--resume")
    same_as_ref(paused, f"paused at step ~{k}")

    # A resume under a different spec is refused, naming the reason.
    other = write_job(os.path.join(d, "other.json"), model=model, training_file=os.path.join(d, "train.jsonl"), seed=12,
                      hyperparameters={"n_epochs": 3, "batch_size": 3, "gradient_accumulation_steps": 2,
                                       "learning_rate": 2e-3, "warmup_steps": 2, "max_seq_len": 48, "packing": True,
                                       "checkpoint_every_steps": 3, "threads": 2},
                      lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    p = train(other, killed, "--resume", check_rc=False)
    check(p.returncode == 1 and "different job spec" in p.stderr, f"resume with another spec: {p.returncode} {p.stderr[-400:]}")


if __name__ == "__main__":
    main(test)
