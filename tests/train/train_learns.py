"""It must learn: LoRA on a random tiny base learns a fixed key -> value mapping that the base cannot
know. The validation loss (on the mapping's completions) must fall by at least half, and the final
evaluation must beat the untrained adapter's loss measured on the same data at step 1."""
import os
import random

from train_common import check, main, make_model, metrics, train, write_job, write_jsonl

COLOURS = "red green blue yellow purple orange black white".split()
ANIMALS = "tiger horse eagle salmon spider rabbit otter camel".split()


def test(d):
    rng = random.Random(3)
    pairs = [(f"key {k:02d}", f" {rng.choice(COLOURS)} {rng.choice(ANIMALS)}") for k in range(48)]
    rows = [{"prompt": k + " is", "completion": v} for k, v in pairs]
    train_path = write_jsonl(os.path.join(d, "train.jsonl"), rows)
    valid_path = write_jsonl(os.path.join(d, "valid.jsonl"), rows[::3])
    model = make_model(os.path.join(d, "model"), dim=64, layers=2)
    job = write_job(os.path.join(d, "job.json"), model=model, training_file=train_path, validation_file=valid_path,
                    seed=1, hyperparameters={"n_epochs": 30, "batch_size": 8, "learning_rate": 1e-2,
                                             "lr_scheduler": "cosine", "warmup_steps": 5, "max_seq_len": 32,
                                             "eval_every_steps": 1, "weight_decay": 0.0},
                    lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj", "lm_head"]})
    train(job, os.path.join(d, "run"))
    m = metrics(os.path.join(d, "run"))
    first, last = m[0]["valid_loss"], m[-1]["valid_loss"]
    print(f"valid_loss {first:.4f} -> {last:.4f} over {len(m)} steps; accuracy {m[-1]['valid_mean_token_accuracy']:.3f}")
    # A random base spreads its prediction over 32000 pieces: its loss is near ln(32000) = 10.37.
    check(first > 9.0, f"the base should not know the mapping, but its loss is {first}")
    check(last <= 0.5 * first, f"validation loss fell only from {first} to {last}")
    check(m[-1]["valid_mean_token_accuracy"] > 0.5, f"token accuracy {m[-1]['valid_mean_token_accuracy']}")


if __name__ == "__main__":
    main(test)
