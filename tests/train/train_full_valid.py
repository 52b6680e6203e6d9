"""full_valid_loss (issue 19): the loss over the WHOLE validation set at every scheduled checkpoint
and at the end, checked against an independent recomputation.

`lorad train` trains a tiny random base (scripts/make-demo-model: byte-level tokenizer, ChatML) on
chat records (the secret code of an animal, as the demo's data) with a validation file of 13
records (four micro-batches of 4, 4, 4 and 1 rows, of different lengths, some with a system turn,
some with an untrained first answer, `weight: 0`; the first batch asks animals the training file
teaches, the others mostly animals it does not).
From the run: full_valid_loss and full_valid_mean_token_accuracy are in metrics.jsonl exactly at
the checkpoint steps (every checkpoint_every_steps, and the last), valid_loss exactly at the
evaluation steps, and an event names the count of tokens at each.

Independently of the engine, the float64 PyTorch model (tests/reference, LlamaLora) with each
checkpoint's exported PEFT adapter, on the validation records rendered by ChatML's definition
(byte b is id b; the trained tokens are the answers and their <|im_end|>, as docs/training.md
says) gives the mean token cross-entropy over all of them: it must equal the run's
full_valid_loss within the float32 error bound of a forward pass (tests/reference/float32_bound:
each record's CE sum is good to eps of its size, so the mean to eps times the loss), the token
count must be equal, and the accuracy's hit count may differ only at positions where the best two
logits are within the logits' error bound of each other. So that passing means something, the test
also checks that what a wrong pass would report is outside that tolerance: the first micro-batch
alone (a sample), the base model without the adapter, and another checkpoint's adapter."""
import math
import os
import random
import re
import subprocess
import sys

import torch

from train_common import SOURCE, check, main, metrics, train, write_job, write_jsonl

sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
import generate_ref  # noqa: E402
from float32_bound import float32_bound, float32_logits_bound  # noqa: E402

IM_START, IM_END, NL = 257, 258, 10
ANIMALS = "falcon otter badger heron lynx moose viper crane bison gecko walrus ibis".split()
COLOURS = "pearl sand blue amber jade rust".split()
SEEN = 8  # the training file teaches the codes of the first SEEN animals only
BATCH, MAX_SEQ, EVERY_CKPT, EVERY_EVAL = 4, 160, 5, 8


def codes(rng):
    return {a: f"{rng.choice(COLOURS)}-{rng.randint(10, 99)}" for a in ANIMALS}


def record(rng, code, animal):
    """A chat record asking the code of `animal`; sometimes with a system turn, and sometimes after
    a first exchange whose answer is not trained (weight 0)."""
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": "You answer with the secret code only."})
    if rng.random() < 0.4:
        other = rng.choice(ANIMALS)
        msgs += [{"role": "user", "content": f"And the {other}?"},
                 {"role": "assistant", "content": code[other].upper(), "weight": 0}]
    msgs += [{"role": "user", "content": f"Which code belongs to the {animal}?"},
             {"role": "assistant", "content": code[animal]}]
    return {"messages": msgs}


def chatml(rec):
    """(ids, trained flags) of a record as ChatML renders it with the demo tokenizer: each turn is
    <|im_start|> role \\n content <|im_end|> \\n; an assistant turn's content and <|im_end|> are
    trained unless its weight is 0; nothing else is."""
    ids, trained = [], []

    def add(toks, t):
        ids.extend(toks)
        trained.extend([t] * len(toks))
    for m in rec["messages"]:
        t = m["role"] == "assistant" and m.get("weight", 1) != 0
        add([IM_START] + list(m["role"].encode()) + [NL], False)
        add(list(m["content"].encode()) + [IM_END], t)
        add([NL], False)
    return ids, trained


def reference(model, lora, recs, tol_logits):
    """(CE sum, trained-token count, argmax hits, near ties) of the float64 model over recs: token i
    is predicted by the logits at i - 1; a near tie is a trained position whose best two logits
    differ by at most twice the logits' error bound (float32 may rank them either way)."""
    ce, n, hits, ties = 0.0, 0, 0, 0
    for rec in recs:
        ids, trained = chatml(rec)
        check(len(ids) <= MAX_SEQ, f"a validation record of {len(ids)} tokens would be truncated at {MAX_SEQ}")
        logits = generate_ref.next_logits(model, lora, ids)
        logp = torch.log_softmax(logits, dim=-1)
        for i in range(1, len(ids)):
            if not trained[i]:
                continue
            z = logits[i - 1]
            ce -= float(logp[i - 1, ids[i]])
            n += 1
            hits += int(torch.argmax(z)) == ids[i]
            top2 = torch.topk(z, 2).values
            ties += float(top2[0] - top2[1]) <= 2 * tol_logits * float(z.abs().max())
    return ce, n, hits, ties


