"""Shared helpers of the `lorad serve` end-to-end tests: a real daemon on an ephemeral port with a
temporary state directory, driven with the real `curl` binary; tiny models and datasets; the
uninterrupted reference run (`lorad train`, the CLI) the daemon's adapters are compared with."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LORAD = os.environ.get("LORAD_BIN", "lorad")
SOURCE = os.environ.get("LORAD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("LORAD_SHARED_DATA", os.path.join(SOURCE, "..", "shared", "data"))
# the ASan+UBSan build (tests/CMakeLists.txt): trim shapes, keep every check
SANITIZED = os.environ.get("LORAD_TEST_SANITIZED") == "1"
PYTHON = os.environ.get("LORAD_PYTHON", "/usr/bin/python3")

ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "rate_limit_error",
               "service_unavailable", "server_error"}
TERMINAL = {"succeeded", "failed", "cancelled"}


class Fail(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Fail(message)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def proc_status(pid, field):
    """An integer field of /proc/PID/status (Threads, VmRSS in kB, ...)."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def metrics_gauge(dm, name):
    """The value of an unlabelled series of the daemon's /metrics, or None when it has none."""
    m = re.search(rf"^{name} (\d+)$", dm.get("/metrics").body.decode(), re.M)
    return int(m.group(1)) if m else None


# ---- models and data -------------------------------------------------------------------------

def make_model(out, dim=32, layers=2, hidden=64, seed=1234):
    """A tiny random LlamaForCausalLM with the byte-level tokenizer (vocab 259), written by
    scripts/make-demo-model. Small enough that a step takes milliseconds on one thread."""
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), out, "--dim", str(dim),
                    "--layers", str(layers), "--heads", "4", "--kv-heads", "2", "--hidden", str(hidden),
                    "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    return out


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def write_text_dataset(path, n, seed=5):
    """n {"text"} records of NATO words (plain ASCII, so the byte-level tokenizer takes them)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}) + "\n")
    return path


def reference_run(workdir, name, model_path, data_path, spec, valid_path=None):
    """Trains spec with `lorad train` (model, training_file and, with valid_path, validation_file as
    local paths) into workdir/name and returns that directory: the uninterrupted run a daemon job of
    the same spec must equal."""
    job = dict(spec)
    job["model"] = model_path
    job["training_file"] = data_path
    if valid_path:
        job["validation_file"] = valid_path
    path = os.path.join(workdir, name + ".json")
    with open(path, "w") as f:
        json.dump(job, f)
    out = os.path.join(workdir, name)
    p = subprocess.run([LORAD, "train", path, "--out", out], capture_output=True, text=True, timeout=600)
    check(p.returncode == 0, f"reference `lorad train` exited {p.returncode}:\n{p.stderr[-3000:]}")
    return out


def read_metrics_jsonl(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ---- openapi.yaml ----------------------------------------------------------------------------

class Spec:
    """The response schemas of openapi.yaml, checked with a small validator of the JSON Schema
    subset the spec uses ($ref, allOf, oneOf, type, const, enum, required, properties,
    additionalProperties: false, items, pattern, numeric and length bounds). oneOf is checked as
    "at least one branch" (the spec's branches do not overlap, and this keeps messages short)."""

    def __init__(self, path=None):
        import yaml  # python3-yaml: a dependency of Debian's python3-torch, so always present here
        with open(path or os.path.join(SOURCE, "openapi.yaml")) as f:
            self.doc = yaml.safe_load(f)

    def errors(self, value, schema, where="$"):
        out = []
        self._check(value, schema, where, out)
        return out

    def _check(self, v, sch, where, out):
        if "$ref" in sch:
            name = sch["$ref"].rsplit("/", 1)[-1]
            self._check(v, self.doc["components"]["schemas"][name], where, out)
        for sub in sch.get("allOf", []):
            self._check(v, sub, where, out)
        if "oneOf" in sch:
            if not any(not self.errors(v, sub, where) for sub in sch["oneOf"]):
                out.append(f"{where}: {v!r} matches no oneOf branch")
        if "const" in sch and v != sch["const"]:
            out.append(f"{where}: {v!r} != const {sch['const']!r}")
        if "enum" in sch and v not in sch["enum"]:
            out.append(f"{where}: {v!r} not in {sch['enum']}")
        if "type" in sch:
            types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
            if not any(_json_type_ok(v, t) for t in types):
                out.append(f"{where}: {v!r} is not of type {types}")
                return
        if isinstance(v, str):
            if "pattern" in sch and not re.search(sch["pattern"], v):
                out.append(f"{where}: {v!r} does not match {sch['pattern']}")
            if len(v) > sch.get("maxLength", len(v)) or len(v) < sch.get("minLength", 0):
                out.append(f"{where}: length {len(v)} out of bounds")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "minimum" in sch and v < sch["minimum"] or "maximum" in sch and v > sch["maximum"]:
                out.append(f"{where}: {v} out of [{sch.get('minimum')}, {sch.get('maximum')}]")
            if "exclusiveMinimum" in sch and v <= sch["exclusiveMinimum"] or \
                    "exclusiveMaximum" in sch and v >= sch["exclusiveMaximum"]:
                out.append(f"{where}: {v} out of the exclusive bounds")
        if isinstance(v, dict):
            for k in sch.get("required", []):
                if k not in v:
                    out.append(f"{where}: required {k!r} missing")
            props = sch.get("properties", {})
            for k, val in v.items():
                if k in props:
                    self._check(val, props[k], f"{where}.{k}", out)
                elif sch.get("additionalProperties") is False:
                    out.append(f"{where}: unexpected key {k!r}")
        if isinstance(v, list) and "items" in sch:
            for i, item in enumerate(v):
                self._check(item, sch["items"], f"{where}[{i}]", out)

    def check(self, value, name, what=""):
        """Fails unless value conforms to components.schemas[name]; returns value."""
        errs = self.errors(value, {"$ref": f"#/components/schemas/{name}"})
        check(not errs, f"{what or name}: does not conform to openapi.yaml's {name}:\n  " + "\n  ".join(errs[:12]))
        return value


def _json_type_ok(v, t):
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list)
    if t == "object":
        return isinstance(v, dict)
    return False


