"""SIGTERM while clients hammer the API: the shutdown must not free what a request handler can still reach.

Request handlers run on libmicrohttpd's connection threads and reach the worker pool (create,
cancel and resume wake it; /metrics reads its live rates) and the store. Each round starts a daemon
with two workers busy on long jobs and more jobs queued, then runs, all at once: clients that
pause/resume the queued jobs, clients that create and cancel jobs, clients that GET the job list, a
job, its events, /metrics and /readyz, and a few SSE streams; then SIGTERM lands, at a different
moment each round. The daemon must exit 0 within a few seconds (SSE streams included) and log
"stopped", with no AddressSanitizer or UndefinedBehaviorSanitizer report in its output.

The point is the sanitizer build (label "asan": scripts/test's sanitizer pass runs it against the
ASan+UBSan lorad, where a use after free aborts with a report); against the release build it still
checks the exit status and the prompt exit under load. All clients are the real curl, several
requests per invocation over one keep-alive connection so that the load comes from many
concurrent requests rather than from process start-up."""
import json
import os
import re
import signal
import subprocess
import threading
import time

from serve_common import LORAD, Daemon, Fail, check, log, main, make_model, write_text_dataset

# When SIGTERM lands after the clients start, one round each: early (handlers just started), while
# jobs are being paused and resumed, and later with the queue churned.
DELAYS = [0.05, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0]
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer")

LORA = {"r": 4, "alpha": 8}


def long_spec(fid, seed):
    """A job that runs far longer than a round (each round SIGTERMs it back to the queue)."""
    return {"model": "tiny", "training_file": fid, "seed": seed,
            "hyperparameters": {"n_epochs": 1000, "batch_size": 4, "max_seq_len": 64, "threads": 1,
                                "checkpoint_every_steps": 100000},
            "lora": LORA}


class Clients:
    """Threads that each run curl in a loop until stop(); they ignore failures (connection refused
    once the daemon is gone is the expected end)."""

    def __init__(self):
        self.stopping = threading.Event()
        self.threads = []
        self.lock = threading.Lock()
        self.requests = 0

    def loop(self, make_cmd, per_call):
        def run():
            while not self.stopping.is_set():
                subprocess.run(make_cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
                with self.lock:
                    self.requests += per_call
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def create_cancel(self, dm, spec_path):
        """POST a job, then cancel it: both kick the workers."""
        def run():
            while not self.stopping.is_set():
                p = subprocess.run(dm.curl_args() + ["-H", "Content-Type: application/json", "--data-binary",
                                                     "@" + spec_path, f"{dm.base}/v1/fine_tuning/jobs"],
                                   capture_output=True, text=True, timeout=60)
                m = re.search(r'"id":"(ftjob-[A-Za-z0-9]+)"', p.stdout)
                if m:
                    subprocess.run(dm.curl_args() + ["-X", "POST", f"{dm.base}/v1/fine_tuning/jobs/{m.group(1)}/cancel"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
                with self.lock:
                    self.requests += 2 if m else 1
                if not m:
                    time.sleep(0.01)  # refused (stopping): do not spin on fork+exec
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=70)


def one_round(d, models, data, n, delay, daemons):
    dm = Daemon(d, models, extra=["--workers", "2", "--threads-per-job", "1"], name=f"round{n}")
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    fid = dm.upload_ok(data)["id"]
    jobs = [dm.create_job_ok(long_spec(fid, 100 + i))["id"] for i in range(6)]
    running = [dm.wait_job(j, "running", timeout=60)["id"] for j in jobs[:2]]
    spec_path = os.path.join(d, f"round{n}-spec.json")
    with open(spec_path, "w") as f:
        json.dump(long_spec(fid, 7), f)
    J = f"{dm.base}/v1/fine_tuning/jobs"
    base = dm.curl_args() + ["--max-time", "20"]
    cl = Clients()
    sse = [dm.sse_start(j, timeout=60) for j in running + jobs[2:3]]
    # Pause/resume the queued jobs: every resume wakes the workers.
    for j in jobs[2:]:
        cl.loop(lambda j=j: base + ["-X", "POST"] + [f"{J}/{j}/pause", f"{J}/{j}/resume"] * 8, 16)
    # Pausing and resuming a running job makes the workers hand jobs back and claim others.
    cl.loop(lambda: base + ["-X", "POST"] + [f"{J}/{running[0]}/pause", f"{J}/{running[0]}/resume"] * 4, 8)
    for _ in range(2):
        cl.create_cancel(dm, spec_path)
    reads = [J, f"{J}/{jobs[0]}", f"{J}/{jobs[1]}/events", f"{dm.base}/metrics", f"{dm.base}/readyz"]
    for _ in range(3):
        cl.loop(lambda: base + reads * 4, len(reads) * 4)
    time.sleep(delay)
    with cl.lock:
        before = cl.requests
    t0 = time.time()
    dm.signal(signal.SIGTERM)
    rc = dm.wait_exit(30)
    took = time.time() - t0
    cl.stop()
    for p in sse:
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            check(False, f"round {n}: an SSE client was still connected 10 s after the daemon exited")
    if rc is None:
        dm.kill()
    with open(dm.logs[-1], errors="replace") as f:
        out = f.read()
    report = SANITIZER_REPORT.search(out)
    check(not report, f"round {n} (SIGTERM {delay} s into the load): a sanitizer report:\n{out[report.start() - 200 if report else 0:][:6000]}")
    check(rc is not None, f"round {n}: lorad serve did not exit within 30 s of SIGTERM (SSE streams open)")
    check(rc == 0, f"round {n}: lorad serve exited {rc} on SIGTERM")
    check(re.search(r"\binfo stopped$", out, re.M), f"round {n}: no 'stopped' line in the log")
    check(took < 15, f"round {n}: SIGTERM took {took:.1f} s to stop the daemon")
    log(f"round {n}: SIGTERM {delay} s into the load ({before} requests by then), exit 0 in {took:.2f} s")


def test(d, daemons):
    with open(LORAD, "rb") as f:
        sanitized = b"__asan_init" in f.read()
    log(f"lorad {'with' if sanitized else 'without'} AddressSanitizer: {LORAD}")
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    # Every round runs even after one fails, so the output says how often the shutdown went wrong.
    failed = []
    for n, delay in enumerate(DELAYS):
        try:
            one_round(d, models, data, n, delay, daemons)
        except Fail as e:
            print(f"FAIL: {e}", flush=True)
            failed.append(n)
            daemons[-1].kill()
    check(not failed, f"{len(failed)} of {len(DELAYS)} rounds failed: {failed}")


if __name__ == "__main__":
    # A sanitizer report must end the daemon with a non-zero status even when ctest is run directly
    # (scripts/test sets the same options).
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    main(test)
