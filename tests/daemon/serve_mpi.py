#!/usr/bin/env python3
"""`lorad serve` with a [distributed] section (issue 16): every job runs as `mpirun -np 2 lorad
train --jsonl` on this host (loopback), and the daemon tracks it like a local job.

- A job succeeds; its metrics and adapter are the single-process `lorad train` run's to 1e-5
  relative (only the order of the sums differs), and its events say it ran on 2 ranks.
- Pause stops it at a checkpoint, resume continues it to the same adapter; cancel ends it within
  seconds and leaves no rank behind.
- A rank killed with SIGKILL: the job goes back to its last checkpoint (event job_restarted,
  status queued, then running) and still ends at the uninterrupted run's adapter.
- A rank stopped with SIGSTOP hangs the other in its sum: the collective timeout ends the run and
  the job restarts too; once distributed.max_restarts are used up, a lost rank fails the job.
Skipped (77) without mpirun or with a lorad built without MPI."""
import json
import os
import shutil
import signal
import struct
import subprocess
import time

from serve_common import LORAD, Daemon, Fail, check, log, main, make_model, reference_run, write_text_dataset

import numpy as np

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
REL = 1e-5
LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"}


def hp(n_epochs, **kw):
    # AdamW eps 1e-3: see tests/train/train_mpi.py (a small eps amplifies summation-order noise)
    return dict({"n_epochs": n_epochs, "batch_size": 4, "max_seq_len": 64, "learning_rate": 2e-3,
                 "adam_epsilon": 1e-3, "threads": 2, "checkpoint_every_steps": 1000}, **kw)


def tensors(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype="<f4")
            for k, v in header.items() if k != "__metadata__"}


def same_adapter(got_blob, ref_dir, what):
    with open(os.path.join(ref_dir, "adapter", "adapter_model.safetensors"), "rb") as f:
        ref = tensors(f.read())
    got = tensors(got_blob)
    check(sorted(got) == sorted(ref), f"{what}: adapter tensor names differ")
    for k in ref:
        scale = float(np.max(np.abs(ref[k]))) or 1.0
        err = float(np.max(np.abs(got[k].astype(np.float64) - ref[k])))
        check(err <= REL * scale, f"{what}: {k} differs from one process by {err} (largest value {scale})")


def same_losses(dm, job_id, ref_dir, what):
    with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
        ref = {m["step"]: m for m in map(json.loads, f)}
    got = {int(m["step"]): m for m in dm.metrics(job_id)}
    check(sorted(got) == sorted(ref), f"{what}: metrics steps {sorted(got)[:5]}... vs {sorted(ref)[:5]}...")
    for s, m in ref.items():
        check(abs(float(got[s]["train_loss"]) - m["train_loss"]) <= REL * abs(m["train_loss"]),
              f"{what}: step {s} train_loss {got[s]['train_loss']} vs one process {m['train_loss']}")


def final_adapter(dm, job):
    r = dm.get(f"/v1/models/{job['fine_tuned_model']}/adapter_model.safetensors")
    check(r.status == 200, f"adapter download: {r.status}")
    return r.body


