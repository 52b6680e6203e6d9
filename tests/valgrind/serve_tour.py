#!/usr/bin/python3
"""A tour of the daemon for the valgrind pass (run_under_valgrind.py): every route family once, at
shapes memcheck runs in seconds, with the lorad CLI on the result. Under memcheck a lorad process
runs ~30x slower, so the integration tests proper (tests/daemon) run under ASan instead; this
keeps their paths (uploads, jobs, SSE, metrics, checkpoints, downloads, inference, errors, cancel,
the dashboard, shutdown) under valgrind's eye, which sees what ASan cannot (uninitialised reads).

Each answer is checked against an independent fact: the route table's status and schema
(openapi.yaml), the bytes uploaded, the steps asked for, the text of the non-streaming answer."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
from inference_common import CHAT, COMPLETIONS, infer_ok, stream, text_of  # noqa: E402
from serve_common import (LORAD, Daemon, check, check_error, log, main, make_model, read_bytes,  # noqa: E402
                          untar, write_text_dataset)

STEPS = 6


def test(d, daemons):
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 24)
    dm = Daemon(d, models, api_key="sk-tour", extra=["--threads-per-job", "1"])
    daemons.append(dm)
    dm.start(timeout=120)
    dm.wait_ready(timeout=120)

    # files: upload, read back, list; errors name the field
    f = dm.upload_ok(data)
    got = dm.request("GET", f"/v1/files/{f['id']}/content")
    check(got.status == 200 and got.body == read_bytes(data), "the uploaded file's content differs from its bytes")
    dm.ok("GET", "/v1/files", schema="FileList")
    check_error(dm.request("GET", "/v1/files/file-..%2f..%2fetc"), 404, what="a traversal file id")
    check_error(dm.request("GET", "/v1/models", auth=False), 401, what="no key")
    check_error(dm.create_job({"model": "tiny", "training_file": f["id"], "hyperparameters": {"n_epochs": -1}}),
                400, param="hyperparameters.n_epochs", what="a negative n_epochs")
    spare = dm.upload_ok(data)
    dm.ok("DELETE", f"/v1/files/{spare['id']}")

    # a job to its end: SSE, metrics, checkpoints, events, downloads
    spec = {"model": "tiny", "training_file": f["id"], "seed": 3,
            "hyperparameters": {"n_epochs": 1, "max_steps": STEPS, "batch_size": 2, "max_seq_len": 32,
                                "checkpoint_every_steps": 3, "threads": 1},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "lm_head"]}}
    job = dm.create_job_ok(spec)
    events, raw = dm.sse(job["id"], timeout=300)
    check(any("succeeded" in data for _, data in events), f"the event stream ended without the job's end:\n{raw[-1500:]}")
    done = dm.wait_job(job["id"], "succeeded", timeout=300)
    steps = [int(m["step"]) for m in dm.metrics(job["id"])]
    check(steps == list(range(1, STEPS + 1)), f"metrics steps {steps}, want 1..{STEPS}")
    ckpts = dm.checkpoints(job["id"])
    check(len(ckpts) >= 2, f"{len(ckpts)} checkpoints for {STEPS} steps every 3")
    check(dm.events(job["id"]), "no events listed")
    ft = done["fine_tuned_model"]
    listed = [m["id"] for m in dm.ok("GET", "/v1/models")["data"]]
    check(ft in listed and "tiny" in listed, f"/v1/models lists {listed}")
    tar_path = os.path.join(d, "adapter.tar")
    r = dm.request("GET", f"/v1/models/{ft}/adapter.tar", out=tar_path)
    check(r.status == 200, f"adapter.tar: {r}")
    adapter = untar(tar_path, os.path.join(d, "adapter"))
    r = dm.request("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{ckpts[-1]['id']}/adapter.gguf",
                   out=os.path.join(d, "ckpt.gguf"))
    check(r.status == 200, f"checkpoint adapter.gguf: {r}")

    # inference on the fine-tuned model and the base: stream == non-stream at temperature 0
    body = {"model": ft, "prompt": "alpha bravo", "temperature": 0, "max_tokens": 8}
    whole = text_of(infer_ok(dm, COMPLETIONS, body))
    chunks = stream(dm, COMPLETIONS, dict(body, stream=True))
    streamed = "".join(c["choices"][0].get("text", "") for c in chunks if c.get("choices"))
    check(streamed == whole, f"streamed {streamed!r}, whole {whole!r}")
    infer_ok(dm, CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                        "temperature": 0.8, "seed": 1})
    check_error(dm.post(COMPLETIONS, {"model": "tiny", "prompt": "x", "max_tokens": -1}), 400, param="max_tokens",
                what="a negative max_tokens")

    # a second job, cancelled while it runs; the dashboard page
    long = dict(spec, hyperparameters=dict(spec["hyperparameters"], max_steps=100000, n_epochs=1000,
                                           checkpoint_every_steps=None))
    j2 = dm.create_job_ok(long)
    dm.wait_step(j2["id"], 1, timeout=120)
    dm.ok("POST", f"/v1/fine_tuning/jobs/{j2['id']}/cancel")
    dm.wait_job(j2["id"], "cancelled", timeout=120)
    check(dm.request("GET", "/", auth=False).status == 200, "the dashboard page")
    rc = dm.stop(timeout=120)
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM (99: memcheck found an error)")

    # the CLI on what the daemon made
    for args in (["inspect", os.path.join(models, "tiny")],
                 ["export", "--adapter", adapter, "--format", "gguf", "--out", os.path.join(d, "a.gguf"),
                  "--model", os.path.join(models, "tiny")],
                 ["generate", os.path.join(models, "tiny"), "--adapter", adapter, "--prompt", "alpha", "--max-tokens",
                  "4"]):
        p = subprocess.run([LORAD] + args, capture_output=True, text=True, timeout=300)
        check(p.returncode == 0, f"lorad {' '.join(args)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    log("tour ok")


if __name__ == "__main__":
    main(test)