_SPEC = None


def api_spec():
    global _SPEC
    if _SPEC is None:
        _SPEC = Spec()
    return _SPEC


# ---- HTTP through curl -----------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value (last response only)
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise Fail(f"HTTP {self.status}: body is not JSON: {self.body[:300]!r}")

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:400]!r}"


def parse_headers(text):
    """Headers of the last response in a curl -D dump (there may be 100 Continue blocks first)."""
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    headers = {}
    if blocks:
        for line in blocks[-1].splitlines()[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
    return headers


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies, so a test killed by
    ctest's timeout leaves no daemon behind."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Daemon:
    """One `lorad serve` process on an ephemeral port. stderr goes to a log file that is printed
    when a test fails."""

    def __init__(self, workdir, models_dir, state_dir=None, api_key=None, extra=(), name="daemon"):
        self.workdir = workdir
        self.models_dir = models_dir
        self.state_dir = state_dir or os.path.join(workdir, name + "-state")
        self.api_key = api_key
        self.extra = list(extra)
        self.name = name
        self.proc = None
        self.port = None
        self.key_file = None
        self.starts = 0
        self.logs = []
        if api_key is not None:
            self.key_file = os.path.join(workdir, name + "-keys")
            with open(self.key_file, "w") as f:
                f.write("# test keys\n" + api_key + "\n")

    def start(self, timeout=30):
        self.starts += 1
        log_path = os.path.join(self.workdir, f"{self.name}-{self.starts}.log")
        self.logs.append(log_path)
        if self.proc is not None and not self.log_file.closed:
            self.log_file.close()
        args = [LORAD, "serve", "--config", "/dev/null", "--port", "0", "--state-dir", self.state_dir,
                "--models-dir", self.models_dir] + self.extra
        if self.key_file:
            args += ["--api-key-file", self.key_file]
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(log_path) as f:
                m = re.search(r"listening on http://([0-9.]+):(\d+)", f.read())
            if m:
                self.port = int(m.group(2))
                self.base = f"http://127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                raise Fail(f"lorad serve exited {self.proc.returncode} before listening:\n{self.log_tail()}")
            time.sleep(0.05)
        raise Fail(f"lorad serve did not log 'listening on http://ADDR:PORT' within {timeout} s:\n{self.log_tail()}")

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        r = None
        while time.time() < deadline:
            r = self.request("GET", "/readyz")
            if r.status == 200:
                return
            time.sleep(0.1)
        raise Fail(f"/readyz never answered 200 (last {r})")

    def log_tail(self, n=4000):
        out = []
        for p in self.logs:
            try:
                with open(p) as f:
                    out.append(f"--- {p}\n" + f.read()[-n:])
            except OSError:
                pass
        return "\n".join(out)

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self.log_file.close()

    def stop(self, timeout=30):
        """SIGTERM and wait; SIGKILL if it does not exit (and report that)."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            raise Fail(f"lorad serve did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}")
        self.log_file.close()
        return rc

    # ---- requests ----

    def curl_args(self, auth=True):
        a = ["curl", "-sS", "--http1.1", "-g"]
        if auth and self.api_key is not None:
            a += ["-H", f"Authorization: Bearer {self.api_key}"]
        return a

    def request(self, method, path, body=None, headers=(), args=(), auth=True, timeout=60, out=None):
        """One request with curl. body: dict (sent as JSON), bytes/str (sent as is), or None.
        Returns Resp; the body is bytes (or the path `out` when given)."""
        with tempfile.TemporaryDirectory(prefix="lorad-curl-") as t:
            hfile = os.path.join(t, "h")
            bfile = out or os.path.join(t, "b")
            cmd = self.curl_args(auth) + ["-X", method, "-D", hfile, "-o", bfile, "-w", "%{http_code}",
                                           "--max-time", str(timeout)]
            for h in headers:
                cmd += ["-H", h]
            if body is not None:
                if isinstance(body, dict) or isinstance(body, list):
                    body = json.dumps(body)
                    if not any(h.lower().startswith("content-type:") for h in headers):
                        cmd += ["-H", "Content-Type: application/json"]
                if isinstance(body, str):
                    body = body.encode()
                bodyfile = os.path.join(t, "req")
                with open(bodyfile, "wb") as f:
                    f.write(body)
                cmd += ["--data-binary", "@" + bodyfile]
            cmd += list(args)
            cmd.append(self.base + path)
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
            if p.returncode != 0 and not p.stdout.strip().isdigit():
                raise Fail(f"curl {method} {path} failed (rc {p.returncode}): {p.stderr.strip()}")
            status = int(p.stdout.strip() or 0)
            try:
                with open(hfile) as f:
                    headers_out = parse_headers(f.read())
            except OSError:
                headers_out = {}
            if out:
                data = out
            else:
                try:
                    data = read_bytes(bfile)
                except OSError:
                    data = b""
            return Resp(status, headers_out, data)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def ok(self, method, path, body=None, want=200, schema=None, **kw):
        """A request that must succeed; returns the parsed JSON body, checked against
        openapi.yaml's components.schemas[schema] when given."""
        r = self.request(method, path, body, **kw)
        check(r.status == want, f"{method} {path}: want {want}, got {r}\n{self.log_tail(1500)}")
        j = r.json()
        if schema:
            api_spec().check(j, schema, f"{method} {path}")
        return j

    def upload(self, path, purpose="fine-tune", args=()):
        """curl -F file=@PATH -F purpose=fine-tune: the multipart upload of the README."""
        return self.request("POST", "/v1/files", args=["-F", f"file=@{path}", "-F", f"purpose={purpose}", *args])

    def upload_ok(self, path):
        r = self.upload(path)
        check(r.status == 200, f"upload {path}: {r}")
        f = api_spec().check(r.json(), "File", "upload")
        check(f.get("object") == "file" and re.fullmatch(r"file-[A-Za-z0-9]{1,64}", f.get("id", "")),
              f"upload answered an unexpected file object: {f}")
        return f

    def create_job(self, spec, headers=()):
        return self.request("POST", "/v1/fine_tuning/jobs", spec, headers=headers)

    def create_job_ok(self, spec, headers=()):
        r = self.create_job(spec, headers)
        check(r.status == 200, f"create job: {r}\n{self.log_tail(1500)}")
        j = api_spec().check(r.json(), "FineTuningJob", "create job")
        check(j.get("object") == "fine_tuning.job" and re.fullmatch(r"ftjob-[A-Za-z0-9]{1,64}", j.get("id", "")),
              f"create job answered an unexpected object: {j}")
        return j

    def job(self, job_id):
        return self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}", schema="FineTuningJob")

    def wait_job(self, job_id, statuses, timeout=120, poll=0.1):
        """Polls GET /v1/fine_tuning/jobs/ID until its status is in statuses; a terminal status that
        is not wanted fails at once (with the job's error)."""
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        deadline = time.time() + timeout
        j = None
        while time.time() < deadline:
            j = self.job(job_id)
            if j["status"] in statuses:
                return j
            if j["status"] in TERMINAL:
                raise Fail(f"job {job_id} ended {j['status']} (error {j.get('error')}), waiting for {statuses}\n"
                           f"{self.log_tail(2000)}")
            time.sleep(poll)
        raise Fail(f"job {job_id} not {statuses} within {timeout} s: last {j}\n{self.log_tail(2000)}")

    def wait_step(self, job_id, step, timeout=120):
        """Polls the job until progress.step >= step (while it is running)."""
        deadline = time.time() + timeout
        j = None
        while time.time() < deadline:
            j = self.job(job_id)
            p = j.get("progress") or {}
            if (p.get("step") or 0) >= step:
                return j
            if j["status"] in TERMINAL:
                raise Fail(f"job {job_id} ended {j['status']} before step {step}; make the test job longer")
            time.sleep(0.05)
        raise Fail(f"job {job_id} did not reach step {step} within {timeout} s: {j}")

    def metrics(self, job_id):
        page = self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}/metrics", schema="MetricList")
        check(page.get("object") == "list" and isinstance(page.get("data"), list), f"metrics page shape: {page}")
        return page["data"]

    def checkpoints(self, job_id, limit=100):
        page = self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit={limit}",
                       schema="FineTuningJobCheckpointList")
        check(page.get("object") == "list" and isinstance(page.get("data"), list), f"checkpoint page shape: {page}")
        return page["data"]

    def events(self, job_id, limit=100):
        """Every event of the job through the paginated list (newest first, `after` = the last id
        of the previous page, as in OpenAI's API)."""
        out, after = [], None
        for _ in range(10000):
            q = f"?limit={limit}" + (f"&after={after}" if after else "")
            page = self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}/events{q}", schema="FineTuningJobEventList")
            check(page.get("object") == "list" and isinstance(page.get("data"), list), f"event page shape: {page}")
            out += page["data"]
            if not page.get("has_more"):
                return out
            check(page["data"], "an event page with has_more but no data")
            after = page["data"][-1]["id"]
        raise Fail("the event list never ends")

    def first_step_of_last_run(self, job_id):
        """The step of the first metrics event after the job's last queued -> running transition:
        where its newest run started (1 = from scratch, N+1 = from the checkpoint at step N)."""
        evs = self.events(job_id)[::-1]  # oldest first
        starts = [i for i, e in enumerate(evs) if e.get("type") == "status" and (e.get("data") or {}).get("to") == "running"]
        check(starts, f"job {job_id} has no status event with data.to 'running'")
        for e in evs[starts[-1]:]:
            if e.get("type") == "metrics":
                return int(e["data"]["step"])
        raise Fail(f"job {job_id}: no metrics event after its last start")

    def sse(self, job_id, last_event_id=None, timeout=120):
        """Reads the event stream with `curl -N` to its end; returns (events, raw text)."""
        cmd = self.curl_args() + ["-N", "--max-time", str(timeout)]
        if last_event_id is not None:
            cmd += ["-H", f"Last-Event-ID: {last_event_id}"]
        cmd.append(f"{self.base}/v1/fine_tuning/jobs/{job_id}/events?stream=true")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
        check(p.returncode == 0, f"curl -N events: rc {p.returncode} {p.stderr.strip()}\n{p.stdout[-1000:]}")
        return parse_sse(p.stdout), p.stdout

    def sse_start(self, job_id, timeout=120):
        """Starts `curl -N` on the stream in the background; sse_finish() reads it."""
        cmd = self.curl_args() + ["-N", "--max-time", str(timeout),
                                  f"{self.base}/v1/fine_tuning/jobs/{job_id}/events?stream=true"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sse_finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    check(proc.returncode == 0, f"curl -N events: rc {proc.returncode} {err.strip()}\n{out[-1000:]}")
    return parse_sse(out), out


def parse_sse(text):
    """Parses a text/event-stream: a list of (id or None, data string) per event, comments
    (keepalives) dropped. A stream that does not end with `data: [DONE]` fails."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        ev_id, data = None, []
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "id":
                ev_id = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((ev_id, "\n".join(data)))
    check(events and events[-1][1] == "[DONE]", f"event stream does not end with 'data: [DONE]':\n{text[-800:]}")
    return events


def check_error(r, status, param=..., code=None, what=""):
    """Asserts the one error shape {"error":{message,type,param,code}} with the given status, and
    param (when given: a string, or None for JSON null)."""
    check(r.status == status, f"{what}: want HTTP {status}, got {r}")
    check((r.headers.get("content-type") or "").startswith("application/json"),
          f"{what}: error Content-Type is {r.headers.get('content-type')!r}")
    body = api_spec().check(r.json(), "Error", what)
    check(isinstance(body, dict) and set(body) == {"error"}, f"{what}: error body is not {{'error': ...}}: {body}")
    e = body["error"]
    check(isinstance(e, dict) and {"message", "type", "param", "code"} <= set(e),
          f"{what}: error object lacks message/type/param/code: {e}")
    check(isinstance(e["message"], str) and e["message"], f"{what}: empty error message: {e}")
    check(e["type"] in ERROR_TYPES, f"{what}: error type {e['type']!r} is not one of the spec's")
    check(e["param"] is None or isinstance(e["param"], str), f"{what}: param must be a string or null: {e}")
    check(e["code"] is None or isinstance(e["code"], str), f"{what}: code must be a string or null: {e}")
    if param is not ...:
        check(e["param"] == param, f"{what}: want param {param!r}, got {e['param']!r} ({e['message']})")
    if code is not None:
        check(e["code"] == code, f"{what}: want code {code!r}, got {e['code']!r}")
    return e


# ---- adapters --------------------------------------------------------------------------------

def untar(tar_path, dest):
    """Extracts adapter.tar with the system tar and returns the directory holding
    adapter_model.safetensors (the tar may or may not have a top-level folder)."""
    os.makedirs(dest, exist_ok=True)
    p = subprocess.run(["tar", "-xf", tar_path, "-C", dest], capture_output=True, text=True)
    check(p.returncode == 0, f"tar -xf {tar_path}: {p.stderr}")
    for root, _, files in os.walk(dest):
        if "adapter_model.safetensors" in files and "adapter_config.json" in files:
            return root
    raise Fail(f"{tar_path} holds no adapter_model.safetensors + adapter_config.json: {os.listdir(dest)}")


def generate_ids(model_path, prompt_ids, max_tokens, adapter=None):
    """`lorad generate` greedily from token ids; returns the generated ids."""
    cmd = [LORAD, "generate", model_path, "--prompt-ids", ",".join(map(str, prompt_ids)),
           "--max-tokens", str(max_tokens), "--temperature", "0", "--ids"]
    if adapter:
        cmd += ["--adapter", adapter]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    ids = [int(x) for x in re.findall(r"-?\d+", p.stdout)]
    check(ids, f"{' '.join(cmd)} printed no token ids: {p.stdout!r}")
    return ids


# ---- test driver -----------------------------------------------------------------------------

def main(test):
    """Runs test(workdir, daemons): daemons is a list the test appends its Daemon objects to, so
    they are stopped (and their logs printed on failure) whatever happens."""
    d = tempfile.mkdtemp(prefix="lorad-e2e-")
    daemons = []
    t0 = time.time()
    ok = False
    try:
        test(d, daemons)
        ok = True
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
    except Exception:
        import traceback
        traceback.print_exc()
    finally:
        for dm in daemons:
            try:
                dm.kill()
            except Exception:
                pass
    if not ok:
        for dm in daemons:
            print(dm.log_tail(6000), file=sys.stderr)
        print(f"(work dir kept: {d})", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(d, ignore_errors=True)
    print(f"ok ({time.time() - t0:.1f} s)")
