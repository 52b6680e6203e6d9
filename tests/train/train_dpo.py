"""DPO learns a preference: on a random tiny base (scripts/make-demo-model, byte-level tokenizer,
ChatML template), `lorad train` with method dpo is shown pairs whose preferred output is always a
colour and an animal in lowercase and whose non-preferred output is uppercase letters and digits.

From the run's metrics: at step 1 the adapter is zero (lora_B = 0), so the policy is the reference
and the loss is exactly log 2 with margin 0; over the run the reward margin and the preferred
outputs' log-probability ratio (rewards_chosen = beta (log pi(c) - log ref(c))) rise and the pairs
are ranked right. Independently of the engine, the float64 PyTorch model (tests/reference,
LlamaLora) with the final PEFT adapter, on the held-out pairs tokenised by the demo tokenizer's
definition (byte b is id b) and rendered by ChatML's: the preferred outputs' log-probability ratio
is positive, the margins are, and its DPO loss is the run's last validation loss within the error
bound dpo_ref.py derives. And the refusals: a DPO job on supervised data, a supervised job on
preference pairs, a bad pair and a pair longer than max_seq_len, each named."""
import math
import os
import random
import subprocess
import sys

import torch

from train_common import SOURCE, check, main, metrics, train, write_job, write_jsonl

sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
import generate_ref  # noqa: E402
from float32_bound import float32_bound  # noqa: E402

COLOURS = "red green blue yellow purple orange black white".split()
ANIMALS = "tiger horse eagle salmon spider rabbit otter camel".split()
BETA = 0.2
IM_START, IM_END, NL = 257, 258, 10


def pair(rng, k):
    return {"input": {"messages": [{"role": "user", "content": f"Describe item {k:02d}."}]},
            "preferred_output": [{"role": "assistant", "content": f"{rng.choice(COLOURS)} {rng.choice(ANIMALS)}"}],
            "non_preferred_output": [{"role": "assistant",
                                      "content": "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")
                                                         for _ in range(rng.randint(6, 12)))}]}


def chatml_ids(p, which):
    """(prompt ids, output ids) as ChatML renders a preference pair with the demo tokenizer."""
    def text(s):
        return list(s.encode())
    user = p["input"]["messages"][0]["content"]
    prompt = [IM_START] + text("user\n") + text(user) + [IM_END, NL] + [IM_START] + text("assistant\n")
    return prompt, text(p[which][0]["content"]) + [IM_END]


def log_prob(model, lora, prompt, output):
    """log p(output | prompt), float64."""
    logits = generate_ref.next_logits(model, lora, prompt + output)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(output))


