#!/usr/bin/python3
"""`lorad serve` as a process: the real binary on real sockets, driven with real curl.

Checks: --port 0 logs `listening on http://ADDR:PORT` (one stderr line other tests parse), /livez
and /readyz answer, API keys are enforced and re-read on SIGHUP (a bad key file is refused naming the line: fatal at
start, the old keys stay at SIGHUP), SIGTERM exits 0 quickly, the state
layout is created 0700, a bad config key fails naming the line, a port in use fails clearly, the
sd_notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) reaches $NOTIFY_SOCKET, a socket
passed by socket activation ($LISTEN_FDS/$LISTEN_PID) is served, unix_socket works (including
over a stale socket file), and a second daemon on the same state directory is refused."""
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

LORAD = os.environ["LORAD_BIN"]
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)


class Daemon:
    """A lorad serve child; stderr is collected line by line."""

    def __init__(self, args, env=None, pass_fds=(), preexec_fn=None, popen=None):
        self.lines = []
        if popen is not None:
            self.p = popen
        else:
            self.p = subprocess.Popen([LORAD, "serve"] + args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      env=env, pass_fds=pass_fds, preexec_fn=preexec_fn)
        self.buf = b""

    def read_until(self, pattern, timeout=10.0):
        """Returns the first match of pattern in stderr (lines read so far, then new ones), or None."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        fd = self.p.stderr.fileno()
        seen = 0
        while True:
            for line in self.lines[seen:]:
                m = rx.search(line)
                if m:
                    return m
            seen = len(self.lines)
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self.lines.append(line.decode(errors="replace"))

    def url(self):
        m = self.read_until(r"listening on (http://[^ ]+)")
        return m.group(1) if m else None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig and returns (exit status, seconds taken)."""
        t0 = time.monotonic()
        self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
            rc = "timeout"
        took = time.monotonic() - t0
        self.read_until(r"\Z.", 0.5)  # drain
        return rc, took

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def curl(url, *extra):
    """Returns (HTTP status, body) using the real curl."""
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"] + list(extra) + [url],
                         capture_output=True, text=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_basics(tmp):
    state, models = os.path.join(tmp, "state"), os.path.join(tmp, "models")
    os.makedirs(models)
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write("# one key a line\nkey-one\n")
    os.chmod(keys, 0o600)
    conf = os.path.join(tmp, "lorad.conf")

    def write_conf(key_file, log_level):
        with open(conf, "w") as f:
            f.write(f"state_dir {state}\nmodels_dir {models}\napi_key_file {key_file}\nlog_level {log_level}\n")

    write_conf(keys, "info")
    d = Daemon(["--config", conf, "--port", "0", "--unix-socket", os.path.join(tmp, "api.sock")])
    try:
        url = d.url()
        check(url is not None and re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", url),
              f"--port 0 logs 'listening on http://127.0.0.1:PORT' (got {url}, log {d.lines})")
        if not url:
            return
        check(d.read_until(r"\bready\b") is not None, "logs ready")
        code, body = curl(url + "/livez")
        check(code == 200, f"/livez 200 (got {code} {body})")
        code, body = curl(url + "/readyz")
        check(code == 200, f"/readyz 200 once ready (got {code} {body})")
        # State layout, private to the daemon.
        for sub in ("", "files", "uploads", "jobs"):
            p = os.path.join(state, sub)
            check(os.path.isdir(p) and stat.S_IMODE(os.stat(p).st_mode) == 0o700, f"{p} exists with mode 0700")
        check(os.path.isfile(os.path.join(state, "lorad.db")), "the store is STATE/lorad.db")
        # Keys: /metrics is not public.
        code, _ = curl(url + "/metrics")
        check(code == 401, f"no key -> 401 (got {code})")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-one")
        check(code == 200, f"key-one -> 200 (got {code})")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-two")
        check(code == 403, f"unknown key -> 403 (got {code})")
        # SIGHUP: the key file and the log level are read again.
        with open(keys, "w") as f:
            f.write("key-two\n")
        write_conf(keys, "debug")
        d.p.send_signal(signal.SIGHUP)
        check(d.read_until(r"SIGHUP: log level debug") is not None, "SIGHUP re-reads log_level from the config file")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-one")
        check(code == 403, f"after SIGHUP the old key is refused (got {code})")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-two")
        check(code == 200, f"after SIGHUP the new key works (got {code})")
        # SIGHUP with api_key_file pointing elsewhere switches files; an unreadable one keeps the old.
        keys2 = os.path.join(tmp, "keys2")
        with open(keys2, "w") as f:
            f.write("key-three\n")
        os.chmod(keys2, 0o600)
        write_conf(keys2, "debug")
        d.p.send_signal(signal.SIGHUP)
        check(d.read_until(r"SIGHUP: API keys now from .*keys2") is not None, "SIGHUP switches to a new api_key_file")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-two")
        check(code == 403, f"after the switch the old file's key is refused (got {code})")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-three")
        check(code == 200, f"after the switch the new file's key works (got {code})")
        write_conf(f"{tmp}/missing-keys", "debug")
        d.p.send_signal(signal.SIGHUP)
        check(d.read_until(r"SIGHUP: cannot read api_key_file .*missing-keys.*the old file and keys stay") is not None,
              "SIGHUP with an unreadable new api_key_file says the old one stays")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-three")
        check(code == 200, f"... and the old keys still work (got {code})")
        # A new key file with a line the loader refuses keeps the old file and keys, and the log
        # names the line; none of the bad file is used (not its good key, not pieces of the long one).
        bad_keys = os.path.join(tmp, "bad-keys")
        with open(bad_keys, "w") as f:
            f.write("# a good key, then one too long\nkey-four\n" + "k" * 300 + "\n")
        os.chmod(bad_keys, 0o600)
        write_conf(bad_keys, "debug")
        d.p.send_signal(signal.SIGHUP)
        check(d.read_until(r"SIGHUP: api_key_file .*bad-keys line 3: key is 300 bytes, longer than the 255-byte "
                           r"limit; the old file and keys stay") is not None,
              f"SIGHUP with a too-long key in a new api_key_file names the line and keeps the old file ({d.lines[-3:]})")
        for key, want in (("key-three", 200), ("key-four", 403), ("k" * 255, 403), ("k" * 43, 403)):
            code, _ = curl(url + "/metrics", "-H", f"Authorization: Bearer {key}")
            check(code == want, f"after the refused file, key {key[:12]}... (len {len(key)}) -> {want} (got {code})")
        # The same file re-read with a bad line keeps its old keys too.
        with open(keys2, "w") as f:
            f.write("key-three\nkey five\n")
        write_conf(keys2, "debug")
        d.p.send_signal(signal.SIGHUP)
        check(d.read_until(r"SIGHUP: api_key_file .*keys2 line 2: .*space.*; the old keys stay") is not None,
              f"SIGHUP re-reading a key file with a space in a key names the line and keeps the keys ({d.lines[-3:]})")
        code, _ = curl(url + "/metrics", "-H", "Authorization: Bearer key-three")
        check(code == 200, f"... and the old keys still work (got {code})")
        with open(keys2, "w") as f:
            f.write("key-three\n")
        write_conf(keys2, "debug")  # what the restarts below start with
        check(not any("key-one" in l or "key-two" in l or "key-three" in l for l in d.lines),
              "API keys never appear in the log")
        # One daemon per state directory: a second one would requeue this one's running jobs.
        p = subprocess.run([LORAD, "serve", "--config", conf, "--port", "0"], capture_output=True, text=True, timeout=20)
        check(p.returncode != 0, "a second daemon on the same state_dir is refused")
        check(f"another lorad serve (pid {d.p.pid}) is using state_dir {state}" in p.stderr,
              f"... naming the running one: {p.stderr!r}")
        code, _ = curl(url + "/livez")
        check(code == 200, f"the first daemon is unaffected (got {code})")
        # The unix socket serves the same API.
        code, _ = curl("http://lorad/livez", "--unix-socket", os.path.join(tmp, "api.sock"))
        check(code == 200, f"/livez over unix_socket (got {code})")
        rc, took = d.stop(signal.SIGTERM)
        check(rc == 0, f"SIGTERM exits 0 (got {rc})")
        check(took < 5, f"SIGTERM exits quickly (took {took:.1f} s)")
        check(any("stopped" in l for l in d.lines), "logs stopped")
        check(not os.path.exists(os.path.join(tmp, "api.sock")), "the unix socket is removed at exit")
    finally:
        d.kill()

    # A stale socket file (a killed daemon's) is replaced; SIGINT stops like SIGTERM.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(tmp, "api.sock"))
    stale.close()
    d = Daemon(["--config", conf, "--port", "0", "--unix-socket", os.path.join(tmp, "api.sock")])
    try:
        check(d.url() is not None, f"starts over a stale unix socket file ({d.lines})")
        code, _ = curl("http://lorad/livez", "--unix-socket", os.path.join(tmp, "api.sock"))
        check(code == 200, f"/livez over a re-created unix socket (got {code})")
        rc, _ = d.stop(signal.SIGINT)
        check(rc == 0, f"SIGINT exits 0 (got {rc})")
    finally:
        d.kill()


