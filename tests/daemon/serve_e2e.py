"""The daemon end to end, as a user drives it with curl: start `lorad serve` on an ephemeral port with
a temporary state directory, upload a JSONL dataset, create a job, poll it, stream its events (SSE,
with Last-Event-ID resume), read the metrics as CSV, list checkpoints (their metrics with the whole
validation set's loss, full_valid_loss), download adapter.tar (the final
one through the fine-tuned model, and a checkpoint's), untar it and run `lorad generate --adapter`
with it; byte ranges; cancel; pause and resume; idempotency.

Independent references: the adapters and losses of `lorad train` (the CLI, no daemon) on the same
spec and seed; the uploaded file's own bytes; the bytes of the whole download for every range."""
import csv
import hashlib
import io
import json
import math
import os
import re
import time

from serve_common import (Daemon, check, check_error, generate_ids, log, main, make_model, read_bytes,
                          read_metrics_jsonl, reference_run, api_spec, sse_finish, untar, write_text_dataset)

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "lm_head"]}


def hp(n_epochs, **more):
    h = {"n_epochs": n_epochs, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64, "warmup_steps": 2,
         "lr_scheduler": "cosine", "threads": 1}
    h.update(more)
    return h


def close(a, b, rel=1e-6):
    return a == b or (a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12))


def check_metric_history(rows, ref_rows, what):
    """rows (the API's, any field spelling of step/train_loss) must be steps 1..N once each in order,
    with the reference run's losses."""
    steps = [int(r["step"]) for r in rows]
    want = [int(m["step"]) for m in ref_rows]
    check(steps == want, f"{what}: steps {steps[:8]}...{steps[-4:]} (n={len(steps)}), want 1..{len(want)} once each")
    for r, m in zip(rows, ref_rows):
        check(close(float(r["train_loss"]), m["train_loss"]),
              f"{what}: step {r['step']} train_loss {r['train_loss']} != reference {m['train_loss']}")


