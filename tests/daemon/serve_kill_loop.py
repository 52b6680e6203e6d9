"""A SIGKILL loop (issue 20): one job's daemon is killed with SIGKILL 20 times at random moments
and restarted on the same state directory each time. Each kill comes a random 0-150 ms after the
job has listed a checkpoint it had not listed before, so every life makes progress and the kills
land anywhere in a step, in a checkpoint being written, or in the store being updated. The job
must still end with the adapter of an uninterrupted `lorad train` run byte for byte, and its
metrics must hold every step exactly once with the uninterrupted run's losses
(serve_crash.check_same_as_reference)."""
import os
import random
import signal
import time

from serve_common import SANITIZED, Daemon, check, log, main, make_model, read_metrics_jsonl, reference_run, write_text_dataset
from serve_crash import check_same_as_reference

# the release run kills 20 times (the count); under ASan each restart is slow, 10 there
KILLS = 10 if SANITIZED else 20


def spec_for(file_ref, model):
    return {"model": model, "training_file": file_ref, "seed": 33,
            "hyperparameters": {"n_epochs": 120, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64,
                                "warmup_steps": 3, "lr_scheduler": "cosine", "checkpoint_every_steps": 25,
                                "keep_checkpoints": 2, "threads": 1},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]}}


def test(d, daemons):
    rng = random.Random(20)
    models = os.path.join(d, "models")
    model = make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    ref = reference_run(d, "ref", model, data, spec_for(None, None))
    total = read_metrics_jsonl(ref)[-1]["step"]
    check(total >= 25 * (KILLS + 5), f"the job has {total} steps, too few for {KILLS} kills a checkpoint apart")
    dm = Daemon(d, models, state_dir=os.path.join(d, "state"), extra=["--workers", "1", "--threads-per-job", "1"],
                name="loop")
    daemons.append(dm)
    dm.start()
    fid = dm.upload_ok(data)["id"]
    jid = dm.create_job_ok(spec_for(fid, "tiny"))["id"]
    seen, kills = 0, 0
    deadline = time.time() + 240
    while kills < KILLS and time.time() < deadline:
        ck = dm.checkpoints(jid)
        newest = ck[0]["step_number"] if ck else 0
        if dm.job(jid)["status"] == "succeeded":
            break
        if newest <= seen:
            time.sleep(0.01)
            continue
        seen = newest
        time.sleep(rng.uniform(0, 0.15))
        dm.signal(signal.SIGKILL)
        check(dm.wait_exit(10) == -signal.SIGKILL, f"kill {kills + 1}: lorad serve did not die of SIGKILL")
        kills += 1
        dm.log_file.close()
        dm.start()
    check(kills == KILLS, f"only {kills} kills before the job ended or the deadline ({total} steps)")
    dm.wait_job(jid, "succeeded", timeout=180)
    check_same_as_reference(dm, jid, ref, f"{KILLS} SIGKILLs")
    log(f"{KILLS} SIGKILLs at random moments ({dm.starts} daemon starts, last checkpoint seen at step {seen} of "
        f"{total}): identical adapter, every step once")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
