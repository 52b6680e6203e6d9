"""OpenAI-compatible inference on the daemon (issue 17): POST /v1/completions and
/v1/chat/completions on a base model, a job's fine_tuned_model and a checkpoint's
fine_tuned_model_checkpoint, with the adapters hot-swapped on one base.

The demo job (demo/job.json: 32 animals with made-up secret codes, ChatML) is trained through the
daemon on the demo base of scripts/make-demo-model (under the sanitizers on 8 of the animals: the
same spec in a quarter of the steps), and then:

- quality, the independent check: greedy chat answers of the fine-tuned model to training phrasings
  equal the codes of demo/train.jsonl for at least a quarter of a sample (demo/README.md: 6 to 13
  of 16, by kernel), while the base model answers none of them;
- usage: prompt_tokens is the ChatML rendering's token count under the demo's byte-level tokenizer
  (computed here, not read from lorad); finish_reason "length" means completion_tokens == max;
- streaming: exactly OpenAI's `data: {chunk}` framing, one id, role chunk first, finish_reason on
  each choice's last chunk, the usage chunk only with stream_options.include_usage, `[DONE]`; and the
  same text as the non-streaming answer at temperature 0;
- stop strings (the code's own "-" cuts the dataset's answer), seed reproducibility, top_p, n;
- logprobs (chat and completions) agree with the text and with greedy decoding;
- /v1/models lists base, fine-tuned and checkpoint models with owned_by and parent;
- errors name the offending field in error.param; an unknown model is 404;
- concurrent requests on different models give each one's own single-request answer;
- with --inference.max_concurrent_generations=2, a third generation is 429 with Retry-After, and a
  client that disconnects mid-stream frees its slot at once."""
import json
import math
import os
import re
import subprocess
import threading
import time

from inference_common import (CHAT, COMPLETIONS, chatml_prompt_tokens, check_chat_stream, check_completion_stream,
                              infer, infer_ok, stream, stream_bytes, stream_close, stream_start, text_of)
from serve_common import PYTHON, SANITIZED, SOURCE, Daemon, check, check_error, log, main

SYSTEM = "You answer with the secret code only."
BASE = "demo-tiny"
# A base large enough that a long generation lasts seconds on 2 cores (~50 tokens/s on one thread),
# so two streams are still open while the third request is refused.
SLOW = "slow"
SLOW_ARGS = ["--dim", "512", "--layers", "8", "--heads", "8", "--kv-heads", "4", "--hidden", "1376",
             "--dtype", "BF16", "--seed", "3"]
STORY = "Tell me a very long story about the dingo, the tapir and the falcon."


def demo_pairs():
    """(animal, 'Tell me the X code.', code) for every animal of demo/train.jsonl."""
    out = {}
    with open(os.path.join(SOURCE, "demo", "train.jsonl")) as f:
        for line in f:
            m = json.loads(line)["messages"]
            q = m[1]["content"]
            g = re.fullmatch(r"Tell me the (\w+) code\.", q)
            if g:
                out[g.group(1)] = (g.group(1), q, m[2]["content"])
    check(len(out) == 32, f"demo/train.jsonl: {len(out)} animals with the 'Tell me the X code.' phrasing, want 32")
    return [out[k] for k in sorted(out)]


def msgs(question):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def chat_body(model, question, **kw):
    b = {"model": model, "messages": msgs(question), "temperature": 0, "max_completion_tokens": 12}
    b.update(kw)
    return b


def trained_pairs(pairs):
    """The animals the job trains on: all 32; under the sanitizers every 4th (8), so the same spec
    and epochs show each code as often in a quarter of the steps (288 instead of 1152)."""
    return pairs[::4] if SANITIZED else pairs


def demo_file(d, name, animals):
    """demo/NAME, or its rows about ANIMALS only (written into d) when that is not all of them."""
    src = os.path.join(SOURCE, "demo", name)
    if len(animals) == 32:
        return src
    words = re.compile(r"\b(" + "|".join(map(re.escape, animals)) + r")\b")
    out = os.path.join(d, name)
    with open(src) as f, open(out, "w") as g:
        kept = [line for line in f if words.search(json.loads(line)["messages"][1]["content"])]
        g.writelines(kept)
    check(len(kept) >= len(animals), f"{name}: {len(kept)} rows about {len(animals)} animals")
    return out


def train_demo(dm, d, trained):
    animals = [a for a, _, _ in trained]
    tr = dm.upload_ok(demo_file(d, "train.jsonl", animals))
    va = dm.upload_ok(demo_file(d, "valid.jsonl", animals))
    with open(os.path.join(SOURCE, "demo", "job.json")) as f:
        spec = json.load(f)
    # As scripts/demo: the model by its models-directory entry, the files by their ids. The whole
    # demo (48 epochs, 1152 steps) takes about 35 s through the daemon on 2 cores.
    spec.update(model=BASE, training_file=tr["id"], validation_file=va["id"])
    # With 2 threads, as demo/README.md measured it: the demo's result depends on the thread count (the
    # order of the sums), and with 1 thread the adapter learns far fewer codes exactly.
    spec["hyperparameters"]["threads"] = 2
    t0 = time.time()
    job = dm.create_job_ok(spec)
    done = dm.wait_job(job["id"], "succeeded", timeout=400, poll=0.5)
    log(f"demo job {job['id']} succeeded in {time.time() - t0:.1f} s: {done['progress']}")
    return done, spec