def ranks_of(job_id):
    """{rank: pid} of the `lorad train` processes running job_id."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if b"train" not in cmd or not any(job_id.encode() in a for a in cmd) or b"mpirun" in cmd[0]:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if b"OMPI_COMM_WORLD_RANK" in env:
                out[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


def wait_ranks(job_id, n=2, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = ranks_of(job_id)
        if len(r) == n:
            return r
        time.sleep(0.05)
    raise Fail(f"job {job_id}: {n} rank processes did not appear: {ranks_of(job_id)}")


def wait_no_ranks(job_id, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not ranks_of(job_id):
            return
        time.sleep(0.1)
    check(False, f"job {job_id}: rank processes still alive {timeout} s after its end: {ranks_of(job_id)}")


def restarts(dm, job_id):
    return [e for e in dm.events(job_id) if e.get("type") == "job_restarted"]


def wait_restarted(dm, job_id, n, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = restarts(dm, job_id)
        if len(r) >= n:
            return r
        time.sleep(0.1)
    raise Fail(f"job {job_id}: no job_restarted event #{n} within {timeout} s: {dm.job(job_id)}")


def test(d, daemons):
    if not shutil.which("mpirun"):
        print("mpirun not found: skipped")
        raise SystemExit(77)
    if "mpi: yes" not in subprocess.run([LORAD, "version"], capture_output=True, text=True).stdout:
        print("lorad built without MPI: skipped")
        raise SystemExit(77)
    models = os.path.join(d, "models")
    model = make_model(os.path.join(models, "tiny"), dim=64, layers=2, hidden=128)
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 120)
    dm = Daemon(d, models, extra=["--distributed.enabled", "yes", "--distributed.hosts", "localhost",
                                  "--distributed.ranks-per-host", "2",
                                  "--distributed.mpirun-args", "--oversubscribe --mca btl self,vader,tcp",
                                  "--distributed.collective-timeout-s", "3", "--distributed.max-restarts", "2",
                                  "--max-threads-per-job", "2"])
    daemons.append(dm)
    dm.start()
    check("distributed: jobs run through mpirun" in dm.log_tail(), f"the start does not log the launch:\n{dm.log_tail()}")
    f = dm.upload_ok(data)

    # ---- a job on 2 ranks is the single process's run ----
    spec = {"model": "tiny", "training_file": f["id"], "seed": 4, "hyperparameters": hp(1), "lora": LORA}
    jid = dm.create_job_ok(spec)["id"]
    ref = reference_run(d, "ref", model, data, spec)
    done = dm.wait_job(jid, "succeeded", timeout=120)
    msgs = [e["message"] for e in dm.events(jid)]
    check(any("data-parallel over 2 MPI ranks" in m for m in msgs), f"no event says the job ran on 2 ranks: {msgs[:8]}")
    same_losses(dm, jid, ref, "2 ranks")
    same_adapter(final_adapter(dm, done), ref, "2 ranks")
    wait_no_ranks(jid)
    log("2-rank job = one process")

    # ---- pause at a checkpoint, resume to the same adapter ----
    long = {"model": "tiny", "training_file": f["id"], "seed": 5, "hyperparameters": hp(12), "lora": LORA}
    pj = dm.create_job_ok(long)["id"]
    dm.wait_step(pj, 3)
    dm.ok("POST", f"/v1/fine_tuning/jobs/{pj}/pause")
    paused = dm.wait_job(pj, "paused", timeout=30)
    at = paused["progress"]["step"]
    check(3 <= at < paused["progress"]["total_steps"], f"paused at step {at}")
    check(dm.checkpoints(pj)[0]["step_number"] == at, f"pausing at step {at} left no checkpoint there")
    wait_no_ranks(pj)
    ref_long = reference_run(d, "ref-long", model, data, long)
    dm.ok("POST", f"/v1/fine_tuning/jobs/{pj}/resume")
    done = dm.wait_job(pj, "succeeded", timeout=180)
    check(dm.first_step_of_last_run(pj) == at + 1, f"resumed from step {dm.first_step_of_last_run(pj)}, want {at + 1}")
    same_adapter(final_adapter(dm, done), ref_long, f"paused at {at} and resumed")
    log(f"pause at step {at} and resume ok")

    # ---- cancel ----
    cj = dm.create_job_ok(dict(long, seed=6))["id"]
    dm.wait_step(cj, 2)
    t0 = time.time()
    dm.ok("POST", f"/v1/fine_tuning/jobs/{cj}/cancel")
    dm.wait_job(cj, "cancelled", timeout=15)
    check(time.time() - t0 < 10, f"cancel took {time.time() - t0:.1f} s")
    wait_no_ranks(cj)
    log("cancel ok")

    # ---- a rank killed: back to the last checkpoint, same result ----
    kspec = dict(long, hyperparameters=hp(12, checkpoint_every_steps=20))
    kj = dm.create_job_ok(kspec)["id"]
    dm.wait_step(kj, 45)
    os.kill(wait_ranks(kj)[1], signal.SIGKILL)
    ev = wait_restarted(dm, kj, 1)[0]
    check(ev["data"]["step"] >= 20 and ev["data"]["step"] % 20 == 0 and ev["level"] == "warn",
          f"job_restarted event: {ev}")
    statuses = [e["data"]["to"] for e in dm.events(kj)[::-1] if e.get("type") == "status"]
    check("queued" in statuses[statuses.index("running") + 1:], f"the job did not go back to queued: {statuses}")
    done = dm.wait_job(kj, "succeeded", timeout=180)
    check(dm.first_step_of_last_run(kj) == ev["data"]["step"] + 1,
          f"restarted from step {dm.first_step_of_last_run(kj)}, the event said {ev['data']['step']}")
    same_adapter(final_adapter(dm, done), ref_long, "a rank killed and the job restarted")
    wait_no_ranks(kj)
    log(f"rank killed: restarted from step {ev['data']['step']}, same adapter")

    # ---- a rank hung: the collective timeout restarts; restarts run out: failed ----
    hj = dm.create_job_ok(dict(kspec, seed=7))["id"]
    dm.wait_step(hj, 25)
    t0 = time.time()
    stopped = wait_ranks(hj)[1]
    os.kill(stopped, signal.SIGSTOP)
    wait_restarted(dm, hj, 1)
    took = time.time() - t0
    check(took < 30, f"a hung rank took {took:.0f} s to restart the job (collective timeout 3 s)")
    try:
        os.kill(stopped, signal.SIGKILL)  # mpirun should have killed it; never leave it stopped
    except ProcessLookupError:
        pass
    for n in (2, 3):
        dm.wait_job(hj, "running", timeout=60)
        os.kill(wait_ranks(hj)[1], signal.SIGKILL)
        if n == 2:
            wait_restarted(dm, hj, 2)
    failed = dm.wait_job(hj, "failed", timeout=60)
    check("max_restarts" in failed["error"]["message"] and len(restarts(dm, hj)) == 2,
          f"the third lost rank must fail the job after 2 restarts: {failed['error']}")
    wait_no_ranks(hj)
    log(f"hung rank restarted after {took:.1f} s; restarts exhausted -> failed")


if __name__ == "__main__":
    main(test)
