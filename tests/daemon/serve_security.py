"""The claims of docs/security.md, each against a real daemon (with an api_key_file) and real curl
or a raw socket:

- auth: every operation of openapi.yaml that is not `security: []` answers 401 without a key and
  403 with a wrong one, in the one error shape, before doing anything (a POST's body is not read);
  the public ones (/livez, /readyz, /, /ui/{asset}) answer without one;
- ids: every path parameter of every route, given traversal and injection spellings (`..`,
  `%2e%2e`, `..%2f..%2fetc%2fpasswd`, an absolute path, a NUL, 300 characters, a shell quote), is
  a 4xx in the error shape, never 200 or 5xx, and the answer never carries /etc/passwd;
- limits: a 64 KB header, a JSON body over --max-request-body, JSON nested past --max-json-depth,
  an upload over --max-upload-bytes are refused with 4xx (or the connection closed for the
  header) and the daemon answers the next request;
- multipart bombs: 50,000 empty parts, a part with 200 KB of part headers, and a body whose close
  delimiter never comes are answered (4xx, or 200 storing only the file field's bytes) within
  seconds, and the daemon's resident memory grows by less than 64 MB over all of them."""
import json
import os
import re
import socket
import time

from serve_common import Daemon, api_spec, check, check_error, log, main, make_model

KEY = "security-test-key-0123456789"
PUBLIC_OK = {"/livez", "/readyz", "/", "/ui/{asset}"}
SAMPLE = {"file_id": "file-" + "B" * 24, "fine_tuning_job_id": "ftjob-" + "A" * 24,
          "checkpoint_id": "ftckpt-" + "C" * 24, "model": "tiny", "asset": "index.html"}
EVIL = ["..", "%2e%2e", "..%2f..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd", "file-%00abc", "ftjob-abc%00.json",
        "A" * 300, "x'%3b%20rm%20-rf%20%2f", "%25%32%65%25%32%65", "ftjob-..%5c..%5cwin.ini"]


def operations():
    """(method, path, public) for every operation of openapi.yaml, from the spec serve_common
    already loads; public means `security: []` on the operation."""
    ops = [(method.upper(), path, op.get("security") == [])
           for path, item in api_spec().doc["paths"].items()
           for method, op in item.items() if method in ("get", "put", "post", "delete", "patch")]
    check(len(ops) >= 25, f"parsed only {len(ops)} operations from openapi.yaml")
    return ops


def fill(path, **override):
    def sub(m):
        return override.get(m.group(1), SAMPLE.get(m.group(1), "x"))
    return re.sub(r"\{(\w+)\}", sub, path)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def raw_request(port, data, timeout=20):
    """Sends data on a fresh connection; returns (status or 0 when closed without one, seconds)."""
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while b"\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    return (int(m.group(1)) if m else 0), time.time() - t0


def alive(dm, what):
    check(dm.get("/livez", auth=False).status == 200, f"the daemon stopped answering after {what}")


def check_auth(dm):
    n = 0
    for method, path, public in operations():
        url = fill(path)
        body = {} if method == "POST" and "files" not in path else None
        if public:
            r = dm.request(method, url, body, auth=False)
            check(r.status != 401 and r.status != 403, f"{method} {path} is public in openapi.yaml but answered {r.status}")
            continue
        r = dm.request(method, url, body, auth=False)
        check_error(r, 401, what=f"{method} {path} without a key")
        r = dm.request(method, url, body, auth=False, headers=["Authorization: Bearer wrong-key-0000"])
        check_error(r, 403, what=f"{method} {path} with a wrong key")
        r = dm.request(method, url, body, auth=False, headers=["Authorization: Basic " + KEY])
        check(r.status in (401, 403), f"{method} {path} with the key as Basic auth: {r.status}")
        n += 1
    check(n >= 20, f"only {n} protected operations checked")
    log(f"auth: {n} protected operations answer 401 without a key and 403 with a wrong one")