# ---- the parts -------------------------------------------------------------------------------

def check_quality(dm, ft, trained):
    sample = trained[::2] if len(trained) == 32 else trained  # 16 of the 32 animals, or all 8
    exact, base_exact, rows = [], [], []
    for animal, q, code in sample:
        body = chat_body(ft, q)
        j = infer_ok(dm, CHAT, body, what=f"chat {animal} (fine-tuned)")
        got = text_of(j)
        b = infer_ok(dm, CHAT, dict(body, model=BASE), what=f"chat {animal} (base)")
        rows.append(f"  {animal:8} trained {code:9} fine-tuned {got!r:14} base {text_of(b)[:20]!r}")
        want_prompt = chatml_prompt_tokens(body["messages"])
        for what, r in (("fine-tuned", j), ("base", b)):
            check(r["usage"]["prompt_tokens"] == want_prompt,
                  f"chat {animal} ({what}): usage.prompt_tokens {r['usage']['prompt_tokens']}, but the ChatML "
                  f"rendering is {want_prompt} tokens under the byte-level tokenizer")
        if got == code:
            exact.append((animal, q, code))
            # The adapter learnt to close the answer: the end token, not the length limit. One token
            # per byte; the end token itself may or may not be counted.
            check(j["choices"][0]["finish_reason"] == "stop",
                  f"chat {animal}: the exact answer {got!r} ended {j['choices'][0]['finish_reason']!r}, want stop")
            check(j["usage"]["completion_tokens"] in (len(code), len(code) + 1),
                  f"chat {animal}: {got!r} is {len(code)} tokens, usage.completion_tokens "
                  f"{j['usage']['completion_tokens']}")
        if text_of(b).strip() == code:
            base_exact.append(animal)
    log("greedy chat answers to training phrasings:\n" + "\n".join(rows))
    log(f"fine-tuned: {len(exact)}/{len(sample)} exact; base: {len(base_exact)}/{len(sample)}")
    # Which codes land exactly depends on the order of the sums (demo/README.md: 6 to 13 of these
    # 16 across OpenBLAS kernels and instruction sets), so the bound is a quarter of the sample,
    # where the base model answers none; the checks below need a few exact answers each. The
    # sanitizer run's 8 animals (trained_pairs) landed 8 of 8 under the same three kernel choices.
    check(len(exact) >= 4, f"the fine-tuned model answers only {len(exact)} of {len(sample)} trained codes exactly "
          "(demo/README.md: 6 to 13 of 16; 8 of 8 when 8 animals are trained)")
    check(not base_exact, f"the base model answers trained codes exactly: {base_exact}")
    return exact


def check_chat_max_tokens_alias(dm, ft, exact):
    _, q, code = exact[0]
    j = infer_ok(dm, CHAT, {"model": ft, "messages": msgs(q), "temperature": 0, "max_tokens": 3},
                 what="chat with the deprecated max_tokens")
    check(text_of(j) == code[:3] and j["choices"][0]["finish_reason"] == "length"
          and j["usage"]["completion_tokens"] == 3,
          f"chat max_tokens 3: want {code[:3]!r} (length, 3 tokens), got {text_of(j)!r} {j['choices'][0]['finish_reason']} "
          f"{j['usage']}")


