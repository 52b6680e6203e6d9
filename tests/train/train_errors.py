"""Bad input to `lorad train` fails before training with an error naming the line, key or file,
and leaves nothing half-written; --skip-invalid trains on the good lines."""
import json
import os

from train_common import SHARED, check, main, make_model, metrics, train, write_job

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


def test(d):
    model = make_model(os.path.join(d, "model"), dim=32, layers=1)
    lines = [json.dumps(GOOD)] * 2 + ["{not json"] + [json.dumps(GOOD)] + [
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps(GOOD),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": "not a list"}),
    ] + [json.dumps(GOOD)] * 4
    bad = os.path.join(d, "bad.jsonl")
    with open(bad, "w") as f:
        f.write("\n".join(lines) + "\n")
    hp = {"n_epochs": 1, "batch_size": 2, "max_seq_len": 32}

    job = write_job(os.path.join(d, "job.json"), model=model, training_file=bad, hyperparameters=hp)
    p = train(job, os.path.join(d, "out-bad"), check_rc=False)
    check(p.returncode == 1, f"invalid data should fail with exit 1, got {p.returncode}")
    for line, problem in ((3, "invalid_json"), (5, "unknown_role"), (7, "no_assistant_turn"), (8, "wrong_type")):
        check(f"line {line}: {problem}" in p.stderr, f"stderr should name line {line} ({problem}):\n{p.stderr}")
    check(not os.path.exists(os.path.join(d, "out-bad", "checkpoints")), "a failed validation must not checkpoint")

    p = train(job, os.path.join(d, "out-skip"), "--skip-invalid")
    check(len(metrics(os.path.join(d, "out-skip"))) >= 1, "--skip-invalid should train on the good lines")
    check(os.path.exists(os.path.join(d, "out-skip", "adapter", "adapter_model.safetensors")), "no final adapter")

    job = write_job(os.path.join(d, "unknown.json"), model=model, training_file=bad,
                    hyperparameters={**hp, "learning_rat": 1e-3})
    p = train(job, os.path.join(d, "o2"), check_rc=False)
    check(p.returncode == 1 and "hyperparameters.learning_rat" in p.stderr, f"unknown key: {p.stderr}")

    # bf16 compute where the CPU (here: LORAD_ISA's cap) has no AVX512_BF16 is refused, naming the field;
    # auto on the same host falls back to float32 and says so.
    job = write_job(os.path.join(d, "bf16.json"), model=model, training_file=bad,
                    hyperparameters={**hp, "compute_dtype": "bfloat16"})
    p = train(job, os.path.join(d, "o-bf16"), "--skip-invalid", check_rc=False, env={"LORAD_ISA": "avx512"})
    check(p.returncode == 1 and "hyperparameters.compute_dtype" in p.stderr and "bfloat16" in p.stderr,
          f"bf16 compute without AVX512_BF16: {p.stderr}")
    job = write_job(os.path.join(d, "auto.json"), model=model, training_file=bad,
                    hyperparameters={**hp, "compute_dtype": "auto"})
    p = train(job, os.path.join(d, "o-auto"), "--skip-invalid", env={"LORAD_ISA": "avx512"})
    check("computing in float32" in p.stdout + p.stderr, f"auto without AVX512_BF16: {p.stdout}{p.stderr}")

    job = write_job(os.path.join(d, "nomodel.json"), model=os.path.join(d, "no-such-model"), training_file=bad,
                    hyperparameters=hp)
    p = train(job, os.path.join(d, "o3"), check_rc=False)
    check(p.returncode == 1 and "no-such-model" in p.stderr, f"missing model: {p.stderr}")

    # A llama2.c model has no tokenizer: text records are refused, token ids beyond its vocabulary too.
    stories = os.path.join(SHARED, "stories260K.bin")
    text = os.path.join(d, "text.jsonl")
    with open(text, "w") as f:
        f.write(json.dumps({"text": "once upon a time"}) + "\n")
    job = write_job(os.path.join(d, "l2c.json"), model=stories, training_file=text, hyperparameters=hp)
    p = train(job, os.path.join(d, "o4"), check_rc=False)
    check(p.returncode == 1 and "input_ids" in p.stderr, f"text data on a tokenizer-less model: {p.stderr}")
    ids = os.path.join(d, "ids.jsonl")
    with open(ids, "w") as f:
        f.write(json.dumps({"input_ids": [1, 2, 3]}) + "\n" + json.dumps({"input_ids": [1, 600, 3]}) + "\n")
    job = write_job(os.path.join(d, "ids.json"), model=stories, training_file=ids, hyperparameters=hp)
    p = train(job, os.path.join(d, "o5"), check_rc=False)
    check(p.returncode == 1 and "line 2" in p.stderr and "600" in p.stderr, f"out-of-vocabulary id: {p.stderr}")

    # init_adapter of another rank is refused, naming the field.
    good = os.path.join(d, "good.jsonl")
    with open(good, "w") as f:
        f.write((json.dumps(GOOD) + "\n") * 4)
    job = write_job(os.path.join(d, "init.json"), model=model, training_file=good, hyperparameters=hp,
                    lora={"r": 4, "init_adapter": os.path.join(d, "out-skip", "adapter")})
    p = train(job, os.path.join(d, "o6"), check_rc=False)
    check(p.returncode == 1 and "lora.init_adapter" in p.stderr, f"init_adapter rank mismatch: {p.stderr}")
    # The same rank loads, and the first step starts from those weights (its loss is the trained one's).
    job = write_job(os.path.join(d, "init8.json"), model=model, training_file=good, hyperparameters=hp,
                    lora={"r": 8, "init_adapter": os.path.join(d, "out-skip", "adapter")})
    train(job, os.path.join(d, "o7"))
    # The same adapter as the adapter.tar the run wrote (engine/formats/tar_write.c, what the API serves)
    # continues identically: same losses, same final tensors byte for byte.
    job = write_job(os.path.join(d, "init_tar.json"), model=model, training_file=good, hyperparameters=hp,
                    lora={"r": 8, "init_adapter": os.path.join(d, "out-skip", "adapter", "adapter.tar")})
    train(job, os.path.join(d, "o8"))
    losses = [[m["train_loss"] for m in metrics(os.path.join(d, o))] for o in ("o7", "o8")]
    check(losses[0] == losses[1] and losses[0], f"init_adapter from the tar trains differently: {losses}")
    final = [open(os.path.join(d, o, "adapter", "adapter_model.safetensors"), "rb").read() for o in ("o7", "o8")]
    check(final[0] == final[1], "init_adapter from the tar: final adapter differs from the one started from the dir")
    # A damaged archive is refused before training, naming the field and the problem.
    cut = os.path.join(d, "cut.tar")
    with open(os.path.join(d, "out-skip", "adapter", "adapter.tar"), "rb") as f, open(cut, "wb") as g:
        g.write(f.read(3000))
    job = write_job(os.path.join(d, "init_cut.json"), model=model, training_file=good, hyperparameters=hp,
                    lora={"r": 8, "init_adapter": cut})
    p = train(job, os.path.join(d, "o9"), check_rc=False)
    check(p.returncode == 1 and "lora.init_adapter" in p.stderr and "cut.tar: truncated tar archive" in p.stderr,
          f"init_adapter from a truncated tar: {p.stderr}")


if __name__ == "__main__":
    main(test)