def check_ids(dm):
    n = 0
    for method, path, public in operations():
        for param in re.findall(r"\{(\w+)\}", path):
            for evil in EVIL:
                url = fill(path, **{param: evil})
                body = {} if method == "POST" and "files" not in path else None
                r = dm.request(method, url, body, args=["--path-as-is"])
                what = f"{method} {path} with {param}={evil!r}"
                check(400 <= r.status < 500, f"{what}: HTTP {r.status}, want a 4xx")
                check(b"root:x:0:0" not in r.body, f"{what}: the answer carries /etc/passwd")
                if r.body[:1] == b"{":
                    e = json.loads(r.body).get("error")
                    check(isinstance(e, dict) and {"message", "type", "param", "code"} <= set(e), f"{what}: {r.body[:200]}")
                n += 1
    alive(dm, "the id attacks")
    log(f"ids: {n} traversal and injection spellings refused with 4xx")


def check_limits(dm):
    status, _ = raw_request(dm.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
    check(status == 0 or 400 <= status < 500, f"a 64 KB header: HTTP {status}")
    alive(dm, "a 64 KB header")
    big = json.dumps({"model": "tiny", "training_file": "file-a", "suffix": "x" * 5000})
    js = ["Content-Type: application/json"]
    check_error(dm.post("/v1/fine_tuning/jobs", big, headers=js), 413, what="JSON over --max-request-body")
    check_error(dm.post("/v1/fine_tuning/jobs", "[" * 1500 + "]" * 1500, headers=js), 400, code="json_too_deep",
                what="JSON nested 1500 deep")
    check_error(dm.post("/v1/chat/completions", '{"model":"tiny","messages":' + "[" * 40 + "]" * 40 + "}", headers=js),
                400, code="json_too_deep", what="chat body nested past --max-json-depth")
    up = os.path.join(dm.workdir, "big-upload.jsonl")
    with open(up, "w") as f:
        f.write('{"text": "' + "y" * 20000 + '"}\n')
    check_error(dm.upload(up), 413, param="file", what="upload over --max-upload-bytes")
    alive(dm, "the limits")
    log("limits: big header, big and deep JSON, big upload refused")


def multipart(port, body, boundary="B0und"):
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return raw_request(port, head + body)


def check_bombs(dm):
    before = rss_kb(dm.proc.pid)
    parts = b"".join(b"--B0und\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\n\r\n" for _ in range(50000))
    body = parts + b"--B0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n" \
                   b"{\"text\": \"hi\"}\n\r\n--B0und--\r\n"
    status, secs = multipart(dm.port, body)
    check(status in (200, 400, 413), f"50,000 empty parts: HTTP {status}")
    check(secs < 30, f"50,000 empty parts took {secs:.1f} s")
    hdrs = b"--B0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n" + \
           b"".join(b"X-Pad-%d: %s\r\n" % (i, b"z" * 1000) for i in range(200)) + b"\r\n{\"text\": \"hi\"}\n\r\n--B0und--\r\n"
    status, secs = multipart(dm.port, hdrs)
    check(status in (200, 400, 413), f"a part with 200 KB of headers: HTTP {status}")
    endless = b"--B0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n" + \
              b"{\"text\": \"--B0un\"}\n" * 100
    status, secs = multipart(dm.port, endless)
    check(status in (200, 400), f"a body whose close delimiter never comes: HTTP {status}")
    alive(dm, "the multipart bombs")
    grown = (rss_kb(dm.proc.pid) - before) / 1024
    check(grown < 64, f"the daemon's RSS grew by {grown:.0f} MB over the multipart bombs")
    # whatever was stored, no file of the bombs holds more than the file field's bytes
    files = dm.ok("GET", "/v1/files")["data"]
    check(all(f["bytes"] < 4096 for f in files), f"a bomb stored a large file: {[(f['id'], f['bytes']) for f in files]}")
    log(f"multipart bombs: answered, RSS grew {grown:.1f} MB")


def test(d, daemons):
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    dm = Daemon(d, models, api_key=KEY, extra=["--max-request-body", "4k", "--max-upload-bytes", "16k",
                                               "--max-json-depth", "16", "--inference.enabled=no"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    check_auth(dm)
    check_ids(dm)
    check_limits(dm)
    check_bombs(dm)
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