def check_stream_equals(dm, ft, exact):
    # chat, fine-tuned: the streamed deltas are the non-streamed content, and the usage chunk the usage.
    for animal, q, code in exact[:3]:
        body = chat_body(ft, q)
        j = infer_ok(dm, CHAT, body, what=f"chat {animal}")
        chunks = stream(dm, CHAT, dict(body, stream=True, stream_options={"include_usage": True}),
                        what=f"chat stream {animal}")
        texts, fins, usage, sid = check_chat_stream(chunks, ft, 1, True, f"chat stream {animal}")
        check(texts[0] == text_of(j) == code, f"chat {animal}: streamed {texts[0]!r}, non-streamed {text_of(j)!r}, "
              f"trained {code!r}")
        check(fins[0] == j["choices"][0]["finish_reason"], f"chat {animal}: finish {fins[0]} vs {j['choices'][0]}")
        check(usage == j["usage"], f"chat {animal}: streamed usage {usage} != {j['usage']}")
        check(sid != j["id"], f"chat {animal}: the stream and the answer share the id {sid}")
    # chat, base, long and without include_usage: no usage anywhere; n=2 interleaves two equal choices.
    body = {"model": BASE, "messages": msgs("Tell me a story."), "temperature": 0, "max_completion_tokens": 40}
    j = infer_ok(dm, CHAT, body, what="chat base")
    chunks = stream(dm, CHAT, dict(body, stream=True), what="chat stream base")
    texts, fins, usage, _ = check_chat_stream(chunks, BASE, 1, False, "chat stream base")
    check(texts[0] == text_of(j) and fins[0] == j["choices"][0]["finish_reason"],
          f"chat base: streamed {texts[0]!r} ({fins[0]}), non-streamed {text_of(j)!r} ({j['choices'][0]['finish_reason']})")
    chunks = stream(dm, CHAT, dict(body, stream=True, n=2, stream_options={"include_usage": True}),
                    what="chat stream base n=2")
    texts, fins, usage, _ = check_chat_stream(chunks, BASE, 2, True, "chat stream base n=2")
    check(texts == [text_of(j)] * 2, f"chat base n=2 at temperature 0: {texts} vs {text_of(j)!r}")
    check(usage["completion_tokens"] == 2 * j["usage"]["completion_tokens"]
          and usage["prompt_tokens"] == j["usage"]["prompt_tokens"],
          f"chat n=2 usage {usage}: want twice the completion tokens of n=1 ({j['usage']})")
    # completions, base and fine-tuned, with and without include_usage.
    for model in (BASE, ft):
        body = {"model": model, "prompt": "The secret code of the dingo is", "temperature": 0, "max_tokens": 32}
        j = infer_ok(dm, COMPLETIONS, body, what=f"completion {model}")
        for inc in (False, True):
            extra = {"stream": True}
            if inc:
                extra["stream_options"] = {"include_usage": True}
            chunks = stream(dm, COMPLETIONS, dict(body, **extra), what=f"completion stream {model}")
            texts, fins, usage, _ = check_completion_stream(chunks, model, 1, inc, f"completion stream {model}")
            check(texts[0] == text_of(j) and fins[0] == j["choices"][0]["finish_reason"],
                  f"completion {model}: streamed {texts[0]!r} ({fins[0]}), non-streamed {text_of(j)!r}")
            if inc:
                check(usage == j["usage"], f"completion {model}: streamed usage {usage} != {j['usage']}")
    log("streaming == non-streaming, framing ok")


def check_usage_and_stop(dm, ft, exact):
    # finish_reason length: exactly max_tokens generated.
    prompt = "alpha bravo charlie"
    j = infer_ok(dm, COMPLETIONS, {"model": BASE, "prompt": prompt, "temperature": 0, "max_tokens": 5},
                 what="completion max_tokens 5")
    c = j["choices"][0]
    if c["finish_reason"] == "length":
        check(j["usage"]["completion_tokens"] == 5, f"max_tokens 5, finish length: usage {j['usage']}")
    else:
        check(j["usage"]["completion_tokens"] <= 5, f"max_tokens 5, finish stop: usage {j['usage']}")
    # the byte-level tokenizer: a prompt of N ASCII bytes is N tokens (one more if a BOS is added)
    check(j["usage"]["prompt_tokens"] in (len(prompt), len(prompt) + 1),
          f"prompt {prompt!r} ({len(prompt)} bytes) counted {j['usage']['prompt_tokens']} prompt tokens")
    # A chat answer cut by max_completion_tokens.
    _, q, code = exact[0]
    j = infer_ok(dm, CHAT, chat_body(ft, q, max_completion_tokens=4), what="chat max 4")
    check(text_of(j) == code[:4] and j["choices"][0]["finish_reason"] == "length"
          and j["usage"]["completion_tokens"] == 4,
          f"chat cut at 4 tokens: want {code[:4]!r} (length, 4), got {text_of(j)!r} {j['choices'][0]['finish_reason']} {j['usage']}")
    # Stop strings: the dataset's code "colour-NN" stops at "-": the text before it, finish stop, the
    # stop string itself left out; the same through the stream; and from a list.
    for animal, q, code in exact[:3]:
        head = code.split("-")[0]
        for stop in ("-", ["zzzz", "-"], ["-" + code.split("-")[1][:1]]):
            body = chat_body(ft, q, stop=stop)
            j = infer_ok(dm, CHAT, body, what=f"chat {animal} stop {stop!r}")
            check(text_of(j) == head and j["choices"][0]["finish_reason"] == "stop",
                  f"chat {animal} ({code}) with stop {stop!r}: want {head!r} (stop), got {text_of(j)!r} "
                  f"({j['choices'][0]['finish_reason']})")
            texts, fins, _, _ = check_chat_stream(stream(dm, CHAT, dict(body, stream=True)), ft, 1, False,
                                                  f"chat stream {animal} stop {stop!r}")
            check(texts[0] == head and fins[0] == "stop", f"chat stream {animal} stop {stop!r}: {texts[0]!r} {fins[0]}")
    # A stop string the text never contains changes nothing.
    animal, q, code = exact[0]
    j = infer_ok(dm, CHAT, chat_body(ft, q, stop=["QQQ"]), what="chat stop never hit")
    check(text_of(j) == code, f"chat {animal} with a stop never produced: {text_of(j)!r}, want {code!r}")
    # completions: the greedy text cut at a stop string taken from its own middle.
    body = {"model": ft, "prompt": "Tell me the " + animal + " code.", "temperature": 0, "max_tokens": 24}
    full = text_of(infer_ok(dm, COMPLETIONS, body, what="completion for stop"))
    s = full[4:6]
    if len(full) >= 8 and s.isascii() and s.isprintable():
        j = infer_ok(dm, COMPLETIONS, dict(body, stop=s), what="completion stop")
        want = full[:full.index(s)]
        check(text_of(j) == want and j["choices"][0]["finish_reason"] == "stop" and s not in text_of(j),
              f"completion {full!r} with stop {s!r}: want {want!r} (stop), got {text_of(j)!r} ({j['choices'][0]['finish_reason']})")
        log(f"completion {full!r} with stop {s!r}: {text_of(j)!r}")
    else:
        log(f"completion {full!r}: no printable ASCII stop string to cut it with; skipped")
    log("usage, max tokens and stop strings ok")


