"""What `lorad train` prints while it runs (issue 19): the forms users know, never a line a step.

One small job (the demo's data on a smaller demo model, 96 steps, an evaluation every 32) runs
four ways, each checked against the run's own metrics.jsonl:
- stdout not a terminal: a line at the first step, at each evaluation and at the last, and between
  them at most one per 10 s of elapsed time; each line's "smoothed" loss is the bias-corrected
  exponential moving average (weight 0.9 on the past) of metrics.jsonl's train_loss up to that
  step, computed here; the last step's line (it checkpoints) has full_valid_loss and full_valid_acc;
- on a terminal (a pty from util-linux's `script`): the live line is redrawn in place (a carriage
  return per step, a handful of newlines in all) and ends at 100% with step total/total;
- --quiet: stdout is only the final "done:" line;
- --json: every line of stdout is a JSON object; one "step" event per step whose metrics equal
  metrics.jsonl's line for that step (full_valid_* at the last step only), and a last "result"
  event with rc 0."""
import json
import os
import re
import shutil
import subprocess

from train_common import LORAD, SOURCE, check, main, metrics, train, write_job

STEPS, EVAL_EVERY = 96, 32


def job(d):
    model = os.path.join(d, "model")
    subprocess.run([os.environ.get("LORAD_PYTHON", "/usr/bin/python3"), os.path.join(SOURCE, "scripts", "make-demo-model"),
                    model, "--dim", "64", "--layers", "2", "--hidden", "96"], check=True, capture_output=True)
    return write_job(os.path.join(d, "job.json"), model=model, training_file=os.path.join(SOURCE, "demo", "train.jsonl"),
                     validation_file=os.path.join(SOURCE, "demo", "valid.jsonl"), seed=3,
                     hyperparameters={"n_epochs": 4, "batch_size": 4, "learning_rate": 0.003,
                                      "eval_every_steps": EVAL_EVERY, "checkpoint_every_steps": 1000},
                     lora={"r": 8, "alpha": 16}, data={"format": "messages", "template": "chatml"})


def smoothed(losses):
    out, ema, w = [], 0.0, 0.0
    for x in losses:
        ema = 0.9 * ema + 0.1 * x
        w = 0.9 * w + 0.1
        out.append(ema / w)
    return out


def out_dir(d, name):
    o = os.path.join(d, name)
    shutil.rmtree(o, ignore_errors=True)
    return o


def check_lines(d, j):
    o = out_dir(d, "lines")
    p = train(j, o)
    ms = metrics(o)
    check(len(ms) == STEPS, f"metrics.jsonl has {len(ms)} steps, want {STEPS}")
    ema = smoothed([m["train_loss"] for m in ms])
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("step ")]
    steps = [int(re.match(r"step (\d+)/", ln).group(1)) for ln in rows]
    evals = [m["step"] for m in ms if m.get("valid_loss") is not None]
    elapsed = ms[-1]["elapsed_s"]
    check(steps and steps[0] == 1 and steps[-1] == STEPS, f"progress lines at steps {steps}: want the first and the last")
    for s in evals:
        check(s in steps, f"no progress line at evaluation step {s}: lines at {steps}")
    limit = 2 + len(evals) + int(elapsed / 10) + 1
    check(len(rows) <= limit, f"{len(rows)} progress lines for {STEPS} steps in {elapsed:.1f} s (limit {limit}): "
                              f"a line a step is what this must not be")
    for ln, s in zip(rows, steps):
        g = re.search(r"loss ([0-9.]+) \(smoothed ([0-9.]+)\)", ln)
        check(g, f"no 'loss X (smoothed Y)' in: {ln}")
        check(abs(float(g.group(1)) - ms[s - 1]["train_loss"]) <= 6e-5, f"step {s}: loss {g.group(1)}, metrics {ms[s - 1]['train_loss']}")
        check(abs(float(g.group(2)) - ema[s - 1]) <= 6e-5, f"step {s}: smoothed {g.group(2)}, the moving average is {ema[s - 1]:.5f}")
    check(p.stdout.rstrip().splitlines()[-1].startswith("done: "), f"last line: {p.stdout.rstrip().splitlines()[-1]!r}")
    # the last step checkpoints: its line has the whole validation set's figures, as metrics.jsonl
    g = re.search(r" full_valid_loss ([0-9.]+) full_valid_acc ([0-9.]+)$", rows[-1])
    check(g, f"the last step's line has no full_valid_loss: {rows[-1]}")
    check(abs(float(g.group(1)) - ms[-1]["full_valid_loss"]) <= 6e-5
          and abs(float(g.group(2)) - ms[-1]["full_valid_mean_token_accuracy"]) <= 6e-4,
          f"last line {rows[-1]!r} vs metrics {ms[-1]}")
    print(f"not a terminal: {len(rows)} progress lines for {STEPS} steps ({len(evals)} evaluations, {elapsed:.1f} s)")
    return ms


