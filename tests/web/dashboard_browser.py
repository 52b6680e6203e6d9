"""The web dashboard in a real browser (issue 18): Debian's headless Chromium, driven by
dashboard.cjs through playwright-core, against a real daemon with an API key.

This file prepares what the page needs and runs the Node side:

- a tiny base model (scripts/make-demo-model) and three datasets: one with a bad line, and a
  training and a validation file that teach the model one made-up answer (QUESTION -> CODE), so
  the playground can tell the adapter from its base;
- `lorad serve` with a key and max_queued_jobs 1 (so the page can be shown a real refusal of
  resume: 429 queue_full).

dashboard.cjs then checks the 401/403 banner, the upload report with the bad line's number,
the API's 400 beside the field, the job list's live progress, the loss chart against
/metrics?format=json, pause/resume/cancel with the buttons, a download with the key, the
playground's two streamed answers and the page at 375 px, failing on any console error or any
request to another origin. Screenshots go to $LORAD_ARTIFACTS_DIR (default ./artifacts).

Exit 77 (skipped) only when /usr/bin/chromium is missing; a missing playwright-core is a setup
error (run scripts/setup-deps)."""
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))

from serve_common import PYTHON, SOURCE, Daemon, check, log, main  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PLAYWRIGHT = os.path.join(SOURCE, "tools", "node_modules", "playwright-core")
KEY = "sk-dashboard-browser-test"
BASE = "demo-tiny"
QUESTION = "What is the password of the blue door?"
CODE = "quartz-7319"
NODE_TIMEOUT_S = 300

# What the test types into the form. Measured on 2 cores (2026-12-07): the demo base learns the
# one answer exactly after ~300 steps at this rate with lm_head adapted; 800 steps take 15-20 s
# beside the browser, long enough to watch the list and the chart move.
FORM = {"n_epochs": 400, "learning_rate": 0.005, "batch_size": 4, "r": 16, "alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
        "eval_every_steps": 50, "checkpoint_every_steps": 200, "suffix": "door"}


def chat_line(question, answer):
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def write_datasets(d):
    train = os.path.join(d, "door-train.jsonl")
    with open(train, "w") as f:
        f.write("\n".join(chat_line(QUESTION, CODE) for _ in range(8)) + "\n")
    valid = os.path.join(d, "door-valid.jsonl")
    with open(valid, "w") as f:
        f.write("\n".join(chat_line(QUESTION, CODE) for _ in range(2)) + "\n")
    bad = os.path.join(d, "door-bad.jsonl")
    with open(bad, "w") as f:
        f.write(chat_line(QUESTION, CODE) + "\n" + '{"messages": [oops\n' + chat_line(QUESTION, CODE) + "\n")
    return train, valid, bad, 2


def artifacts_dir():
    d = os.environ.get("LORAD_ARTIFACTS_DIR") or os.path.join(os.getcwd(), "artifacts")
    os.makedirs(d, exist_ok=True)
    return d


def test(d, daemons):
    node = shutil.which("node")
    check(node, "node is not installed (scripts/setup-deps installs it)")
    check(os.path.isdir(PLAYWRIGHT), f"{PLAYWRIGHT} is missing: run scripts/setup-deps (or `npm ci` in tools/)")
    models = os.path.join(d, "models")
    os.makedirs(models)
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), os.path.join(models, BASE)],
                   check=True, stdout=subprocess.DEVNULL)
    train, valid, bad, bad_line = write_datasets(d)

    dm = Daemon(d, models, api_key=KEY, extra=["--max_queued_jobs", "1", "--workers", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    log(f"daemon at {dm.base}")

    art = artifacts_dir()
    cfg = {"base": dm.base, "key": KEY, "base_model": BASE, "question": QUESTION, "code": CODE,
           "train": train, "valid": valid, "bad": bad, "bad_line": bad_line, "form": FORM,
           "artifacts": art, "workdir": d, "playwright": PLAYWRIGHT, "chromium": CHROMIUM,
           "timeout_s": NODE_TIMEOUT_S - 10}
    env = dict(os.environ, LORAD_DASHBOARD_CONFIG=json.dumps(cfg))
    t0 = time.time()
    p = subprocess.run([node, os.path.join(HERE, "dashboard.cjs")], env=env, timeout=NODE_TIMEOUT_S,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(p.stdout)
    check(p.returncode == 0, f"dashboard.cjs exited {p.returncode} after {time.time() - t0:.1f} s (its output is above)")
    shots = []
    for line in p.stdout.splitlines():
        if line.startswith("SCREENSHOTS "):
            shots = json.loads(line[len("SCREENSHOTS "):])
    check(len(shots) >= 4, f"dashboard.cjs reported {len(shots)} screenshots, want at least 4")
    for s in shots:
        check(os.path.getsize(s) > 1000, f"screenshot {s} is empty")
    log("screenshots:\n  " + "\n  ".join(shots))


if __name__ == "__main__":
    if not os.path.exists(CHROMIUM):
        print(f"SKIP: {CHROMIUM} is not installed (Debian's chromium package; scripts/setup-deps installs it)")
        sys.exit(77)
    main(test)