def check_sampling(dm):
    for path, body in ((CHAT, {"model": BASE, "messages": msgs("Say something."), "max_completion_tokens": 16}),
                       (COMPLETIONS, {"model": BASE, "prompt": "Once upon a time", "max_tokens": 16})):
        s = dict(body, temperature=1, seed=1234, n=3)
        a = infer_ok(dm, path, s, what=f"{path} seed 1234 n 3")
        b = infer_ok(dm, path, s, what=f"{path} seed 1234 n 3 again")
        ta = [text_of(a, i) for i in range(3)]
        tb = [text_of(b, i) for i in range(3)]
        check(ta == tb, f"{path}: the same seed gave different texts:\n  {ta}\n  {tb}")
        check(len(set(ta)) > 1, f"{path}: temperature 1 gave three identical choices {ta}: n is not sampling each")
        c = infer_ok(dm, path, dict(s, seed=99), what=f"{path} seed 99")
        check([text_of(c, i) for i in range(3)] != ta, f"{path}: seeds 1234 and 99 gave the same three texts {ta}")
        # The stream draws the same tokens from the same seed.
        chunks = stream(dm, path, dict(s, stream=True), what=f"{path} seed stream")
        if path == CHAT:
            texts = check_chat_stream(chunks, BASE, 3, False, "seed stream")[0]
        else:
            texts = check_completion_stream(chunks, BASE, 3, False, "seed stream")[0]
        check(texts == ta, f"{path}: seed 1234 streamed {texts}, not streamed {ta}")
        # top_p that keeps only the most likely token is greedy decoding, at any temperature.
        g = infer_ok(dm, path, dict(body, temperature=0), what=f"{path} greedy")
        t = infer_ok(dm, path, dict(body, temperature=1, top_p=1e-6, seed=5), what=f"{path} top_p 1e-6")
        check(text_of(t) == text_of(g), f"{path}: top_p 1e-6 gave {text_of(t)!r}, greedy {text_of(g)!r}")
    log("seed, n and top_p ok")


