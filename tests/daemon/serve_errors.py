"""The error table of the HTTP API against a real daemon and real curl: one case (or a few) per status
code of openapi.yaml, each asserting the status, the one error shape
{"error":{"message","type","param","code"}}, and `param` where the request has a field to blame.

  400 bad JSON, too-deep JSON, a bad hyperparameter, an unknown key, a bad query parameter, an upload
      without its file / filename, more threads than max_threads_per_job, a job over memory_limit
  401 no Authorization (an api_key_file is set)       403 a wrong key
  404 unknown route, unknown job / file / checkpoint / model
  405 wrong method (Allow header)                      409 cancel/pause a finished job; delete a file in use
  413 upload over --max-upload-bytes, JSON over --max-request-body
  415 a job POSTed as text/plain                       422 an Idempotency-Key reused with another body
  429 --max-queued-jobs 1 with the worker busy         503 new work while the daemon is stopping"""
import json
import os
import re
import signal
import time

from serve_common import (Daemon, check, check_error, log, main, make_model, write_text_dataset)

KEY = "e2e-secret-key-1"
LORA = {"r": 4, "alpha": 8}
NO_JOB = "ftjob-" + "A" * 24
NO_FILE = "file-" + "B" * 24
NO_CKPT = "ftckpt-" + "C" * 24


def hp(**more):
    h = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64, "threads": 1}
    h.update(more)
    return h