def check_tty(d, j):
    o = out_dir(d, "tty")
    cmd = " ".join([LORAD, "train", j, "--out", o])
    p = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, timeout=600)
    raw = p.stdout.decode(errors="replace")
    check(p.returncode == 0, f"lorad train on a pty exited {p.returncode}:\n{raw[-2000:]}")
    redraws = raw.count("\r\x1b[K")
    check(redraws >= STEPS, f"{redraws} in-place redraws for {STEPS} steps: the line is not live")
    newlines = raw.count("\n")
    check(newlines <= 20, f"{newlines} lines on the terminal for {STEPS} steps")
    lives = [seg for seg in raw.split("\r\x1b[K") if re.match(r" *\d+% \[", seg)]
    last = lives[-1] if lives else ""
    check(re.search(rf"100% \[#+\] {STEPS}/{STEPS} loss [0-9.]+ lr \S+ \d+ tok/s \d\d:\d\d<\d\d:\d\d", last),
          f"the live line does not end at 100%: {last[:200]!r}")
    print(f"terminal: {redraws} redraws, {newlines} newlines")


def check_quiet(d, j):
    o = out_dir(d, "quiet")
    p = train(j, o, "--quiet")
    lines = p.stdout.strip().splitlines()
    check(len(lines) == 1 and lines[0].startswith("done: "), f"--quiet printed: {p.stdout[-1000:]!r}")


def check_json(d, j):
    o = out_dir(d, "json")
    p = train(j, o, "--json")
    events = []
    for k, ln in enumerate(p.stdout.splitlines()):
        try:
            events.append(json.loads(ln))
        except ValueError:
            check(False, f"--json stdout line {k + 1} is not JSON: {ln!r}")
    steps = [e["metrics"] for e in events if e.get("event") == "step"]
    ms = metrics(o)
    check(len(steps) == STEPS, f"--json: {len(steps)} step events, want {STEPS}")
    for a, b in zip(steps, ms):
        for key in ("step", "total_steps", "tokens_seen"):
            check(a.get(key) == b.get(key), f"--json step {b['step']}: {key} {a.get(key)} vs metrics.jsonl {b.get(key)}")
        check(("full_valid_loss" in a) == ("full_valid_loss" in b) == (b["step"] == STEPS),
              f"--json step {b['step']}: full_valid_loss in the event: {'full_valid_loss' in a}, in metrics.jsonl: "
              f"{'full_valid_loss' in b} (want them at the last step, the only checkpoint)")
        for key in ("train_loss", "lr", "grad_norm", "full_valid_loss", "full_valid_mean_token_accuracy"):
            if key not in b:
                continue
            check(abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(b[key])),  # metrics.jsonl keeps 10 digits
                  f"--json step {b['step']}: {key} {a[key]} vs metrics.jsonl {b[key]}")
    check(events[-1].get("event") == "result" and events[-1].get("rc") == 0, f"--json last event: {events[-1]}")


def test(d):
    j = job(d)
    check_lines(d, j)
    check_tty(d, j)
    check_quiet(d, j)
    check_json(d, j)


if __name__ == "__main__":
    main(test)