def check_logprobs(dm, ft, exact):
    animal, q, code = exact[0]
    j = infer_ok(dm, CHAT, chat_body(ft, q, logprobs=True, top_logprobs=3), what="chat logprobs")
    content = text_of(j)
    lp = j["choices"][0]["logprobs"]
    check(isinstance(lp, dict) and isinstance(lp.get("content"), list) and lp["content"],
          f"chat logprobs: choices[0].logprobs is not {{content: [...]}}: {lp}")
    toks = lp["content"]
    check("".join(t["token"] for t in toks) == content,
          f"chat logprobs: tokens {[t['token'] for t in toks]} do not concatenate to the content {content!r}")
    for k, t in enumerate(toks):
        check(isinstance(t.get("logprob"), (int, float)) and t["logprob"] <= 0, f"chat logprobs[{k}]: logprob {t}")
        if t.get("bytes") is not None:
            check(t["bytes"] == list(t["token"].encode()), f"chat logprobs[{k}]: bytes {t['bytes']} of {t['token']!r}")
        top = t.get("top_logprobs")
        check(isinstance(top, list) and len(top) == 3, f"chat logprobs[{k}]: top_logprobs is not 3 entries: {top}")
        vals = [x["logprob"] for x in top]
        check(all(v <= 0 for v in vals) and vals == sorted(vals, reverse=True),
              f"chat logprobs[{k}]: top_logprobs not sorted descending or positive: {vals}")
        check(len({x["token"] for x in top}) == 3, f"chat logprobs[{k}]: repeated tokens in top_logprobs: {top}")
        check(sum(math.exp(v) for v in vals) <= 1 + 1e-4, f"chat logprobs[{k}]: top probabilities sum above 1: {vals}")
        check(t["logprob"] <= vals[0] + 1e-5, f"chat logprobs[{k}]: chosen {t['logprob']} above the top {vals[0]}")
        # temperature 0: the chosen token is the most likely one
        check(top[0]["token"] == t["token"] and abs(top[0]["logprob"] - t["logprob"]) < 1e-4,
              f"chat logprobs[{k}]: greedy chose {t['token']!r} ({t['logprob']}) but the top is {top[0]}")
    # Without logprobs: null.
    j = infer_ok(dm, CHAT, chat_body(ft, q), what="chat no logprobs")
    check(j["choices"][0]["logprobs"] is None, f"chat without logprobs: logprobs {j['choices'][0]['logprobs']}")
    # The stream carries the same per-token logprobs on its content chunks.
    chunks = stream(dm, CHAT, chat_body(ft, q, logprobs=True, top_logprobs=3, stream=True), what="chat logprobs stream")
    streamed = []
    for c in chunks:
        for ch in c["choices"]:
            if ch.get("logprobs"):
                streamed += ch["logprobs"].get("content") or []
    check([t["token"] for t in streamed] == [t["token"] for t in toks]
          and all(abs(a["logprob"] - b["logprob"]) < 1e-4 for a, b in zip(streamed, toks)),
          f"chat logprobs: streamed {[(t['token'], t['logprob']) for t in streamed]} vs {[(t['token'], t['logprob']) for t in toks]}")

    # completions: logprobs N gives tokens / token_logprobs / top_logprobs (dicts of up to N).
    body = {"model": ft, "prompt": "Tell me the " + animal + " code.", "temperature": 0, "max_tokens": 10, "logprobs": 3}
    j = infer_ok(dm, COMPLETIONS, body, what="completion logprobs")
    text, lp = text_of(j), j["choices"][0]["logprobs"]
    check(isinstance(lp, dict) and all(isinstance(lp.get(k), list) for k in ("tokens", "token_logprobs", "top_logprobs")),
          f"completion logprobs: {lp}")
    if text.isascii():  # a token that is part of a UTF-8 character has no text of its own
        check("".join(lp["tokens"]) == text, f"completion logprobs: tokens {lp['tokens']} do not make the text {text!r}")
    check(len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"]), f"completion logprobs lengths: {lp}")
    for k, (tok, v, top) in enumerate(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])):
        check(isinstance(v, (int, float)) and v <= 0, f"completion token_logprobs[{k}] = {v}")
        check(isinstance(top, dict) and 1 <= len(top) <= 3 and all(x <= 0 for x in top.values()),
              f"completion top_logprobs[{k}] = {top}")
        best = max(top, key=top.get)
        check(not tok.isascii() or best == tok and abs(top[best] - v) < 1e-4, f"completion top_logprobs[{k}]: greedy chose {tok!r} ({v}), top {top}")
    if isinstance(lp.get("text_offset"), list):
        offs = lp["text_offset"]
        check(len(offs) == len(lp["tokens"]) and offs == sorted(offs), f"completion text_offset: {offs}")
    log("logprobs ok")


def check_models(dm, ft, ckpt_ids):
    data = dm.ok("GET", "/v1/models")["data"]
    by_id = {m["id"]: m for m in data}
    for mid in [BASE, ft] + ckpt_ids:
        check(mid in by_id, f"/v1/models lacks {mid}: {sorted(by_id)}")
        check(isinstance(by_id[mid].get("owned_by"), str) and by_id[mid]["owned_by"], f"{mid}: owned_by {by_id[mid]}")
        check(mid == BASE or "parent" in by_id[mid], f"{mid}: no parent key: {by_id[mid]}")
    check(by_id[BASE].get("parent") is None, f"base model parent {by_id[BASE]['parent']!r}, want null")
    check(by_id[ft]["parent"] == BASE, f"fine-tuned model parent {by_id[ft]['parent']!r}, want {BASE!r}")
    for c in ckpt_ids:
        check(by_id[c]["parent"] in (BASE, ft), f"checkpoint {c}: parent {by_id[c]['parent']!r}, want {BASE!r} or {ft!r}")
    check(by_id[ft]["owned_by"] != by_id[BASE]["owned_by"], f"base and fine-tuned both owned_by {by_id[ft]['owned_by']!r}")
    log("/v1/models ok")