def test(d, daemons):
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    big = os.path.join(d, "big.jsonl")
    write_text_dataset(big, 200)  # ~9 KB, over the 4k upload limit below
    dm = Daemon(d, models, api_key=KEY,
                extra=["--workers", "1", "--threads-per-job", "1", "--max-upload-bytes", "4k",
                       "--max-request-body", "2k", "--max-queued-jobs", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    f = dm.upload_ok(data)
    fid = f["id"]
    small = {"model": "tiny", "training_file": fid, "seed": 1, "hyperparameters": hp(max_steps=3), "lora": LORA}
    J = "/v1/fine_tuning/jobs"

    # ---- 401 / 403 ----
    check_error(dm.get("/v1/files", auth=False), 401, param=None, what="no Authorization")
    check_error(dm.get("/v1/files", auth=False, headers=["Authorization: Basic Zm9vOmJhcg=="]), 401,
                what="Authorization that is not Bearer")
    check_error(dm.get("/v1/files", auth=False, headers=["Authorization: Bearer wrong-key"]), 403, param=None,
                what="wrong key")
    check_error(dm.get("/v1/files", auth=False, headers=[f"Authorization: Bearer {KEY}x"]), 403,
                what="key with an extra character")
    check(dm.get("/v1/files").status == 200, "the right key is refused")
    check(dm.get("/livez", auth=False).status == 200, "/livez must not need a key")
    check(dm.get("/readyz", auth=False).status == 200, "/readyz must not need a key")
    e = check_error(dm.request("POST", J, small, auth=False), 401, what="job create without a key")
    check(e["type"] == "authentication_error", f"401 type {e['type']}")
    e = check_error(dm.get("/metrics", auth=False, headers=["Authorization: Bearer nope"]), 403, what="/metrics")
    check(e["type"] == "permission_error", f"403 type {e['type']}")

    # ---- 400 ----
    check_error(dm.post(J, "{not json", headers=["Content-Type: application/json"]), 400, param=None,
                what="invalid JSON")
    check_error(dm.post(J, "[" * 100 + "]" * 100, headers=["Content-Type: application/json"]), 400,
                what="JSON nested too deeply")
    check_error(dm.create_job(dict(small, hyperparameters=hp(batch_size=0))), 400,
                param="hyperparameters.batch_size", what="batch_size 0")
    check_error(dm.create_job(dict(small, hyperparameters={"learning_rat": 1e-3})), 400,
                param="hyperparameters.learning_rat", what="unknown hyperparameter")
    check_error(dm.create_job(dict(small, lora={"r": 0})), 400, param="lora.r", what="lora.r 0")
    missing = {k: v for k, v in small.items() if k != "training_file"}
    check_error(dm.create_job(missing), 400, param="training_file", what="no training_file")
    # An unknown file or model in a job is the body's fault: 400 naming the field, as OpenAI answers.
    check_error(dm.create_job(dict(small, training_file=NO_FILE)), 400, param="training_file",
                what="job on an unknown file")
    check_error(dm.create_job(dict(small, model="no-such-model")), 400, param="model", what="job on an unknown model")
    # The operator's ceilings: more threads than --threads-per-job, and more memory than memory_limit
    # (here its default, 80% of MemAvailable at start: 2^27 tokens of activations exceed it anywhere).
    check_error(dm.create_job(dict(small, hyperparameters=hp(threads=2))), 400, param="hyperparameters.threads",
                what="threads over max_threads_per_job")
    e = check_error(dm.create_job(dict(small, hyperparameters=hp(batch_size=1024, max_seq_len=131072))), 400,
                    param="hyperparameters.batch_size", code="memory_limit_exceeded", what="job over memory_limit")
    check(re.search(r"\(\d+ bytes", e["message"]), f"the memory refusal gives no size in bytes: {e['message']}")
    check_error(dm.get("/v1/files?limit=0"), 400, param="limit", what="limit=0")
    check_error(dm.get(f"{J}?limit=abc"), 400, param="limit", what="limit=abc")
    check_error(dm.get(f"{J}?after=not-an-id"), 400, param="after", what="after=not-an-id")
    check_error(dm.request("POST", "/v1/files", args=["-F", "purpose=fine-tune"]), 400, param="file",
                what="multipart upload without a file field")
    check_error(dm.post("/v1/files", b'{"text":"x"}\n', headers=["Content-Type: application/octet-stream"]), 400,
                param="filename", what="raw upload without ?filename=")
    # A part whose Content-Disposition has no name (fuzz_http's first finding crashed the daemon on
    # it): skipped, so this body has no file field; the daemon answers and lives on.
    unnamed = (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
               b"--XyZ\r\nContent-Disposition: formname=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}\n\r\n--XyZ--\r\n")
    check_error(dm.post("/v1/files", unnamed, headers=["Content-Type: multipart/form-data; boundary=XyZ"]), 400,
                param="file", what="multipart part without a name")
    check(dm.get("/livez", auth=False).status == 200, "the daemon stopped answering after a part without a name")

    # A dataset with bad lines is stored with status "error" and a report naming them (line numbers
    # counted here); a job on it is 400 naming training_file.
    bad = os.path.join(d, "bad.jsonl")
    with open(bad, "w") as fb:
        fb.write('{"text": "fine"}\n{"text": 5}\n{not json\n{"text": "fine too"}\n')
    bf = dm.upload_ok(bad)
    v = bf.get("validation") or {}
    check(bf.get("status") == "error" and [b["line"] for b in v.get("bad_lines", [])] == [2, 3]
          and v.get("problems", {}).get("invalid_json") == 1 and v.get("problems", {}).get("wrong_type") == 1,
          f"the bad dataset's report: status {bf.get('status')}, {v}")
    e = check_error(dm.create_job(dict(small, training_file=bf["id"])), 400, param="training_file",
                    code="file_not_processed", what="job on a file that failed validation")
    check(bf["id"] in e["message"] and "line 2 (wrong_type)" in e["message"],
          f"the refusal does not name the file and its first bad line (2, wrong_type): {e['message']}")

    # ---- 404 ----
    e = check_error(dm.get("/v1/no/such/route"), 404, param=None, what="unknown route")
    check_error(dm.get(f"{J}/{NO_JOB}"), 404, param="fine_tuning_job_id", what="unknown job id")
    check_error(dm.get(f"{J}/not-a-job-id"), 404, param="fine_tuning_job_id", what="malformed job id")
    check_error(dm.post(f"{J}/{NO_JOB}/cancel"), 404, param="fine_tuning_job_id", what="cancel an unknown job")
    check_error(dm.get(f"/v1/files/{NO_FILE}"), 404, param="file_id", what="unknown file id")
    check_error(dm.get("/v1/models/no-such-model"), 404, param="model", what="unknown model")

    # ---- 405 ----
    r = dm.request("DELETE", J)
    check_error(r, 405, param=None, what="DELETE /v1/fine_tuning/jobs")
    allow = {m.strip() for m in (r.headers.get("allow") or "").split(",")}
    check(allow == {"GET", "POST"}, f"405 Allow header {r.headers.get('allow')!r}, want GET, POST")
    r = dm.request("PUT", f"/v1/files/{fid}")
    check_error(r, 405, what="PUT /v1/files/{id}")
    allow = {m.strip() for m in (r.headers.get("allow") or "").split(",")}
    check(allow == {"GET", "DELETE"}, f"405 Allow header {r.headers.get('allow')!r}, want GET, DELETE")

    # ---- 413 ----
    check(os.path.getsize(big) > 4096, "the big upload is not big enough")
    check_error(dm.upload(big), 413, param="file", what="upload over max_upload_bytes")
    check_error(dm.post("/v1/files?filename=big.jsonl", open(big, "rb").read(),
                        headers=["Content-Type: application/octet-stream"]), 413, param="file",
                what="raw upload over max_upload_bytes")
    padded = dict(small, metadata={"pad": "x" * 3000})
    check_error(dm.create_job(padded), 413, what="JSON body over max_request_body")

    # ---- 415 ----
    check_error(dm.post(J, json.dumps(small), headers=["Content-Type: text/plain"]), 415,
                what="job POSTed as text/plain")

    # ---- 422 (and the replay that is not an error) ----
    a = dm.create_job_ok(small, headers=["Idempotency-Key: errors-key"])
    b = dm.create_job_ok(small, headers=["Idempotency-Key: errors-key"])
    check(a["id"] == b["id"], "same key, same body: not the same job")
    e = check_error(dm.create_job(dict(small, seed=2), headers=["Idempotency-Key: errors-key"]), 422,
                    what="key reused with another body")
    check(e["param"] is None or "idempotency" in e["param"].lower(), f"422 param {e['param']!r}")

    # ---- 409: a finished job cannot be cancelled, paused or resumed ----
    dm.wait_job(a["id"], "succeeded", timeout=60)
    for action in ("cancel", "pause", "resume"):
        check_error(dm.post(f"{J}/{a['id']}/{action}"), 409, what=f"{action} a succeeded job")
    check_error(dm.get(f"{J}/{a['id']}/checkpoints/{NO_CKPT}/adapter.tar"), 404, what="unknown checkpoint")

    # ---- 429: one queued job at most, while the worker is busy ----
    longhp = hp(n_epochs=1000, checkpoint_every_steps=1000)
    busy = dm.create_job_ok(dict(small, seed=3, hyperparameters=longhp))["id"]
    dm.wait_job(busy, "running", timeout=60)
    waiting = dm.create_job_ok(dict(small, seed=4))["id"]
    check(dm.job(waiting)["status"] in ("queued", "validating_files"), "the second job should be waiting")
    e = check_error(dm.create_job(dict(small, seed=5)), 429, what="a second waiting job with --max-queued-jobs 1")
    check(e["type"] == "rate_limit_error", f"429 type {e['type']}")

    # ---- 409: a file a live job uses cannot be deleted ----
    check_error(dm.request("DELETE", f"/v1/files/{fid}"), 409, what="delete a file in use")

    dm.ok("POST", f"{J}/{waiting}/cancel")
    dm.wait_job(waiting, "cancelled", timeout=10)
    # The queue has room again.
    again = dm.create_job_ok(dict(small, seed=6))["id"]
    dm.ok("POST", f"{J}/{again}/cancel")
    dm.ok("POST", f"{J}/{busy}/cancel")
    dm.wait_job(busy, "cancelled", timeout=10)

    # ---- 503: while the daemon stops it takes no new work ----
    check_503_while_stopping(d, dm, models, fid)
    log("error table ok")


def check_503_while_stopping(d, dm, models, fid):
    """SIGTERM while a job is inside a slow training step: the daemon waits for the step to end and
    checkpoint before it exits, and keeps answering HTTP meanwhile. /readyz must turn 503 (code
    "stopping") and a job create must be refused with 503 in that window. The step takes seconds
    (a 256-wide model on 512-token rows), so the window does not depend on luck."""
    make_model(os.path.join(models, "slow"), dim=256, layers=4, hidden=688)
    with open(os.path.join(d, "long.jsonl"), "w") as f:
        for i in range(4):  # 4 rows of 512 tokens (one step), in less than the 4k upload limit
            f.write(json.dumps({"text": "".join(chr(97 + (i * 7 + k * 3) % 26) for k in range(900))}) + "\n")
    slow_file = dm.upload_ok(os.path.join(d, "long.jsonl"))["id"]
    slow = {"model": "slow", "training_file": slow_file, "seed": 1,
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_len": 512, "threads": 1}, "lora": LORA}
    sj = dm.create_job_ok(slow)["id"]
    # Wait for the worker's "training N steps" message: the first step starts right after it.
    deadline = time.time() + 60
    while time.time() < deadline and not any(re.match(r"training \d+ steps?", e["message"]) for e in dm.events(sj)):
        time.sleep(0.05)
    time.sleep(0.2)  # inside the first step (about two seconds on one thread)
    dm.signal(signal.SIGTERM)
    deadline = time.time() + 5
    r = None
    while time.time() < deadline:
        r = dm.get("/readyz", auth=False, timeout=5)
        if r.status != 200:
            break
        time.sleep(0.01)
    check_error(r, 503, param=None, code="stopping", what="/readyz after SIGTERM, a step still running")
    small = {"model": "tiny", "training_file": fid, "seed": 9, "hyperparameters": hp(max_steps=2), "lora": LORA}
    check_error(dm.create_job(small), 503, param=None, what="job create while stopping")
    check(dm.proc.poll() is None, "the daemon exited before its running step could end: the step was not slow")
    rc = dm.wait_exit(60)
    check(rc == 0, f"lorad serve exited {rc} after SIGTERM")
    log("503 while stopping ok")


if __name__ == "__main__":
    main(test)
