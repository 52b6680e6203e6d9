"""The dashboard's files as the daemon serves them (issue 18), with real curl against a real
daemon that has an API key:

- GET / is web/index.html byte for byte and GET /ui/NAME is web/NAME for every file in web/,
  each with the Content-Type of its extension, all without a key (the page holds no data);
- every answer carries the strict Content-Security-Policy, nosniff, DENY framing and no-referrer;
- every /ui/ file index.html refers to exists, and the page loads nothing from another origin
  (no http(s):// or protocol-relative src/href) and has no inline script or style, which the
  policy would block;
- names that are not a file of web/ are 404 in the one error shape with param "asset": unknown
  names, "..", encoded traversal, a path with a slash, NUL; POST / is 405;
- the API itself still needs the key (a 401 without it)."""
import json
import os
import re

from serve_common import SOURCE, Daemon, check, log, main

WEB = os.path.join(SOURCE, "web")
KEY = "sk-dashboard-files-test"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
         ".png": "image/png", ".json": "application/json", ".txt": "text/plain"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def check_page_headers(r, what):
    h = {k.lower(): v for k, v in r.headers.items()}
    check(h.get("content-security-policy") == CSP, f"{what}: Content-Security-Policy {h.get('content-security-policy')!r}")
    check(h.get("x-content-type-options") == "nosniff", f"{what}: X-Content-Type-Options {h.get('x-content-type-options')!r}")
    check(h.get("x-frame-options") == "DENY", f"{what}: X-Frame-Options {h.get('x-frame-options')!r}")
    check(h.get("referrer-policy") == "no-referrer", f"{what}: Referrer-Policy {h.get('referrer-policy')!r}")
    return h


def test(d, daemons):
    models = os.path.join(d, "models")
    os.makedirs(models)
    dm = Daemon(d, models, api_key=KEY)
    daemons.append(dm)
    dm.start()
    dm.wait_ready()

    files = sorted(f for f in os.listdir(WEB) if os.path.isfile(os.path.join(WEB, f)))
    check("index.html" in files, f"web/ has no index.html: {files}")
    for name in files:
        with open(os.path.join(WEB, name), "rb") as f:
            want = f.read()
        for path in (["/", "/ui/index.html"] if name == "index.html" else ["/ui/" + name]):
            r = dm.get(path, auth=False)
            check(r.status == 200, f"GET {path} without a key: {r.status}, want 200")
            check(r.body == want, f"GET {path}: {len(r.body)} bytes, not web/{name} ({len(want)} bytes)")
            h = check_page_headers(r, f"GET {path}")
            ctype = TYPES[os.path.splitext(name)[1]]
            check(h.get("content-type", "").split(";")[0] == ctype, f"GET {path}: Content-Type {h.get('content-type')!r}, want {ctype}")

    with open(os.path.join(WEB, "index.html")) as f:
        page = f.read()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    for ref in refs:
        check(not re.match(r"^(?:[a-z]+:)?//", ref, re.I), f"index.html loads {ref!r} from another origin")
        if ref.startswith("/ui/"):
            check(ref[4:] in files, f"index.html refers to {ref}, which is not a file of web/")
    check(not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "index.html has an inline <script> the policy blocks")
    check(not re.search(r"<style\b|\sstyle\s*=", page), "index.html has inline style the policy blocks")
    check(not re.search(r"\son[a-z]+\s*=", page, re.I), "index.html has an inline event handler the policy blocks")

    for path in ["/ui/nope.js", "/ui/..", "/ui/%2e%2e", "/ui/..%2findex.html", "/ui/a%2fb", "/ui/%00index.html",
                 "/ui/index.html%00", "/ui/", "/ui/" + "a" * 300]:
        r = dm.get(path, auth=False, args=["--path-as-is"])  # curl would squash the dot segments
        check(r.status == 404, f"GET {path}: {r.status}, want 404")
        e = json.loads(r.body)["error"]
        check(set(e) == {"message", "type", "param", "code"}, f"GET {path}: error shape {e}")
        if path in ("/ui/nope.js", "/ui/..", "/ui/%2e%2e"):  # one segment: the asset route answers
            check(e["param"] == "asset" and e["code"] == "not_found", f"GET {path}: {e}")
    r = dm.request("POST", "/", auth=False)
    check(r.status == 405, f"POST /: {r.status}, want 405")
    r = dm.get("/v1/fine_tuning/jobs", auth=False)
    check(r.status == 401, f"GET /v1/fine_tuning/jobs without a key: {r.status}, want 401")
    log(f"dashboard files: {len(files)} served as in web/, traversal refused")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