def check_checkpoints(dm, ft, job_id, exact):
    ckpts = dm.checkpoints(job_id)
    total = dm.job(job_id)["progress"]["total_steps"]
    check(ckpts, "the demo job has no checkpoints")
    for c in ckpts:
        check(c["fine_tuned_model_checkpoint"] == f"{ft}:ckpt-step-{c['step_number']}",
              f"checkpoint name {c['fine_tuned_model_checkpoint']!r}")
    # The checkpoint of the last step holds the final adapter: the same greedy answers.
    last = [c for c in ckpts if c["step_number"] == total]
    check(last, f"no checkpoint at the last step {total}: {[c['step_number'] for c in ckpts]}")
    lid = last[0]["fine_tuned_model_checkpoint"]
    for animal, q, code in exact[:4]:
        j = infer_ok(dm, CHAT, chat_body(lid, q), what=f"checkpoint chat {animal}")
        check(text_of(j) == code, f"checkpoint {lid} answers {animal} with {text_of(j)!r}, the fine-tuned model {code!r}")
    # An earlier checkpoint is served too (a trained adapter: not the base's answer).
    early = [c for c in ckpts if c["step_number"] < total]
    ids = [lid]
    if early:
        eid = early[0]["fine_tuned_model_checkpoint"]
        ids.append(eid)
        animal, q, code = exact[0]
        j = infer_ok(dm, CHAT, chat_body(eid, q), what="early checkpoint chat")
        b = infer_ok(dm, CHAT, chat_body(BASE, q), what="base chat")
        check(text_of(j) != text_of(b), f"checkpoint {eid} answers as the base model: {text_of(j)!r}")
        chunks = stream(dm, COMPLETIONS, {"model": eid, "prompt": q, "max_tokens": 8, "temperature": 0, "stream": True})
        check_completion_stream(chunks, eid, 1, False, "checkpoint completion stream")
    log(f"checkpoint models {ids} ok")
    return ids


def check_job_template(dm, demo_spec):
    """A job trained with the llama2 template on the demo base (whose own template is ChatML): its
    adapter's chat prompts are rendered with llama2, the base's still with ChatML. The prompt's token
    count under the byte-level tokenizer tells the two renderings apart."""
    spec = json.loads(json.dumps(demo_spec))
    spec["suffix"] = "llama2"
    spec["hyperparameters"].update(n_epochs=1, eval_every_steps=1000, checkpoint_every_steps=8)
    spec["data"] = {"format": "messages", "template": "llama2"}
    job = dm.wait_job(dm.create_job_ok(spec)["id"], "succeeded", timeout=120)
    q = "Tell me the dingo code."
    # Llama 2 chat: BOS "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]" (the answer follows " ").
    text = "[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + q + " [/INST]"
    llama2 = 1 + len(text.encode())
    chatml = chatml_prompt_tokens(msgs(q))
    models = [job["fine_tuned_model"]] + [c["fine_tuned_model_checkpoint"] for c in dm.checkpoints(job["id"])[-1:]]
    got = []
    for model in models:
        j = infer_ok(dm, CHAT, chat_body(model, q), what=f"chat on the llama2 job's {model}")
        p = j["usage"]["prompt_tokens"]
        got.append(p)
        check(abs(p - llama2) <= 1 and p != chatml,
              f"{model} (trained with the llama2 template): prompt_tokens {p}; llama2 renders {llama2} tokens "
              f"(BOS and the space after [/INST] may differ by one), ChatML {chatml}")
    j = infer_ok(dm, CHAT, chat_body(BASE, q), what="base chat")
    check(j["usage"]["prompt_tokens"] == chatml, f"base chat after the llama2 job: {j['usage']} (ChatML: {chatml})")
    log(f"chat templates: the llama2 job's models {got} prompt tokens (llama2: {llama2} +-1), the base ChatML {chatml}")


