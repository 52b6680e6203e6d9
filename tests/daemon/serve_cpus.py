"""http_cpus and training_cpus (docs/daemon.md#cpus): the HTTP threads and the job's threads each
run on the CPUs the operator gave them, and bad lists stop the start naming the option.

The kernel says where each thread may run (/proc/PID/task/TID/status, Cpus_allowed_list) and
where it last ran (field 39 of .../stat), so the check is the kernel's accounting, not the log:
while a job trains and an SSE stream is open, the worker thread (named lorad-job-0) may run on
the training CPU only and did; the listener and connection threads only on the HTTP CPU, and an
open stream adds one there; the main thread keeps every CPU. Needs two CPUs (else skipped)."""
import os
import subprocess
import sys
import time

from serve_common import LORAD, Daemon, check, log, main, make_model, write_text_dataset


def threads(pid):
    """[(tid, name, Cpus_allowed_list, last CPU)] of every thread of pid."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(base + "/comm") as f:
                name = f.read().strip()
            with open(base + "/status") as f:
                allowed = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list:"))
            with open(base + "/stat") as f:
                last_cpu = int(f.read().rsplit(")", 1)[1].split()[36])  # field 39, counted after comm
        except (OSError, StopIteration):
            continue  # the thread ended while we looked
        out.append((int(tid), name, allowed, last_cpu))
    return out


def cpu_list(cpus):
    """The kernel's cpulist spelling of a sorted set of CPUs (ranges collapsed)."""
    cpus, parts, i = sorted(cpus), [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def check_config_errors(d, allowed):
    cases = [
        (["--http-cpus", "3-1"], "http_cpus", "ranges LO-HI"),
        (["--training-cpus", "0,,1"], "training_cpus", "ranges LO-HI"),
        (["--training-cpus", "5000"], "training_cpus", "below 1024"),
    ]
    outside = max(allowed) + 1
    if outside < 1024:
        cases.append((["--training-cpus", f"{min(allowed)},{outside}"], "training_cpus",
                      f"names CPU {outside}, but lorad may run on {cpu_list(allowed)} only"))
    conf = os.path.join(d, "bad.conf")
    with open(conf, "w") as f:
        f.write("# cpus\nport = 0\nhttp_cpus = 1-\n")
    for args, option, says in cases + [(["--config", conf], "http_cpus", f"{conf}:3:")]:
        full = [LORAD, "serve", "--check-config"] + (["--config", "/dev/null"] if "--config" not in args else []) + args
        r = subprocess.run(full, capture_output=True, text=True, timeout=30)
        msg = r.stderr + r.stdout
        check(r.returncode != 0, f"{' '.join(args)}: lorad serve --check-config exited 0 ({msg.strip()!r})")
        check(option in msg and says in msg, f"{' '.join(args)}: the error {msg.strip()!r} should name {option} "
              f"and say {says!r}")
    log(f"{len(cases) + 1} bad CPU lists refused at start, each naming its option")


def test(d, daemons):
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        print(f"skipped: needs two CPUs, this process may run on {allowed}")
        sys.exit(77)
    check_config_errors(d, allowed)
    train_cpu, http_cpu = allowed[0], allowed[1]
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"), dim=64, layers=2, hidden=128)
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 400)
    dm = Daemon(d, models, extra=["--http-cpus", str(http_cpu), "--training-cpus", str(train_cpu)])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    with open(dm.logs[-1]) as f:
        startup = f.read()
    # an automatic share counts the training CPUs: one here, so one thread
    check(" x 1 threads" in startup, f"with one training CPU a job should get 1 thread; the log says:\n{startup}")

    f = dm.upload_ok(data)
    job = dm.create_job_ok({"model": "tiny", "training_file": f["id"], "seed": 1,
                            "hyperparameters": {"n_epochs": 200, "batch_size": 2, "max_seq_len": 64,
                                                "checkpoint_every_steps": 100000}})
    dm.wait_step(job["id"], 2, timeout=120)
    pid = dm.proc.pid
    on_http = lambda snapshot: [r for r in snapshot if r[2] == str(http_cpu)]
    # the connection threads of the requests above end a moment after curl closes them: wait until
    # only the listener is left on the HTTP CPU, so the stream's thread is the one that appears
    deadline = time.time() + 10
    while len(on_http(threads(pid))) > 1 and time.time() < deadline:
        time.sleep(0.05)
    before = threads(pid)
    stream = dm.sse_start(job["id"])
    try:
        # the stream's connection thread exists once the daemon has answered its first bytes
        stream.stdout.readline()
        during = threads(pid)
    finally:
        stream.kill()
        stream.wait()
    dm.ok("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel")

    rows = "\n".join(f"  {t:7} {n:16} allowed {a:8} last ran on {c}" for t, n, a, c in during)
    log(f"threads with a job training and a stream open:\n{rows}")
    everything = cpu_list(allowed)
    main_thread = [r for r in during if r[0] == pid]
    check(main_thread and main_thread[0][2] == everything,
          f"the main thread should keep every CPU ({everything}):\n{rows}")
    workers = [r for r in during if r[1] == "lorad-job-0"]
    check(len(workers) == 1, f"one thread named lorad-job-0 expected:\n{rows}")
    check(workers[0][2] == str(train_cpu) and workers[0][3] == train_cpu,
          f"the job's worker should be allowed and have run on CPU {train_cpu} only:\n{rows}")
    compute = [r for r in during if r[1] == "lorad-compute"]
    check(all(r[2] == str(train_cpu) for r in compute), f"compute threads off the training CPU:\n{rows}")
    check(all(r[1].startswith("MHD-") for r in on_http(during)),
          f"only libmicrohttpd's threads (MHD-listen, MHD-connection) belong on the HTTP CPU:\n{rows}")
    check(len(on_http(during)) == len(on_http(before)) + 1,
          f"the open stream should add one thread on the HTTP CPU {http_cpu} "
          f"({len(on_http(before))} before, {len(on_http(during))} with it):\n{rows}")
    check(len(on_http(before)) >= 1, f"the HTTP listener thread should be on CPU {http_cpu}")
    others = [r for r in during if r[2] not in (str(http_cpu), str(train_cpu)) and r[0] != pid]
    log(f"threads left on every CPU (the store's, inference's): {[r[1] for r in others]}")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