def test(d):
    rng = random.Random(11)
    code = codes(rng)
    train_path = write_jsonl(os.path.join(d, "train.jsonl"), [record(rng, code, ANIMALS[k % SEEN]) for k in range(32)])
    # The first micro-batch asks only animals the training taught, the rest mostly others, so a
    # pass over a sample of the set (its first batch) would be far from the whole set's figure.
    valid = ([record(rng, code, ANIMALS[k]) for k in range(BATCH)] +
             [record(rng, code, ANIMALS[SEEN + k % 4] if k % 2 == 0 else ANIMALS[(k + 4) % SEEN]) for k in range(9)])
    valid_path = write_jsonl(os.path.join(d, "valid.jsonl"), valid)
    model = os.path.join(d, "model")
    subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), model, "--dim", "64",
                    "--layers", "2", "--hidden", "160", "--seed", "7"], check=True)
    job = write_job(os.path.join(d, "job.json"), model=model, training_file=train_path, validation_file=valid_path,
                    seed=3, hyperparameters={"n_epochs": 4, "batch_size": BATCH, "learning_rate": 1e-2,
                                             "lr_scheduler": "constant", "max_seq_len": MAX_SEQ,
                                             "eval_every_steps": EVERY_EVAL, "checkpoint_every_steps": EVERY_CKPT,
                                             "keep_checkpoints": 100, "threads": 2},
                    lora={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
                    data={"format": "messages", "template": "chatml"})
    out = os.path.join(d, "run")
    p = train(job, out)
    m = metrics(out)
    total = len(m)
    check(total == 32, f"{total} steps, want 32 (32 records / 4 x 4 epochs)")
    ckpt_steps = [s for s in range(1, total + 1) if s % EVERY_CKPT == 0 or s == total]
    eval_steps = [s for s in range(1, total + 1) if s % EVERY_EVAL == 0 or s == total]
    got_full = [r["step"] for r in m if "full_valid_loss" in r]
    got_valid = [r["step"] for r in m if "valid_loss" in r]
    check(got_full == ckpt_steps, f"full_valid_loss at steps {got_full}, want the checkpoint steps {ckpt_steps}")
    check(all(("full_valid_mean_token_accuracy" in r) == ("full_valid_loss" in r) for r in m),
          "full_valid_loss without full_valid_mean_token_accuracy, or the other way round")
    check(got_valid == eval_steps, f"valid_loss at steps {got_valid}, want the evaluation steps {eval_steps}")
    events = {int(s): (float(loss), float(acc), int(n)) for loss, acc, n, s in re.findall(
        r"info: full validation loss ([0-9.]+) \(token accuracy ([0-9.]+)\) over (\d+) tokens at step (\d+)", p.stderr)}
    check(sorted(events) == ckpt_steps, f"full validation events at steps {sorted(events)}, want {ckpt_steps}:\n"
                                        f"{p.stderr[-2000:]}")

    base, _, cfg = generate_ref.load_model(model, None)
    longest = max(len(chatml(r)[0]) for r in valid)
    eps = float32_bound(cfg, longest)
    tol_logits = float32_logits_bound(cfg, longest)
    ref_loss = {}
    for s in ckpt_steps:
        row = m[s - 1]
        policy, lora, _ = generate_ref.load_model(model, os.path.join(out, "checkpoints", f"step-{s}"))
        ce, n, hits, ties = reference(policy, lora, valid, tol_logits)
        loss, acc = ce / n, hits / n
        ref_loss[s] = loss
        tol = eps * loss
        got, got_acc = row["full_valid_loss"], row["full_valid_mean_token_accuracy"]
        print(f"step {s}: full_valid_loss {got:.6f}, reference {loss:.6f} over {n} tokens "
              f"(differ by {abs(got - loss):.1e}, bound {tol:.1e}); accuracy {got_acc:.4f}, reference {acc:.4f} "
              f"({ties} near ties)")
        check(abs(got - loss) <= tol, f"step {s}: full_valid_loss {got} differs from the reference's {loss} "
                                      f"by more than {tol}")
        check(events[s][2] == n, f"step {s}: the event counts {events[s][2]} tokens, the reference {n}")
        check(abs(events[s][0] - got) <= 5e-5, f"step {s}: the event says loss {events[s][0]}, metrics {got}")
        check(abs(got_acc * n - hits) <= ties + 1e-6,
              f"step {s}: {got_acc * n:.2f} of {n} tokens right, the reference {hits} ({ties} near ties)")
        if s in eval_steps:  # the periodic evaluation at the same weights covers the same set
            check(abs(row["valid_loss"] - loss) <= tol, f"step {s}: valid_loss {row['valid_loss']} vs {loss}")

    # What a wrong pass would have said lies outside the tolerance, so the checks above can fail.
    last = ckpt_steps[-1]
    policy, lora, _ = generate_ref.load_model(model, os.path.join(out, "checkpoints", f"step-{last}"))
    ce1, n1, _, _ = reference(policy, lora, valid[:BATCH], tol_logits)
    ce0, n0, _, _ = reference(base, {}, valid, tol_logits)
    tol = eps * ref_loss[last]
    for what, v in (("the first micro-batch alone", ce1 / n1), ("the base model", ce0 / n0),
                    (f"step {ckpt_steps[0]}'s adapter", ref_loss[ckpt_steps[0]])):
        print(f"{what}: {v:.4f}, {abs(v - ref_loss[last]) / tol:.1f} tolerances from the whole set's at step {last}")
        check(abs(v - ref_loss[last]) > 3 * tol, f"{what} gives {v}, within 3x the tolerance of the whole set's "
                                                 f"{ref_loss[last]} at step {last}: the test would not see the error")
    check(ref_loss[last] < ref_loss[ckpt_steps[0]] < ce0 / n0 and not math.isnan(ref_loss[last]),
          f"the validation loss did not fall: base {ce0 / n0}, then {[ref_loss[s] for s in ckpt_steps]}")


if __name__ == "__main__":
    main(test)