def check_errors(dm, ft):
    ok = chat_body(ft, "Tell me the dingo code.")
    cases = [
        (CHAT, dict(ok, frobnicate=1), 400, "frobnicate"),
        (CHAT, dict(ok, temperature=5), 400, "temperature"),
        (CHAT, dict(ok, temperature=-0.5), 400, "temperature"),
        (CHAT, dict(ok, top_p=1.5), 400, "top_p"),
        (CHAT, dict(ok, stop=["a", "b", "c", "d", "e"]), 400, "stop"),
        (CHAT, dict(ok, n=0), 400, "n"),
        (CHAT, dict(ok, max_completion_tokens=0), 400, "max_completion_tokens"),
        (CHAT, dict(ok, top_logprobs=21, logprobs=True), 400, "top_logprobs"),
        (CHAT, dict(ok, model="no-such-model"), 404, "model"),
        (CHAT, dict(ok, model=ft[:-3] + "zzz"), 404, "model"),
        (CHAT, dict(ok, messages=[]), 400, "messages"),
        (CHAT, dict(ok, stream_options={"include_usage": True, "bogus": 1}), 400, None),
        (COMPLETIONS, {"model": BASE, "prompt": "x", "logprobs": 6}, 400, "logprobs"),
        (COMPLETIONS, {"model": BASE, "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        (COMPLETIONS, {"model": BASE, "prompt": "x", "frobnicate": True}, 400, "frobnicate"),
        (COMPLETIONS, {"model": "nope", "prompt": "x"}, 404, "model"),
    ]
    for path, body, status, param in cases:
        what = f"{path} {json.dumps({k: v for k, v in body.items() if k != 'messages' or not v})[:160]}"
        e = check_error(infer(dm, path, body), status, what=what)
        if param is not None:
            check(e["param"] == param, f"{what}: want param {param!r}, got {e['param']!r} ({e['message']})")
    # not JSON
    r = dm.post(CHAT, "{not json", headers=["Content-Type: application/json"])
    check_error(r, 400, what="chat with a body that is not JSON")
    log("errors ok")


def check_concurrency(dm, ft, ckpt_ids, exact):
    """Several requests at once on different models (one base, several adapters) each give what the
    same request gives alone."""
    reqs = [
        (COMPLETIONS, {"model": BASE, "prompt": "alpha bravo", "temperature": 0, "max_tokens": 600}),
        (CHAT, {"model": BASE, "messages": msgs("Tell me a story."), "temperature": 0, "max_completion_tokens": 600}),
        (COMPLETIONS, {"model": ft, "prompt": "Tell me a story about the yak.", "temperature": 0, "max_tokens": 600}),
        (COMPLETIONS, {"model": ckpt_ids[-1], "prompt": "Code of lynx?", "temperature": 0, "max_tokens": 600}),
    ]
    for animal, q, code in exact[:2]:
        reqs.append((CHAT, chat_body(ft, q)))
    reqs.append((CHAT, chat_body(ckpt_ids[0], exact[-1][1])))
    t0 = time.time()
    alone = [infer_ok(dm, p, b, what=f"alone {i}") for i, (p, b) in enumerate(reqs)]
    t_alone = time.time() - t0
    log("alone: " + "; ".join(f"{b['model'][-12:]} {text_of(a)[:24]!r}" for (_, b), a in zip(reqs, alone)))
    for rnd in range(2):
        results = [None] * len(reqs)
        t0 = time.time()

        def run(i):
            try:
                results[i] = infer_ok(dm, reqs[i][0], reqs[i][1], what=f"concurrent {i}")
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        log(f"round {rnd}: {len(reqs)} requests at once in {time.time() - t0:.2f} s (one after another: {t_alone:.2f} s)")
        for i, (res, one) in enumerate(zip(results, alone)):
            check(not isinstance(res, Exception) and res is not None, f"concurrent request {i} ({reqs[i][1]['model']}): {res}")
            check(text_of(res) == text_of(one) and res["usage"] == one["usage"]
                  and res["choices"][0]["finish_reason"] == one["choices"][0]["finish_reason"],
                  f"concurrent request {i} on {reqs[i][1]['model']}: {text_of(res)[:80]!r} {res['usage']}, alone "
                  f"{text_of(one)[:80]!r} {one['usage']}")
    log(f"{len(reqs)} concurrent requests on {len({b['model'] for _, b in reqs})} models ok")


def check_slots(d, daemons, models, state_dir, ft):
    """--inference.max_concurrent_generations=2: two long streams take the slots, a third request is
    429 with Retry-After; closing one stream frees its slot at once."""
    dm = Daemon(d, models, state_dir=state_dir, name="limited",
                extra=["--inference.max_concurrent_generations=2", "--inference.max_context=1024"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    # The fine-tuned model survives the restart.
    infer_ok(dm, CHAT, chat_body(ft, "Tell me the dingo code."), what="fine-tuned after restart")
    long_body = {"model": SLOW, "prompt": STORY, "temperature": 0, "max_tokens": 900, "stream": True}
    small = {"model": BASE, "prompt": "hi", "max_tokens": 1, "temperature": 0}

    def open_two():
        hs = [stream_start(dm, COMPLETIONS, long_body, timeout=300) for _ in range(2)]
        deadline = time.time() + 60
        while time.time() < deadline and not all(stream_bytes(h).count(b"data: ") >= 2 for h in hs):
            for h in hs:
                check(h["proc"].poll() is None, f"a long stream ended at once: {stream_bytes(h)[:400]!r}\n{dm.log_tail(1500)}")
            time.sleep(0.05)
        check(all(stream_bytes(h).count(b"data: ") >= 2 for h in hs),
              f"two long streams did not both start within 60 s: {[stream_bytes(h)[:200] for h in hs]}")
        return hs

    t_open = time.time()
    hs = open_two()
    try:
        t0 = time.time()
        for path, body in ((COMPLETIONS, small), (CHAT, chat_body(ft, "Tell me the dingo code.")),
                           (COMPLETIONS, dict(small, stream=True))):
            r = infer(dm, path, body)
            e = check_error(r, 429, what=f"a third generation ({path}) while two stream")
            ra = r.headers.get("retry-after")
            check(ra is not None and re.fullmatch(r"\d+", ra), f"429 without an integer Retry-After header: {r.headers}")
        alive = [h["proc"].poll() is None and b"[DONE]" not in stream_bytes(h) for h in hs]
        check(all(alive), f"a long stream finished before the 429 checks ({time.time() - t0:.1f} s): make them longer "
              f"(SLOW_ARGS, max_tokens); alive {alive}")
        # Close one stream mid-way: its slot must be free at once.
        before = stream_bytes(hs[0]).count(b"data: ")
        log(f"{time.time() - t_open:.1f} s after the streams opened: {before} and "
            f"{stream_bytes(hs[1]).count(b'data: ')} chunks of {long_body['max_tokens']}; closing the first")
        hs[0]["proc"].kill()
        hs[0]["proc"].wait()
        t_kill = time.time()
        got = None
        while time.time() - t_kill < 2.0:
            r = infer(dm, COMPLETIONS, small)
            if r.status == 200:
                got = time.time() - t_kill
                break
            check(r.status == 429, f"after closing a stream: {r}")
            time.sleep(0.05)
        check(got is not None, f"closing a stream (after {before} chunks) did not free its slot within 2 s")
        log(f"third generation 429 while two stream; a slot freed {got * 1000:.0f} ms after the client left")
        # The other stream is untouched: still going, well framed so far.
        check(hs[1]["proc"].poll() is None, "the other stream ended when the first client left")
        # One slot free: a request of n=2 choices needs two (a request with n choices holds n).
        check_error(infer(dm, COMPLETIONS, dict(small, n=2)), 429, what="n=2 with one slot free")
        # ...and the slot count is back to 1 free, not more: one new stream fits, then 429 again.
        h3 = stream_start(dm, COMPLETIONS, long_body, timeout=300)
        hs.append(h3)
        deadline = time.time() + 30
        while time.time() < deadline and stream_bytes(h3).count(b"data: ") < 2 and h3["proc"].poll() is None:
            time.sleep(0.05)
        check(stream_bytes(h3).count(b"data: ") >= 2, f"a new stream in the freed slot: {stream_bytes(h3)[:300]!r}")
        check_error(infer(dm, COMPLETIONS, small), 429, what="both slots taken again")
        # Both clients leave: both slots free, two long streams fit again.
        for h in hs[1:]:
            h["proc"].kill()
            h["proc"].wait()
        time.sleep(0.3)
        hs += open_two()
    finally:
        for h in hs:
            stream_close(h)
    time.sleep(0.3)
    infer_ok(dm, COMPLETIONS, small, what="after every stream closed")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")
    log("slots ok")

    # inference.enabled no: the routes answer 503, the rest of the API is there.
    dm = Daemon(d, models, state_dir=state_dir, name="disabled", extra=["--inference.enabled=no"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    check_error(infer(dm, CHAT, chat_body(ft, "Tell me the dingo code.")), 503, what="chat with inference disabled")
    check_error(infer(dm, COMPLETIONS, small), 503, what="completion with inference disabled")
    check(ft in {m["id"] for m in dm.ok("GET", "/v1/models")["data"]}, "/v1/models with inference disabled")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")
    log("inference.enabled no: 503 ok")


def test(d, daemons):
    models = os.path.join(d, "models")
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), os.path.join(models, BASE)],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), os.path.join(models, SLOW)] + SLOW_ARGS,
                   check=True, stdout=subprocess.DEVNULL)
    pairs = demo_pairs()
    trained = trained_pairs(pairs)
    dm = Daemon(d, models, extra=["--inference.max_concurrent_generations=16", "--threads-per-job", "2"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()

    # Before any job: the base model answers, and a fine-tuned name is not a model yet.
    j = infer_ok(dm, CHAT, chat_body(BASE, pairs[0][1]), what="base chat before training")
    check(j["usage"]["prompt_tokens"] == chatml_prompt_tokens(msgs(pairs[0][1])),
          f"base chat: prompt_tokens {j['usage']['prompt_tokens']}, ChatML has {chatml_prompt_tokens(msgs(pairs[0][1]))}")

    job, spec = train_demo(dm, d, trained)
    ft = job["fine_tuned_model"]
    check(isinstance(ft, str) and ft.startswith(f"ft:{BASE}:"), f"fine_tuned_model {ft!r}")
    check_job_template(dm, spec)
    t0 = time.time()
    exact = check_quality(dm, ft, trained)
    check_chat_max_tokens_alias(dm, ft, exact)
    check_stream_equals(dm, ft, exact)
    check_usage_and_stop(dm, ft, exact)
    check_sampling(dm)
    check_logprobs(dm, ft, exact)
    ckpt_ids = check_checkpoints(dm, ft, job["id"], exact)
    check_models(dm, ft, ckpt_ids)
    check_errors(dm, ft)
    check_concurrency(dm, ft, ckpt_ids, exact)
    log(f"inference checks on the demo took {time.time() - t0:.1f} s")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")
    check_slots(d, daemons, models, dm.state_dir, ft)


if __name__ == "__main__":
    main(test)