def test(d, daemons):
    models = os.path.join(d, "models")
    model = make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 48)
    dm = Daemon(d, models, extra=["--workers", "1", "--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    check(dm.get("/livez").status == 200, "/livez is not 200")

    # ---- upload (multipart, as in the README) ----
    f = dm.upload_ok(data)
    raw = read_bytes(data)
    check(f["bytes"] == len(raw), f"file bytes {f['bytes']} != {len(raw)}")
    check(f["filename"] == "train.jsonl" and f["purpose"] == "fine-tune", f"file object: {f}")
    v = f.get("validation") or {}
    check(f.get("status") == "processed" and v.get("records") == 48 and v.get("format") == "text"
          and v.get("invalid") == 0, f"the upload's validation report: status {f.get('status')}, {v}")
    # The raw-body form of the upload: the same bytes, the same digest.
    r = dm.post("/v1/files?filename=raw.jsonl&purpose=fine-tune", raw, headers=["Content-Type: application/octet-stream"])
    check(r.status == 200, f"raw upload: {r}")
    rf = api_spec().check(r.json(), "File", "raw upload")
    check(rf["filename"] == "raw.jsonl" and rf["bytes"] == len(raw) and rf["sha256"] == hashlib.sha256(raw).hexdigest()
          and rf["sha256"] == f["sha256"], f"raw upload object: {rf}")
    got = dm.get(f"/v1/files/{f['id']}/content")
    check(got.status == 200 and got.body == raw, f"file content differs from the upload ({got.status})")
    check(dm.ok("GET", f"/v1/files/{f['id']}", schema="File")["id"] == f["id"], "GET file by id")
    listed = dm.ok("GET", "/v1/files", schema="FileList")
    check(listed["object"] == "list" and f["id"] in [x["id"] for x in listed["data"]], f"file list: {listed}")

    # ---- a small job: create, stream events while it runs, poll to succeeded ----
    # With a validation file, evaluated every 5 steps; checkpoints every 8 carry the whole set's loss.
    valid = write_text_dataset(os.path.join(d, "valid.jsonl"), 10, seed=6)
    vf = dm.upload_ok(valid)
    spec = {"model": "tiny", "training_file": f["id"], "validation_file": vf["id"], "seed": 7, "suffix": "e2e",
            "hyperparameters": hp(2, checkpoint_every_steps=8, keep_checkpoints=10, eval_every_steps=5), "lora": LORA}
    job = dm.create_job_ok(spec)
    jid = job["id"]
    check(job["model"] == "tiny" and job["training_file"] == f["id"] and job["seed"] == 7, f"job object: {job}")
    check(job["status"] in ("validating_files", "queued", "running"), f"new job status {job['status']}")
    stream = dm.sse_start(jid)
    ref = reference_run(d, "ref-small", model, data, spec, valid)  # meanwhile: the CLI's run of the same spec
    ref_metrics = read_metrics_jsonl(ref)
    total = ref_metrics[-1]["step"]
    final = dm.wait_job(jid, "succeeded", timeout=120)
    log(f"small job {jid} succeeded ({total} steps)")
    ft = final.get("fine_tuned_model")
    check(ft == f"ft:tiny:e2e:{jid}", f"fine_tuned_model is {ft!r}, want 'ft:tiny:e2e:{jid}'")
    check(isinstance(final.get("finished_at"), int), f"finished_at: {final.get('finished_at')}")
    check(final["progress"]["step"] == total, f"progress at the end: {final['progress']}")
    listed = dm.ok("GET", "/v1/fine_tuning/jobs?limit=5", schema="FineTuningJobList")
    check(jid in [x["id"] for x in listed["data"]], "job missing from the job list")

    # ---- SSE: ids increase, metrics events carry step and train_loss, ends with [DONE] ----
    events, _ = sse_finish(stream)
    body = events[:-1]
    check(body, "the event stream had no events before [DONE]")
    ids = []
    metric_steps = []
    for ev_id, text in body:
        check(ev_id is not None and ev_id.isdigit(), f"SSE event without a numeric id line: {ev_id!r} {text[:200]}")
        ids.append(int(ev_id))
        ev = api_spec().check(json.loads(text), "FineTuningJobEvent", "SSE event")
        check(ev.get("object") == "fine_tuning.job.event" and ev.get("level") in ("info", "warn", "error")
              and isinstance(ev.get("message"), str), f"SSE event shape: {ev}")
        if ev.get("type") == "metrics":
            dat = ev.get("data") or {}
            check("step" in dat and "train_loss" in dat, f"metrics event without step/train_loss: {ev}")
            metric_steps.append(dat["step"])
    check(ids == sorted(set(ids)), f"SSE ids are not strictly increasing: {ids}")
    check(metric_steps == list(range(1, total + 1)),
          f"metrics events cover steps {metric_steps}, want 1..{total} once each")
    # each checkpoint step's whole-validation-set pass is an event naming its token count, and its
    # metrics event says the loss as OpenAI's does ("full validation loss=")
    ckpt_steps = sorted(set(range(8, total + 1, 8)) | {total})
    said = sorted(int(g.group(1)) for g in (re.search(r"^full validation loss [0-9.]+ \(token accuracy [0-9.]+\) over "
                                                      r"\d+ tokens at step (\d+)$", json.loads(t)["message"])
                                            for _, t in body) if g)
    check(said == ckpt_steps, f"full validation events at steps {said}, want the checkpoint steps {ckpt_steps}")
    full_said = sorted(json.loads(t)["data"]["step"] for _, t in body if json.loads(t).get("type") == "metrics"
                       and ", full validation loss=" in json.loads(t)["message"])
    check(full_said == ckpt_steps, f"metrics events with a full validation loss at {full_said}, want {ckpt_steps}")
    check(any(re.match(r"computing in (float32|bfloat16) \(auto requested", json.loads(t)["message"]) for _, t in body),
          "no event says which dtype the job computed in")
    check(any("succe" in json.loads(t)["message"].lower() for _, t in body[-2:]),
          f"the last events do not report success: {[json.loads(t)['message'] for _, t in body[-3:]]}")

    # Last-Event-ID: only the events after it, the same ones.
    k = ids[len(ids) // 2]
    later, _ = dm.sse(jid, last_event_id=k)
    check([(int(i), t) for i, t in later[:-1]] == [(i, t) for i, (_, t) in zip(ids, body) if i > k],
          f"Last-Event-ID {k}: got ids {[i for i, _ in later[:-1]]}, want {[i for i in ids if i > k]}")
    # The JSON event list has the same events (newest first, as OpenAI's).
    listed = dm.events(jid, limit=7)
    check(len(listed) == len(body) and len({e["id"] for e in listed}) == len(listed),
          f"the paginated event list has {len(listed)} distinct events, the stream {len(body)}")
    check([e["message"] for e in listed] == [json.loads(t)["message"] for _, t in body][::-1],
          "the event list is not the stream's events, newest first")

    # ---- metrics: JSON and CSV, one row per step, the reference's losses ----
    rows = dm.metrics(jid)
    check_metric_history(rows, ref_metrics, "metrics json")
    r = dm.get(f"/v1/fine_tuning/jobs/{jid}/metrics?format=csv")
    check(r.status == 200 and (r.headers.get("content-type") or "").startswith("text/csv"),
          f"metrics csv: {r.status} {r.headers.get('content-type')}")
    table = list(csv.DictReader(io.StringIO(r.body.decode())))
    check(table and "step" in table[0] and "train_loss" in table[0], f"CSV header: {r.body[:200]!r}")
    check_metric_history(table, ref_metrics, "metrics csv")
    # full_valid_* where the CLI's run has them (its checkpoint steps), null (an empty cell) elsewhere
    for what, got in (("json", rows), ("csv", table)):
        for row, m in zip(got, ref_metrics):
            for key in ("full_valid_loss", "full_valid_mean_token_accuracy", "valid_loss"):
                v = row.get(key)
                v = None if v in (None, "") else float(v)
                check(close(v, m.get(key)), f"metrics {what}: step {row['step']} {key} {v}, the CLI's run {m.get(key)}")

    # ---- the final adapter, through the fine-tuned model ----
    models_list = dm.ok("GET", "/v1/models", schema="ModelList")
    by_id = {m["id"]: m for m in models_list["data"]}
    check("tiny" in by_id and ft in by_id, f"/v1/models lacks the base or the fine-tuned model: {list(by_id)}")
    m = dm.ok("GET", f"/v1/models/{ft}", schema="Model")
    check(m["object"] == "model" and m.get("kind") == "adapter" and m.get("fine_tuning_job_id") == jid,
          f"fine-tuned model object: {m}")
    tar_path = os.path.join(d, "final.tar")
    r = dm.get(f"/v1/models/{ft}/adapter.tar", out=tar_path)
    check(r.status == 200, f"adapter.tar download: {r.status}\n{dm.log_tail(1500)}")
    check("attachment" in (r.headers.get("content-disposition") or ""), f"Content-Disposition: {r.headers}")
    adapter = untar(tar_path, os.path.join(d, "final"))
    ref_st = read_bytes(os.path.join(ref, "adapter", "adapter_model.safetensors"))
    check(read_bytes(os.path.join(adapter, "adapter_model.safetensors")) == ref_st,
          "the daemon's final adapter differs from `lorad train`'s on the same spec and seed")

    # Byte ranges of a download.
    st_path = f"/v1/models/{ft}/adapter_model.safetensors"
    full = dm.get(st_path)
    size = len(full.body)
    check(full.status == 200 and full.body == ref_st, f"whole adapter_model.safetensors: {full.status}")
    check(full.headers.get("accept-ranges") == "bytes", f"Accept-Ranges: {full.headers.get('accept-ranges')}")
    part = dm.get(st_path, args=["-r", "10-109"])
    check(part.status == 206, f"Range bytes=10-109: {part.status}")
    check(part.headers.get("content-range") == f"bytes 10-109/{size}", f"Content-Range: {part.headers}")
    check(part.body == full.body[10:110], "Range bytes=10-109 returned other bytes")
    tail = dm.get(st_path, headers=["Range: bytes=-16"])
    check(tail.status == 206 and tail.body == full.body[-16:], f"Range bytes=-16: {tail.status}")
    bad = dm.get(st_path, headers=[f"Range: bytes={size}-"])
    check_error(bad, 416, what="unsatisfiable range")
    check(bad.headers.get("content-range") == f"bytes */{size}", f"416 Content-Range: {bad.headers}")

    # ---- checkpoints ----
    ckpts = dm.checkpoints(jid)
    steps = [c["step_number"] for c in ckpts]
    check(steps == sorted(steps, reverse=True) and set(steps) == set(range(8, total + 1, 8)) | {total},
          f"checkpoint steps {steps}, want every 8 and the last ({total}), newest first")
    for c in ckpts:
        check(re.fullmatch(r"ftckpt-[A-Za-z0-9]{1,64}", c["id"]) and c["object"] == "fine_tuning.job.checkpoint"
              and c["fine_tuning_job_id"] == jid, f"checkpoint object: {c}")
        # OpenAI's metrics object: the whole validation set's loss at every checkpoint, the periodic
        # evaluation's (valid_*) only where one ran (step 24, not 8 or 16), each the CLI's run's figure
        cm, m = c.get("metrics") or {}, ref_metrics[c["step_number"] - 1]
        check(sorted(cm) == sorted(["step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                                    "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"]),
              f"checkpoint {c['step_number']}: metrics keys {sorted(cm)}")
        check(cm["step"] == c["step_number"] and cm["full_valid_loss"] is not None, f"checkpoint metrics: {cm}")
        for key in cm:
            check(close(cm[key], m.get(key)), f"checkpoint {c['step_number']}: {key} {cm[key]}, the CLI's run {m.get(key)}")
    c16 = next(c for c in ckpts if c["step_number"] == 16)
    ctar = os.path.join(d, "ckpt16.tar")
    r = dm.get(f"/v1/fine_tuning/jobs/{jid}/checkpoints/{c16['id']}/adapter.tar", out=ctar)
    check(r.status == 200, f"checkpoint adapter.tar: {r.status}")
    cdir = untar(ctar, os.path.join(d, "ckpt16"))
    check(read_bytes(os.path.join(cdir, "adapter_model.safetensors"))
          == read_bytes(os.path.join(ref, "checkpoints", "step-16", "adapter_model.safetensors")),
          "checkpoint step 16's adapter differs from `lorad train`'s step-16 checkpoint")

    # ---- the adapter works: lorad generate with it runs and changes the base's greedy output ----
    prompt = [97, 108, 112, 104, 97, 32, 98]
    base_out = generate_ids(model, prompt, 12)
    ft_out = generate_ids(model, prompt, 12, adapter=adapter)
    ck_out = generate_ids(model, prompt, 12, adapter=cdir)
    check(ft_out != base_out, f"the fine-tuned adapter does not change the greedy output: {ft_out}")
    check(len(ck_out) == len(ft_out), f"checkpoint adapter generation: {ck_out}")
    log("downloads, ranges, checkpoints and generate ok")

    # ---- cancel: a long job is cancelled within a few seconds ----
    long_spec = {"model": "tiny", "training_file": f["id"], "seed": 8,
                 "hyperparameters": hp(1000, checkpoint_every_steps=500), "lora": LORA}
    lj = dm.create_job_ok(long_spec)["id"]
    dm.wait_job(lj, "running", timeout=60)
    dm.wait_step(lj, 2)
    t0 = time.time()
    c = dm.ok("POST", f"/v1/fine_tuning/jobs/{lj}/cancel", schema="FineTuningJob")
    check(c["id"] == lj and c["status"] in ("cancelling", "cancelled"), f"cancel answered {c['status']}")
    cj = dm.wait_job(lj, "cancelled", timeout=10)
    took = time.time() - t0
    check(took < 5, f"cancel took {took:.1f} s")
    check(cj.get("fine_tuned_model") is None and cj["progress"]["step"] < cj["progress"]["total_steps"],
          f"cancelled job: {cj}")
    log(f"cancel ok ({took:.2f} s)")

    # ---- pause, then resume: the result is the uninterrupted run's, bit for bit ----
    pr_spec = {"model": "tiny", "training_file": f["id"], "seed": 9,
               "hyperparameters": hp(25, checkpoint_every_steps=50, keep_checkpoints=2), "lora": LORA}
    pj = dm.create_job_ok(pr_spec)["id"]
    dm.wait_step(pj, 3)
    p = dm.ok("POST", f"/v1/fine_tuning/jobs/{pj}/pause", schema="FineTuningJob")
    check(p["id"] == pj and p["status"] in ("running", "paused"), f"pause answered {p['status']}")
    paused = dm.wait_job(pj, "paused", timeout=30)
    at = paused["progress"]["step"]
    total_pr = paused["progress"]["total_steps"]
    check(3 <= at < total_pr, f"paused at step {at} of {total_pr}")
    ck = dm.checkpoints(pj)
    check(ck and ck[0]["step_number"] == at, f"pausing at step {at} left checkpoints {[c['step_number'] for c in ck]}")
    check([int(x["step"]) for x in dm.metrics(pj)] == list(range(1, at + 1)), "metrics of the paused job")
    time.sleep(0.5)
    check(dm.job(pj)["progress"]["step"] == at and dm.job(pj)["status"] == "paused", "a paused job moved on")
    ref_pr = reference_run(d, "ref-pause", model, data, pr_spec)
    res = dm.ok("POST", f"/v1/fine_tuning/jobs/{pj}/resume", schema="FineTuningJob")
    check(res["status"] in ("queued", "running"), f"resume answered {res['status']}")
    done = dm.wait_job(pj, "succeeded", timeout=120)
    got = dm.get(f"/v1/models/{done['fine_tuned_model']}/adapter_model.safetensors")
    check(got.status == 200, f"paused job's adapter: {got.status}")
    check(got.body == read_bytes(os.path.join(ref_pr, "adapter", "adapter_model.safetensors")),
          f"paused at step {at} and resumed: the adapter differs from the uninterrupted run's")
    check_metric_history(dm.metrics(pj), read_metrics_jsonl(ref_pr), "metrics after pause/resume")
    check(dm.first_step_of_last_run(pj) == at + 1, f"resumed from step {dm.first_step_of_last_run(pj)}, want {at + 1}")
    log(f"pause at step {at} of {total_pr} and resume ok")

    # ---- idempotency ----
    idem = {"model": "tiny", "training_file": f["id"], "seed": 10,
            "hyperparameters": hp(1, max_steps=4), "lora": LORA}
    a = dm.create_job_ok(idem, headers=["Idempotency-Key: e2e-key-1"])
    b = dm.create_job_ok(idem, headers=["Idempotency-Key: e2e-key-1"])
    check(a["id"] == b["id"], f"same Idempotency-Key and body made two jobs: {a['id']} {b['id']}")
    other = dict(idem, seed=11)
    check_error(dm.create_job(other, headers=["Idempotency-Key: e2e-key-1"]), 422, what="key reused, other body")
    c = dm.create_job_ok(idem)
    check(c["id"] != a["id"], "without a key the same body must make a new job")
    n = sum(1 for x in dm.ok("GET", "/v1/fine_tuning/jobs?limit=100")["data"] if x.get("seed") == 10)
    check(n == 2, f"want exactly 2 jobs of the idempotency body (one keyed, one not), found {n}")
    for x in (a["id"], c["id"]):
        dm.wait_job(x, "succeeded", timeout=60)
    log("idempotency ok")

    # ---- /metrics: the job gauges agree with the job list, the request counters with our requests ----
    jobs = dm.ok("GET", "/v1/fine_tuning/jobs?limit=100", schema="FineTuningJobList")["data"]
    r = dm.get("/metrics")
    check(r.status == 200 and (r.headers.get("content-type") or "").startswith("text/plain"), f"/metrics: {r.status}")
    prom = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            prom[name] = float(value)
    for status in ("succeeded", "cancelled", "queued", "running"):
        want = sum(1 for j in jobs if j["status"] == status)
        series = 'lorad_jobs{status="%s"}' % status
        check(prom.get(series) == want, f"{series} is {prom.get(series)}, the job list has {want}")
    tokens = sum(j.get("trained_tokens") or 0 for j in jobs)
    check(prom.get("lorad_train_tokens_total") == tokens,
          f"lorad_train_tokens_total {prom.get('lorad_train_tokens_total')} != the jobs' trained_tokens sum {tokens}")
    uploads = prom.get('lorad_http_requests_total{method="POST",route="/v1/files",status="200"}')
    check(uploads == 3, f"POST /v1/files 200 counted {uploads} times, this test made 3")

    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
