"""Disk full during a checkpoint (issue 20). The daemon's state directory is a 24 MB tmpfs (mounted
in a private mount namespace with `unshare -rm`, so no root is needed and nothing outlives the
test). A job whose checkpoints are about 4 MB lists its first one; then a filler file takes all
but 300 KB of the tmpfs, room for the store's writes but not for another checkpoint. The job must
end failed (or paused) with error.code "disk_full"; the earlier checkpoint must still download
and parse as safetensors; the SQLite database must pass `PRAGMA integrity_check`; the daemon must
keep serving (/readyz, the job list, an upload refused with 503 disk_full); and once the filler is
gone the job resumes and succeeds."""
import os
import shutil
import subprocess
import sys
import time

from serve_common import Daemon, check, log, main, make_model, write_text_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import safetensors_io  # noqa: E402

TMPFS_MB = 24
LEAVE_KB = 300


def in_namespace():
    """Re-runs this script in a private mount namespace (exit 77 when the host allows none)."""
    if os.environ.get("LORAD_DISK_FULL_NS") == "1":
        return
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        print("SKIP: unshare -rm (a user and mount namespace) is not allowed here")
        sys.exit(77)
    env = dict(os.environ, LORAD_DISK_FULL_NS="1")
    sys.exit(subprocess.run(["unshare", "-rm", sys.executable, os.path.abspath(__file__)], env=env).returncode)


def fill(path, leave_bytes):
    """Writes path until the file system has leave_bytes free; returns the bytes written."""
    st = os.statvfs(os.path.dirname(path))
    free = st.f_bavail * st.f_frsize
    n = max(0, free - leave_bytes)
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        left = n
        while left > 0:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return n


def test(d, daemons):
    state = os.path.join(d, "state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", state], check=True)
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "mid"), dim=256, layers=2, hidden=512)
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    dm = Daemon(d, models, state_dir=state, extra=["--workers", "1", "--threads-per-job", "1"], name="full")
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    fid = dm.upload_ok(data)["id"]
    spec = {"model": "mid", "training_file": fid, "seed": 4,
            "hyperparameters": {"n_epochs": 40, "batch_size": 4, "max_seq_len": 64, "checkpoint_every_steps": 20,
                                "keep_checkpoints": 5, "threads": 1},
            "lora": {"r": 64, "alpha": 64, "target_modules": "all-linear"}}
    jid = dm.create_job_ok(spec)["id"]
    deadline, ckpts = time.time() + 120, []
    while time.time() < deadline and not ckpts:
        ckpts = dm.checkpoints(jid)
        time.sleep(0.05)
    check(ckpts, "no checkpoint within 120 s")
    first = ckpts[-1]
    ck_dir = os.path.join(state, "jobs", jid)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(ck_dir) for f in fs)
    filler = os.path.join(state, "filler")
    written = fill(filler, LEAVE_KB * 1024)
    log(f"first checkpoint at step {first['step_number']}; job dir {size / 1e6:.1f} MB; filler {written / 1e6:.1f} MB")

    j = dm.wait_job(jid, ("failed", "paused"), timeout=120)
    err = j.get("error") or {}
    check(err.get("code") == "disk_full", f"the job ended {j['status']} with error {err}, want code disk_full")
    check("space" in (err.get("message") or "").lower() or "disk" in (err.get("message") or "").lower(),
          f"the disk_full message does not say what happened: {err}")
    # the earlier checkpoint is whole
    r = dm.get(f"/v1/fine_tuning/jobs/{jid}/checkpoints/{first['id']}/adapter_model.safetensors")
    check(r.status == 200, f"the earlier checkpoint's adapter: HTTP {r.status}")
    tmp = os.path.join(d, "ck.safetensors")
    with open(tmp, "wb") as f:
        f.write(r.body)
    tensors, _ = safetensors_io.read(tmp)
    check(len(tensors) > 0, "the earlier checkpoint's adapter holds no tensors")
    # the database is intact and the daemon serves
    db = [os.path.join(state, f) for f in os.listdir(state) if f.endswith((".db", ".sqlite", ".sqlite3"))]
    check(db, f"no database file in {os.listdir(state)}")
    ic = subprocess.run(["sqlite3", db[0], "PRAGMA integrity_check;"], capture_output=True, text=True)
    check(ic.stdout.strip() == "ok", f"PRAGMA integrity_check: {ic.stdout.strip()} {ic.stderr.strip()}")
    check(dm.get("/readyz", auth=False).status == 200, "/readyz is not 200 with the disk full")
    check(any(x["id"] == jid for x in dm.ok("GET", "/v1/fine_tuning/jobs")["data"]), "the job list lost the job")
    big = write_text_dataset(os.path.join(d, "big.jsonl"), 20000)
    r = dm.upload(big)
    check(r.status == 503 and r.json()["error"]["code"] == "disk_full", f"an upload with the disk full: {r}")
    log(f"disk full: job {j['status']} with disk_full, checkpoint {first['id']} intact, database ok, serving")

    # room again: the job continues from its last complete checkpoint and finishes
    os.unlink(filler)
    if j["status"] == "failed":
        log("the job failed rather than paused; resume is not offered for failed jobs")
    else:
        dm.ok("POST", f"/v1/fine_tuning/jobs/{jid}/resume")
        dm.wait_job(jid, "succeeded", timeout=180)
        log("after freeing space the paused job resumed and succeeded")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")
    subprocess.run(["umount", state])
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    in_namespace()
    main(test)
