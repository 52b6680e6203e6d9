"""Crash and restart: a job's daemon is SIGKILLed once its first checkpoint is listed, then restarted on
the same state directory; the job must resume from that checkpoint and end with the adapter of an
uninterrupted run (`lorad train` on the same spec, seed and thread count) byte for byte, and its
metrics history must have every step exactly once with the uninterrupted run's losses.
The SIGTERM variant: the daemon exits 0 promptly with a job running, and the job resumes and finishes
identically after a restart."""
import math
import os
import signal
import time

from serve_common import (Daemon, check, log, main, make_model, read_bytes, read_metrics_jsonl, reference_run,
                          write_text_dataset)


def spec_for(file_ref, model):
    return {"model": model, "training_file": file_ref, "seed": 21,
            "hyperparameters": {"n_epochs": 25, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64,
                                "warmup_steps": 3, "lr_scheduler": "cosine", "checkpoint_every_steps": 40,
                                "keep_checkpoints": 2, "threads": 1},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]}}


def check_same_as_reference(dm, job_id, ref, what):
    j = dm.job(job_id)
    got = dm.get(f"/v1/models/{j['fine_tuned_model']}/adapter_model.safetensors")
    check(got.status == 200, f"{what}: adapter download {got.status}")
    check(got.body == read_bytes(os.path.join(ref, "adapter", "adapter_model.safetensors")),
          f"{what}: the final adapter differs from the uninterrupted run's")
    want = read_metrics_jsonl(ref)
    rows = dm.metrics(job_id)
    steps = [int(r["step"]) for r in rows]
    check(steps == [m["step"] for m in want],
          f"{what}: metrics steps (n={len(steps)}) are not 1..{len(want)} once each: {steps[:5]}...{steps[-5:]}")
    for r, m in zip(rows, want):
        check(math.isclose(float(r["train_loss"]), m["train_loss"], rel_tol=1e-6),
              f"{what}: step {r['step']} train_loss {r['train_loss']} != uninterrupted {m['train_loss']}")


def test(d, daemons):
    models = os.path.join(d, "models")
    model = make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 48)
    ref = reference_run(d, "ref", model, data, spec_for(None, None))
    total = read_metrics_jsonl(ref)[-1]["step"]
    state = os.path.join(d, "state")
    extra = ["--workers", "1", "--threads-per-job", "1"]

    # ---- SIGKILL after the first checkpoint ----
    dm = Daemon(d, models, state_dir=state, extra=extra, name="kill")
    daemons.append(dm)
    dm.start()
    fid = dm.upload_ok(data)["id"]
    jid = dm.create_job_ok(spec_for(fid, "tiny"))["id"]
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = dm.checkpoints(jid)
        if not ckpts:
            time.sleep(0.02)
    dm.signal(signal.SIGKILL)
    check(dm.wait_exit(10) == -signal.SIGKILL, "lorad serve did not die of SIGKILL")
    check(ckpts, "no checkpoint was listed within 120 s")
    newest = ckpts[0]["step_number"]
    check(newest % 40 == 0 and newest < total,
          f"checkpoint at step {newest} listed when killed; want a multiple of 40 before the end ({total})")
    log(f"SIGKILLed with checkpoint step {newest} listed")

    dm.start()
    j = dm.job(jid)
    check(j["status"] in ("queued", "running", "succeeded"),
          f"after the restart the job is {j['status']} (error {j.get('error')}), want it queued or running again")
    check(j["status"] != "succeeded" or j["progress"]["step"] == total, "job claims success early")
    dm.wait_job(jid, "succeeded", timeout=120)
    check_same_as_reference(dm, jid, ref, "SIGKILL at the first checkpoint")
    resumed = dm.first_step_of_last_run(jid)
    check(resumed > newest and (resumed - 1) % 40 == 0,
          f"after the restart the job trained from step {resumed}, want right after a checkpoint >= {newest}")
    codes = [((e.get("data") or {}).get("code")) for e in dm.events(jid)]
    check("job_restarted" in codes, "the restarted job has no event with data.code 'job_restarted'")
    log("SIGKILL and restart: identical adapter and metrics")

    # ---- SIGTERM with a job running: prompt exit 0, then the job resumes after a restart ----
    jid2 = dm.create_job_ok(spec_for(fid, "tiny"))["id"]
    seen = dm.wait_step(jid2, 60)["progress"]["step"]
    t0 = time.time()
    dm.signal(signal.SIGTERM)
    rc = dm.wait_exit(15)
    took = time.time() - t0
    check(rc is not None, "lorad serve did not exit within 15 s of SIGTERM")
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")
    check(took < 5, f"SIGTERM took {took:.1f} s to stop the daemon")
    dm.log_file.close()
    log(f"SIGTERM: exit 0 in {took:.2f} s")
    dm.start()
    j = dm.job(jid2)
    check(j["status"] in ("queued", "running", "succeeded"),
          f"after SIGTERM and a restart the job is {j['status']}, want it to resume by itself")
    dm.wait_job(jid2, "succeeded", timeout=120)
    check_same_as_reference(dm, jid2, ref, "SIGTERM and restart")
    resumed = dm.first_step_of_last_run(jid2)
    check(resumed > seen, f"SIGTERM at step >= {seen} but the restarted job trained from step {resumed}: "
                          "the stop did not checkpoint where the job was")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on the final SIGTERM")


if __name__ == "__main__":
    main(test)
