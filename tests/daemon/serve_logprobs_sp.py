"""Logprob alternatives' texts under a SentencePiece tokenizer (issue 17), checked against Debian's
python3-sentencepiece on the real Llama 2 tokenizer.model.

The demo's byte-level tokenizer cannot show what goes wrong when a token is decoded on its own:
SentencePiece drops the leading space of a word-initial piece ("▁the" alone reads "the") and a
byte-fallback token is a fraction of a character. So a random 1-layer model gets the Llama 2
tokenizer (scripts/make-demo-model --sentencepiece), and for a greedy completion with logprobs=5:

- `lorad generate --ids --dump-logits` on the same model gives the greedy ids and every generated
  position's logits; the service's completion must be those ids' text (one decoder for both);
- reference texts: the text token v adds at step k is SentencePiece's decoding of
  BOS + prompt + generated[:k] + [v] past the decoding without v (what the token adds in context,
  computed here with the whole context);
- tokens[k] is that text of the chosen id, and top_logprobs[k] is exactly {text: log_softmax} of
  the 5 most likely ids of the dumped logits, texts from SentencePiece, log-softmax in float64
  here (to 1e-4)."""
import math
import os
import subprocess
import sys

from inference_common import COMPLETIONS, infer_ok, text_of
from serve_common import LORAD, PYTHON, SHARED, SOURCE, Daemon, check, log, main

sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
import safetensors_io  # noqa: E402

SP_MODEL = os.path.join(SHARED, "llama2-tokenizer.model")
BASE = "sp-tiny"
PROMPT = "The little cat said"
STEPS = 12
TOP = 5


def reference_texts(sp, ctx, ids):
    """The text each of ids adds after the context ctx (ids, BOS first), by SentencePiece."""
    before = sp.decode(ctx)
    out = []
    for v in ids:
        after = sp.decode(ctx + [v])
        p = 0
        while p < len(before) and p < len(after) and before[p] == after[p]:
            p += 1
        out.append(after[p:])
    return out


def test(d, daemons):
    try:
        import numpy as np
        import sentencepiece
    except ImportError as e:
        print(f"skipped: {e}")
        sys.exit(77)
    if not os.path.exists(SP_MODEL):
        print(f"skipped: {SP_MODEL} is missing")
        sys.exit(77)
    sp = sentencepiece.SentencePieceProcessor(model_file=SP_MODEL)
    models = os.path.join(d, "models")
    model = os.path.join(models, BASE)
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), model, "--sentencepiece", SP_MODEL,
                    "--dim", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--hidden", "64",
                    "--seed", "7"], check=True, stdout=subprocess.DEVNULL)

    dump = os.path.join(d, "logits.safetensors")
    p = subprocess.run([LORAD, "generate", model, "--prompt", PROMPT, "--max-tokens", str(STEPS), "--ignore-eos",
                        "--ids", "--threads", "1", "--dump-logits", dump], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, f"lorad generate: exit {p.returncode}\n{p.stderr[-2000:]}")
    gen = [int(x) for x in p.stdout.split()]
    tensors, _ = safetensors_io.read(dump)
    logits = np.asarray(tensors["logits"], dtype=np.float64).reshape(len(gen), -1)
    prompt_ids = [int(x) for x in np.asarray(tensors["prompt_ids"]).ravel()]
    check(prompt_ids == [sp.bos_id()] + sp.encode(PROMPT),
          f"prompt ids {prompt_ids}, SentencePiece says BOS + {sp.encode(PROMPT)}")
    check(len(gen) == STEPS, f"lorad generate gave {len(gen)} ids, want {STEPS}")

    dm = Daemon(d, models, extra=["--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    body = {"model": BASE, "prompt": PROMPT, "temperature": 0, "max_tokens": STEPS, "logprobs": TOP}
    j = infer_ok(dm, COMPLETIONS, body, what="completion with logprobs")
    text, lp = text_of(j), j["choices"][0]["logprobs"]
    check(text == sp.decode(prompt_ids + gen)[len(sp.decode(prompt_ids)):],
          f"completion {text!r} is not the text of lorad generate's ids {gen}: {sp.decode(gen)!r}")
    check(len(lp["tokens"]) == STEPS, f"{len(lp['tokens'])} logprob tokens, want {STEPS}")

    spaced = 0
    for k in range(STEPS):
        ctx = prompt_ids + gen[:k]
        row = logits[k]
        lse = row.max() + math.log(np.exp(row - row.max()).sum())
        top_ids = [int(i) for i in np.argsort(-row, kind="stable")[:TOP]]
        texts = reference_texts(sp, ctx, top_ids)
        want = {}
        for v, t in zip(top_ids, texts):
            want.setdefault(t, row[v] - lse)  # two ids with one text: the API keeps the likelier
        chosen = reference_texts(sp, ctx, [gen[k]])[0]
        check(lp["tokens"][k] == chosen, f"step {k}: token {lp['tokens'][k]!r}, SentencePiece's text of id "
                                         f"{gen[k]} ({sp.id_to_piece(gen[k])!r}) in context is {chosen!r}")
        check(abs(lp["token_logprobs"][k] - (row[gen[k]] - lse)) < 1e-4,
              f"step {k}: token_logprob {lp['token_logprobs'][k]}, log_softmax of the logits {row[gen[k]] - lse}")
        got = lp["top_logprobs"][k]
        check(set(got) == set(want), f"step {k}: top_logprobs texts {sorted(got)}, SentencePiece's texts of the top "
                                     f"{TOP} ids {top_ids} ({[sp.id_to_piece(i) for i in top_ids]}) are {sorted(want)}")
        for t in want:
            check(abs(got[t] - want[t]) < 1e-4, f"step {k}: top_logprobs[{t!r}] = {got[t]}, want {want[t]}")
        spaced += sum(1 for i in top_ids if sp.id_to_piece(i).startswith("\u2581"))
    # the point of the test: word-initial pieces were among the alternatives
    check(spaced > 0, "no word-initial piece among the alternatives: the leading-space case was not exercised")
    log(f"logprobs under SentencePiece: {STEPS} steps x {TOP} alternatives match ({spaced} word-initial pieces)")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
