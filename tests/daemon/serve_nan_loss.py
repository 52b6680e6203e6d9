"""A NaN loss (issue 20): a job trains to its first checkpoints, is paused, and its base model file
is then replaced by the same model with one NaN in the final norm's weight (as a corrupted or
badly converted download would be). Resumed, the job's next step has a NaN loss: the job must
fail with error.code "nan_loss" naming the step and the parameter to change, its checkpoints
written before must still be listed and download whole, and the daemon must keep serving."""
import os
import sys
import time

import numpy as np

from serve_common import Daemon, check, log, main, make_model, write_text_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import safetensors_io  # noqa: E402


def poison(model_dir):
    """Rewrites model.safetensors with model.norm.weight[0] = NaN (same shapes and dtypes)."""
    path = os.path.join(model_dir, "model.safetensors")
    tensors, meta = safetensors_io.read(path)
    t = {k: np.array(v) for k, v in tensors.items()}
    t["model.norm.weight"] = t["model.norm.weight"].astype(np.float32).copy()
    t["model.norm.weight"].flat[0] = np.nan
    tmp = path + ".tmp"
    safetensors_io.write(tmp, t, meta)
    os.replace(tmp, path)


def test(d, daemons):
    models = os.path.join(d, "models")
    model = make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    dm = Daemon(d, models, extra=["--workers", "1", "--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    fid = dm.upload_ok(data)["id"]
    jid = dm.create_job_ok({"model": "tiny", "training_file": fid, "seed": 2,
                            "hyperparameters": {"n_epochs": 200, "batch_size": 4, "max_seq_len": 64,
                                                "checkpoint_every_steps": 10, "keep_checkpoints": 3, "threads": 1},
                            "lora": {"r": 4, "alpha": 8}})["id"]
    deadline = time.time() + 120
    while time.time() < deadline and len(dm.checkpoints(jid)) < 2:
        time.sleep(0.05)
    dm.ok("POST", f"/v1/fine_tuning/jobs/{jid}/pause")
    dm.wait_job(jid, "paused", timeout=60)
    before = dm.checkpoints(jid)
    check(len(before) >= 2, f"{len(before)} checkpoints before the pause")
    poison(model)
    dm.ok("POST", f"/v1/fine_tuning/jobs/{jid}/resume")
    j = dm.wait_job(jid, "failed", timeout=120)
    err = j.get("error") or {}
    check(err.get("code") == "nan_loss", f"the job failed with {err}, want code nan_loss")
    check(err.get("param") == "hyperparameters.learning_rate" and "step" in err.get("message", ""),
          f"the nan_loss error does not name the step and the parameter: {err}")
    after = dm.checkpoints(jid)
    check({c["id"] for c in before} <= {c["id"] for c in after},
          f"checkpoints lost by the failure: before {[c['id'] for c in before]}, after {[c['id'] for c in after]}")
    for c in before:
        r = dm.get(f"/v1/fine_tuning/jobs/{jid}/checkpoints/{c['id']}/adapter_model.safetensors")
        check(r.status == 200 and len(r.body) > 100, f"checkpoint {c['id']} (step {c['step_number']}): HTTP {r.status}")
        tmp = os.path.join(d, "ck.safetensors")
        with open(tmp, "wb") as f:
            f.write(r.body)
        tensors, _ = safetensors_io.read(tmp)
        check(all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in tensors.values()),
              f"checkpoint {c['id']} holds non-finite values")
    check(dm.get("/readyz", auth=False).status == 200, "the daemon stopped serving after the NaN")
    log(f"NaN loss: job failed with nan_loss ({err['message']}); {len(before)} checkpoints kept, finite")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