def refusals(d, model, pairs_path):
    """Jobs that must fail before the first step, with the file, line or key named."""
    sft = write_jsonl(os.path.join(d, "sft.jsonl"),
                      [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 4)
    hp = {"max_seq_len": 64, "threads": 1}
    cases = [
        ("dpo on messages", {"training_file": sft, "method": {"type": "dpo", "dpo": {"hyperparameters": hp}}},
         ["training_file", "preference pairs", "messages"]),
        ("supervised on pairs", {"training_file": pairs_path, "hyperparameters": hp},
         ["training_file", "preference pairs", "dpo"]),
        ("pair too long", {"training_file": pairs_path, "method": {"type": "dpo", "dpo": {"hyperparameters":
                                                                                          {**hp, "max_seq_len": 40}}}},
         ["line 1: longer_than_max_seq_len", "max_seq_len"]),
    ]
    bad = os.path.join(d, "bad.jsonl")
    with open(pairs_path) as f, open(bad, "w") as g:
        lines = f.readlines()
        g.write("".join(lines[:2]) + '{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}\n'
                + "".join(lines[2:4]))
    cases.append(("bad pair", {"training_file": bad, "method": {"type": "dpo", "dpo": {"hyperparameters": hp}}},
                  ["line 3: wrong_type", "input.messages"]))
    for name, spec, words in cases:
        job = write_job(os.path.join(d, "refused.json"), model=model, **spec)
        p = train(job, os.path.join(d, "refused"), check_rc=False)
        check(p.returncode == 1, f"{name}: exit {p.returncode}, want 1")
        for w in words:
            check(w in p.stderr, f"{name}: the error does not say '{w}':\n{p.stderr[-2000:]}")


def test(d):
    rng = random.Random(5)
    pairs = [pair(rng, k) for k in range(48)]
    train_path = write_jsonl(os.path.join(d, "train.jsonl"), pairs[:40])
    valid_pairs = pairs[40:]
    valid_path = write_jsonl(os.path.join(d, "valid.jsonl"), valid_pairs)
    model = os.path.join(d, "model")
    subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "make-demo-model"), model, "--dim", "64",
                    "--layers", "2", "--hidden", "160", "--seed", "7"], check=True)
    job = write_job(os.path.join(d, "job.json"), model=model, training_file=train_path, validation_file=valid_path,
                    seed=3, method={"type": "dpo", "dpo": {"hyperparameters": {
                        "beta": BETA, "n_epochs": 6, "batch_size": 4, "learning_rate": 2e-3, "lr_scheduler": "constant",
                        "max_seq_len": 64, "eval_every_steps": 10, "weight_decay": 0.0, "threads": 2}}},
                    lora={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"})
    refusals(d, model, train_path)
    out = os.path.join(d, "run")
    train(job, out)
    m = metrics(out)
    check(len(m) == 60, f"{len(m)} steps, want 60 (40 pairs / 4 x 6 epochs)")
    check(all("rewards_margin" in r and "rewards_chosen" in r for r in m), "a step without its DPO metrics")
    first = m[0]
    check(abs(first["train_loss"] - math.log(2)) < 1e-6 and abs(first["rewards_margin"]) < 1e-6,
          f"step 1 (lora_B = 0, policy = reference): loss {first['train_loss']} margin {first['rewards_margin']}, "
          "want log 2 and 0")

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)
    early, late = m[:5], m[-10:]
    margin0, margin1 = mean("rewards_margin", early), mean("rewards_margin", late)
    chosen0, chosen1 = mean("rewards_chosen", early), mean("rewards_chosen", late)
    print(f"reward margin {margin0:.3f} -> {margin1:.3f}, chosen reward {chosen0:.3f} -> {chosen1:.3f}, "
          f"accuracy {mean('rewards_accuracy', late):.2f}, loss {first['train_loss']:.4f} -> {mean('train_loss', late):.4f}, "
          f"valid loss {m[9]['valid_loss']:.4f} -> {m[-1]['valid_loss']:.4f}")
    check(margin1 > margin0 + 1.0, f"the reward margin rose only from {margin0} to {margin1}")
    check(chosen1 > chosen0 + 0.2 and chosen1 > 0.2,
          f"the preferred log-probability ratio (x beta) rose only from {chosen0} to {chosen1}")
    check(mean("rewards_accuracy", late) >= 0.9, f"accuracy {mean('rewards_accuracy', late)} over the last steps")
    check(m[-1]["valid_loss"] < 0.5 * math.log(2), f"held-out DPO loss {m[-1]['valid_loss']}")

    # Independent: the float64 reference model with the final adapter, on the held-out pairs.
    policy, lora, cfg = generate_ref.load_model(model, os.path.join(out, "adapter"))
    base, _, _ = generate_ref.load_model(model, None)
    ratios, margins, loss, dz_loss = [], [], 0.0, 0.0
    eps = float32_bound(cfg, 2 * 4 * 64)
    for p in valid_pairs:
        r, ce = [], 0.0
        for which in ("preferred_output", "non_preferred_output"):
            prompt, output = chatml_ids(p, which)
            lp, lr = log_prob(policy, lora, prompt, output), log_prob(base, {}, prompt, output)
            r.append(lp - lr)
            ce += abs(lp) + abs(lr)
        z, dz = BETA * (r[0] - r[1]), BETA * eps * ce
        ratios.append(r[0])
        margins.append(z)
        loss += math.log1p(math.exp(-z))
        dz_loss += dz / (1 + math.exp(z - dz))  # the loss's largest slope on [z - dz, z + dz]
    loss /= len(valid_pairs)
    dz_loss /= len(valid_pairs)
    print(f"reference on {len(valid_pairs)} held-out pairs: preferred log-ratio mean {sum(ratios) / len(ratios):.3f}, "
          f"margins > 0: {sum(z > 0 for z in margins)}, DPO loss {loss:.5f} (run {m[-1]['valid_loss']:.5f}, "
          f"differing by {abs(loss - m[-1]['valid_loss']):.1e}, bound {dz_loss:.2e})")
    check(min(ratios) > 0, f"a held-out preferred output lost probability against the base: {min(ratios)}")
    check(min(margins) > 0, f"a held-out pair is ranked wrong: margin {min(margins)}")
    check(abs(loss - m[-1]["valid_loss"]) <= dz_loss + 1e-9,
          f"the reference's held-out DPO loss {loss} differs from the run's {m[-1]['valid_loss']} by more than {dz_loss}")


if __name__ == "__main__":
    main(test)
