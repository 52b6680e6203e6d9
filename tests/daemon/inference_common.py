"""Helpers of the inference tests (issue 17): OpenAI-shaped /v1/completions and /v1/chat/completions
requests through real curl, and strict checks of the answers and of the server-sent event framing
OpenAI uses for `stream: true` (`data: {chunk}\\n\\n` lines, then `data: [DONE]\\n\\n`).

The checks follow OpenAI's API reference for these two routes, not lorad's output."""
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from serve_common import Fail, check, metrics_gauge, parse_headers, read_bytes

FINISH = {"stop", "length"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# ---- requests --------------------------------------------------------------------------------

def cut_off_streams(dm, model, n=200, max_cut_s=3.0, max_tokens=400, seed=None):
    """N streaming chat completions at once over raw sockets, each closed by its client at a random
    moment within max_cut_s of its first bytes (most mid-stream). Returns the N status codes (the
    first line's; "err" when the connection failed)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": max_tokens, "stream": True}).encode()
    auth = f"Authorization: Bearer {dm.api_key}\r\n" if dm.api_key else ""
    req = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    codes, lock = [], threading.Lock()
    rng = random.Random(seed)
    cuts = [rng.uniform(0, max_cut_s) for _ in range(n)]

    def one(cut):
        code = "err"
        try:
            with socket.create_connection(("127.0.0.1", dm.port), timeout=60) as s:
                s.sendall(req)
                code = s.recv(256)[9:12].decode(errors="replace")
                time.sleep(cut)
        except OSError:
            pass
        with lock:
            codes.append(code)
    ts = [threading.Thread(target=one, args=(c,)) for c in cuts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return codes


def generations_in_flight(dm):
    """The daemon's lorad_inference_generations gauge (/metrics), or -1 when it is missing."""
    n = metrics_gauge(dm, "lorad_inference_generations")
    return -1 if n is None else n


def infer(dm, path, body, timeout=120):
    """One non-streaming POST; returns serve_common.Resp."""
    return dm.post(path, body, timeout=timeout)


def infer_ok(dm, path, body, timeout=120, what=""):
    """A request that must be 200; returns its JSON, checked for OpenAI's shape."""
    r = infer(dm, path, body, timeout)
    check(r.status == 200, f"{what or path}: {json.dumps(body)[:300]}: want 200, got {r}\n{dm.log_tail(1500)}")
    j = r.json()
    n = body.get("n", 1)
    if path == CHAT:
        check_chat(j, body["model"], n, what or path)
    else:
        check_completion(j, body["model"], n, what or path)
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    # (lorad cuts a generation that reaches the model's context with finish_reason "length" too; the
    # requests of these tests stay well inside the context, so "length" means the max was reached.)
    if mt is not None:
        for c in j["choices"]:
            if c["finish_reason"] == "length":
                check(n > 1 or j["usage"]["completion_tokens"] == mt,
                      f"{what}: finish_reason length with max tokens {mt}, but usage.completion_tokens is "
                      f"{j['usage']['completion_tokens']}")
        check(j["usage"]["completion_tokens"] <= mt * n,
              f"{what}: completion_tokens {j['usage']['completion_tokens']} > max tokens {mt} x n {n}")
    return j


def text_of(j, i=0):
    c = j["choices"][i]
    return c["message"]["content"] if "message" in c else c["text"]


def stream_start(dm, path, body, timeout=300):
    """`curl -N` of a streaming request in the background, its body written to a file (so a client
    that does not read cannot stall the server on a full pipe). Returns a handle for stream_finish /
    stream_lines."""
    t = tempfile.mkdtemp(prefix="lorad-stream-")
    req, out, hdr = (os.path.join(t, x) for x in ("req", "out", "hdr"))
    with open(req, "w") as f:
        json.dump(body, f)
    cmd = dm.curl_args() + ["-N", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" + req,
                            "-D", hdr, "-o", out, "-w", "%{http_code}", "--max-time", str(timeout), dm.base + path]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return {"proc": proc, "out": out, "hdr": hdr, "dir": t, "body": body, "path": path}


def stream_bytes(h):
    try:
        return read_bytes(h["out"])
    except OSError:
        return b""


def stream_close(h):
    """Kills the curl if it still runs (the client leaving) and removes its files."""
    if h["proc"].poll() is None:
        h["proc"].kill()
    h["proc"].communicate()
    shutil.rmtree(h["dir"], ignore_errors=True)


def stream_finish(h, timeout=300):
    """Waits for the curl of stream_start; returns (status, headers, raw body bytes)."""
    out, err = h["proc"].communicate(timeout=timeout)
    check(h["proc"].returncode == 0, f"curl -N {h['path']}: rc {h['proc'].returncode} {err.strip()}")
    try:
        with open(h["hdr"]) as f:
            headers = parse_headers(f.read())
    except OSError:
        headers = {}
    return int(out.strip() or 0), headers, stream_bytes(h)


def stream(dm, path, body, timeout=300, what=""):
    """A streaming request that must be 200 with Content-Type text/event-stream; returns the chunks
    (parsed JSON, [DONE] removed) after parse_stream's framing checks."""
    h = stream_start(dm, path, body, timeout)
    try:
        status, headers, raw = stream_finish(h, timeout + 10)
    finally:
        stream_close(h)
    check(status == 200, f"{what or path} (stream): want 200, got {status}: {raw[:400]!r}\n{dm.log_tail(1500)}")
    ctype = headers.get("content-type") or ""
    check(ctype.startswith("text/event-stream"), f"{what}: stream Content-Type is {ctype!r}")
    return parse_stream(raw, what)


def parse_stream(raw, what=""):
    """OpenAI's framing, exactly: every event is one line `data: ` + JSON, each followed by a blank
    line, and the last is `data: [DONE]`. Returns the JSON chunks."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail(f"{what}: the stream is not UTF-8 ({e}): {raw[:300]!r}")
    check(text.endswith("\n\n"), f"{what}: the stream does not end with a blank line: {text[-200:]!r}")
    events = text[:-2].split("\n\n")
    payloads = []
    for ev in events:
        check("\n" not in ev and "\r" not in ev, f"{what}: an event of more than one line: {ev[:300]!r}")
        check(ev.startswith("data: "), f"{what}: an event line that is not 'data: ...': {ev[:300]!r}")
        payloads.append(ev[len("data: "):])
    check(payloads and payloads[-1] == "[DONE]", f"{what}: the stream does not end with 'data: [DONE]': {text[-300:]!r}")
    check(payloads.count("[DONE]") == 1, f"{what}: [DONE] appears {payloads.count('[DONE]')} times")
    chunks = []
    for p in payloads[:-1]:
        try:
            chunks.append(json.loads(p))
        except ValueError:
            raise Fail(f"{what}: a data line that is not JSON: {p[:300]!r}")
    check(chunks, f"{what}: no chunk before [DONE]")
    return chunks


# ---- shapes ----------------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_usage(u, what):
    check(isinstance(u, dict), f"{what}: usage is not an object: {u!r}")
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        check(_is_int(u.get(k)) and u[k] >= 0, f"{what}: usage.{k} is not a non-negative integer: {u}")
    check(u["prompt_tokens"] > 0, f"{what}: usage.prompt_tokens is 0: {u}")
    check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
          f"{what}: usage.total_tokens != prompt_tokens + completion_tokens: {u}")


def _check_envelope(j, obj, model, what):
    check(isinstance(j, dict), f"{what}: answer is not an object: {j!r}")
    check(isinstance(j.get("id"), str) and j["id"], f"{what}: no id: {j}")
    check(j.get("object") == obj, f"{what}: object is {j.get('object')!r}, want {obj!r}")
    check(_is_int(j.get("created")) and abs(j["created"] - time.time()) < 600,
          f"{what}: created {j.get('created')!r} is not the Unix time of now")
    check(j.get("model") == model, f"{what}: model is {j.get('model')!r}, want the requested {model!r}")
    check(isinstance(j.get("choices"), list), f"{what}: choices is not a list: {j}")


def check_chat(j, model, n=1, what="chat"):
    _check_envelope(j, "chat.completion", model, what)
    check([c.get("index") for c in j["choices"]] == list(range(n)),
          f"{what}: choice indices {[c.get('index') for c in j['choices']]}, want 0..{n - 1}")
    for c in j["choices"]:
        m = c.get("message")
        check(isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str),
              f"{what}: choice message is not {{role: assistant, content: str}}: {c}")
        check(c.get("finish_reason") in FINISH, f"{what}: finish_reason {c.get('finish_reason')!r}")
        check("logprobs" in c, f"{what}: a choice without the logprobs key (null when not asked): {c}")
    check_usage(j.get("usage"), what)
    return j


def check_completion(j, model, n=1, what="completion"):
    _check_envelope(j, "text_completion", model, what)
    check([c.get("index") for c in j["choices"]] == list(range(n)),
          f"{what}: choice indices {[c.get('index') for c in j['choices']]}, want 0..{n - 1}")
    for c in j["choices"]:
        check(isinstance(c.get("text"), str), f"{what}: choice text is not a string: {c}")
        check(c.get("finish_reason") in FINISH, f"{what}: finish_reason {c.get('finish_reason')!r}")
        check("logprobs" in c, f"{what}: a choice without the logprobs key (null when not asked): {c}")
    check_usage(j.get("usage"), what)
    return j


def _check_stream_envelope(chunks, obj, model, include_usage, what):
    ids = {c.get("id") for c in chunks}
    check(len(ids) == 1 and isinstance(next(iter(ids)), str) and next(iter(ids)),
          f"{what}: chunks carry {len(ids)} different ids: {sorted(map(str, ids))[:5]}")
    created = {c.get("created") for c in chunks}
    check(len(created) == 1 and _is_int(next(iter(created))), f"{what}: chunks carry created {created}")
    for c in chunks:
        check(c.get("object") == obj, f"{what}: chunk object {c.get('object')!r}, want {obj!r}: {c}")
        check(c.get("model") == model, f"{what}: chunk model {c.get('model')!r}, want {model!r}")
        check(isinstance(c.get("choices"), list), f"{what}: chunk choices is not a list: {c}")
    usage = None
    with_usage = [i for i, c in enumerate(chunks) if c.get("usage") is not None]
    if include_usage:
        check(with_usage == [len(chunks) - 1],
              f"{what}: with include_usage, exactly the last chunk carries usage; got chunks {with_usage} of {len(chunks)}")
        last = chunks[-1]
        check(last["choices"] == [], f"{what}: the usage chunk has choices {last['choices']}, want []")
        check_usage(last["usage"], what + " (usage chunk)")
        usage = last["usage"]
        body = chunks[:-1]
        # OpenAI: "All other chunks will also include a usage field, but with a null value."
    else:
        check(not with_usage, f"{what}: a chunk carries usage without stream_options.include_usage: "
              f"{chunks[with_usage[0]] if with_usage else ''}")
        body = chunks
    for c in body:
        check(c["choices"], f"{what}: a chunk with no choices that is not the usage chunk: {c}")
    return body, usage


def check_chat_stream(chunks, model, n=1, include_usage=False, what="chat stream"):
    """OpenAI's chat.completion.chunk sequence: per choice, a first delta {role: assistant,
    content: ""}, then {content} deltas, and a last delta {} with the finish_reason. Returns
    (texts by index, finish_reasons by index, usage or None, the id)."""
    body, usage = _check_stream_envelope(chunks, "chat.completion.chunk", model, include_usage, what)
    check(chunks[0]["choices"] and chunks[0]["choices"][0].get("delta", {}).get("role") == "assistant",
          f"{what}: the first chunk is not a role chunk: {chunks[0]}")
    per = {}
    for c in body:
        for ch in c["choices"]:
            check(_is_int(ch.get("index")) and isinstance(ch.get("delta"), dict) and "finish_reason" in ch,
                  f"{what}: chunk choice without index/delta/finish_reason: {ch}")
            per.setdefault(ch["index"], []).append(ch)
    check(sorted(per) == list(range(n)), f"{what}: streamed choice indices {sorted(per)}, want 0..{n - 1}")
    texts, finishes = [], []
    for i in range(n):
        seq = per[i]
        first = seq[0]["delta"]
        check(first.get("role") == "assistant" and first.get("content") == ""
              and all(v is None for k, v in first.items() if k not in ("role", "content")),
              f"{what}: choice {i}'s first delta is not {{role: assistant, content: ''}}: {first}")
        check(len(seq) >= 2, f"{what}: choice {i} has only one chunk: {seq}")
        last = seq[-1]
        check(last["finish_reason"] in FINISH, f"{what}: choice {i}'s last chunk has finish_reason {last['finish_reason']!r}")
        check(last["delta"] == {}, f"{what}: choice {i}'s last chunk's delta is {last['delta']}, want {{}}")
        parts = []
        for k, ch in enumerate(seq[:-1]):
            check(ch["finish_reason"] is None,
                  f"{what}: choice {i}: chunk {k} of {len(seq)} has finish_reason {ch['finish_reason']!r} before the last")
            if k:
                d = ch["delta"]
                check(isinstance(d.get("content"), str) and "role" not in d,
                      f"{what}: choice {i}: a content delta that is not {{content: str}}: {d}")
                parts.append(d["content"])
        texts.append("".join(parts))
        finishes.append(last["finish_reason"])
    return texts, finishes, usage, chunks[0]["id"]


def check_completion_stream(chunks, model, n=1, include_usage=False, what="completion stream"):
    """OpenAI's text_completion stream: chunks of choices [{text, index, logprobs, finish_reason}],
    the finish_reason only on the last chunk of each choice. Returns (texts, finishes, usage, id)."""
    body, usage = _check_stream_envelope(chunks, "text_completion", model, include_usage, what)
    per = {}
    for c in body:
        for ch in c["choices"]:
            check(_is_int(ch.get("index")) and isinstance(ch.get("text"), str) and "finish_reason" in ch,
                  f"{what}: chunk choice without index/text/finish_reason: {ch}")
            per.setdefault(ch["index"], []).append(ch)
    check(sorted(per) == list(range(n)), f"{what}: streamed choice indices {sorted(per)}, want 0..{n - 1}")
    texts, finishes = [], []
    for i in range(n):
        seq = per[i]
        check(seq[-1]["finish_reason"] in FINISH,
              f"{what}: choice {i}'s last chunk has finish_reason {seq[-1]['finish_reason']!r}")
        for k, ch in enumerate(seq[:-1]):
            check(ch["finish_reason"] is None,
                  f"{what}: choice {i}: chunk {k} of {len(seq)} has finish_reason {ch['finish_reason']!r} before the last")
        texts.append("".join(ch["text"] for ch in seq))
        finishes.append(seq[-1]["finish_reason"])
    return texts, finishes, usage, chunks[0]["id"]


# ---- the demo's byte-level tokenizer ----------------------------------------------------------

def chatml_prompt_tokens(messages):
    """Tokens of messages under ChatML (`<|im_start|>ROLE\\nCONTENT<|im_end|>\\n` per message, then the
    generation prompt `<|im_start|>assistant\\n`) with scripts/make-demo-model's tokenizer: one token
    per UTF-8 byte, the ChatML markers one token each, no BOS (add_bos_token false)."""
    n = 0
    for m in messages:
        n += 1 + len((m["role"] + "\n" + m["content"]).encode()) + 1 + 1
    return n + 1 + len(b"assistant\n")