def test_bad_config_and_port_in_use(tmp):
    bad = os.path.join(tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write("workers 2\nno_such_key 1\n")
    p = subprocess.run([LORAD, "serve", "--config", bad, "--port", "0", "--state-dir", os.path.join(tmp, "s1")],
                       capture_output=True, text=True, timeout=20)
    check(p.returncode != 0, "a bad config key fails")
    check("bad.conf:2" in p.stderr and "no_such_key" in p.stderr, f"the error names the file, line and key: {p.stderr!r}")

    # A bad api_key_file is a configuration error: refused at start (and by --check-config) naming
    # the file and line, before the state directory is touched.
    bad_keys = os.path.join(tmp, "bad-keys")
    with open(bad_keys, "w") as f:
        f.write("good-key\n\n" + "x" * 300 + "\n")
    for extra in ([], ["--check-config"]):
        state = os.path.join(tmp, "s-keys")
        try:
            p = subprocess.run([LORAD, "serve", "--port", "0", "--state-dir", state, "--models-dir", tmp,
                                "--api-key-file", bad_keys] + extra, capture_output=True, text=True, timeout=10)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired as e:  # it started serving: run() has killed it
            rc, err = "still running after 10 s", (e.stderr or b"").decode(errors="replace")
        check(rc == 2, f"serve {extra} with a too-long API key exits 2 (got {rc})")
        check(f"api_key_file {bad_keys} line 3: key is 300 bytes, longer than the 255-byte limit" in err,
              f"... naming the file and the line: {err!r}")
        check(not os.path.exists(state), f"... before the state directory is created ({extra})")

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    t0 = time.monotonic()
    p = subprocess.run([LORAD, "serve", "--port", str(port), "--state-dir", os.path.join(tmp, "s2"), "--models-dir", tmp],
                       capture_output=True, text=True, timeout=20)
    busy.close()
    check(p.returncode != 0, "a port in use fails")
    check(time.monotonic() - t0 < 10, "... at once")
    check(f"127.0.0.1:{port}" in p.stderr and "Address already in use" in p.stderr,
          f"the error names the address and the cause: {p.stderr!r}")


def test_sd_notify(tmp):
    path = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    d = Daemon(["--port", "0", "--state-dir", os.path.join(tmp, "state"), "--models-dir", tmp], env=env)
    msgs = []

    def collect(until, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(until in m for m in msgs):
                return True
            r, _, _ = select.select([sock], [], [], 0.1)
            if r:
                msgs.append(sock.recv(4096).decode())
        return any(until in m for m in msgs)

    try:
        check(collect("READY=1"), f"READY=1 is sent (got {msgs})")
        ready = next((m for m in msgs if "READY=1" in m), "")
        check(re.search(r"STATUS=0 queued, 0 running", ready) is not None, f"STATUS= with the queue comes with READY: {ready!r}")
        check(d.url() is not None, "still logs the listening line under systemd")
        n_before = sum("WATCHDOG=1" in m for m in msgs)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:
            collect("never", 0.1)
        n_wd = sum("WATCHDOG=1" in m for m in msgs) - n_before
        check(n_wd >= 3, f"WATCHDOG=1 about every WATCHDOG_USEC/2 (got {n_wd} in 1.2 s at 0.4 s)")
        rc, _ = d.stop(signal.SIGTERM)
        collect("STOPPING=1", 2)
        check(any("STOPPING=1" in m for m in msgs), f"STOPPING=1 is sent (got {msgs})")
        check(rc == 0, f"exit 0 under systemd (got {rc})")
    finally:
        d.kill()
        sock.close()


def test_socket_activation(tmp):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    # A port lorad must NOT bind: with LISTEN_FDS the configured address is systemd's business.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: fd 3 is the listening socket and LISTEN_PID is this very process.
        try:
            os.close(r)
            os.dup2(w, 2)
            os.dup2(lsock.fileno(), 3)
            os.set_inheritable(3, True)
            os.environ["LISTEN_FDS"] = "1"
            os.environ["LISTEN_PID"] = str(os.getpid())
            os.execv(LORAD, [LORAD, "serve", "--port", str(busy_port), "--state-dir", os.path.join(tmp, "state"),
                             "--models-dir", tmp])
        finally:
            os._exit(127)
    os.close(w)
    lsock.close()

    class Child:
        def __init__(self):
            self.stderr = os.fdopen(r, "rb", buffering=0)

        def send_signal(self, sig):
            os.kill(pid, sig)

        def wait(self, timeout):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.02)
            raise subprocess.TimeoutExpired("lorad", timeout)

        def poll(self):
            return None

        def kill(self):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    child = Child()
    d = Daemon([], popen=child)
    try:
        url = d.url()
        check(url == f"http://127.0.0.1:{port}", f"serves the inherited socket and logs its address (got {url}, {d.lines})")
        code, body = curl(f"http://127.0.0.1:{port}/livez")
        check(code == 200, f"/livez over the socket-activated listener (got {code} {body})")
        rc, _ = d.stop(signal.SIGTERM)
        check(rc == 0, f"exit 0 (got {rc})")
    finally:
        child.kill()
        busy.close()


def main():
    with tempfile.TemporaryDirectory(prefix="lorad-serve-") as tmp:
        for name, fn in [("basics", test_basics), ("bad config, port in use", test_bad_config_and_port_in_use),
                         ("sd_notify", test_sd_notify), ("socket activation", test_socket_activation)]:
            sub = os.path.join(tmp, name.split()[0].strip(","))
            os.makedirs(sub)
            print(f"-- {name}", flush=True)
            fn(sub)
    if FAILURES:
        print(f"serve_lifecycle: {len(FAILURES)} check(s) failed")
        return 1
    print("serve_lifecycle: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
