"""A damaged checkpoint at resume (issue 20): a run is stopped after its third checkpoint, the
newest checkpoint's training state is truncated (as a disk that lost the end of a file would
leave it), and `lorad train --resume` must warn that it is damaged, resume from the checkpoint
before it, and still end with adapter files byte-identical to an uninterrupted run's and every
metrics step once. With every checkpoint damaged it must refuse, saying so, rather than start over
silently."""
import os
import shutil

from train_common import check, main, make_model, metrics, train, write_job, write_jsonl

STATE = "training_state.safetensors"


def spec(model, data, max_steps=None):
    hp = {"n_epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64, "checkpoint_every_steps": 10,
          "keep_checkpoints": 5, "threads": 1, "lr_scheduler": "constant"}
    if max_steps:
        hp["max_steps"] = max_steps
    return {"model": model, "training_file": data, "seed": 8, "hyperparameters": hp,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test(d):
    model = make_model(os.path.join(d, "m"), dim=32, layers=2)
    data = write_jsonl(os.path.join(d, "t.jsonl"), [{"text": f"sample {i} " + "lima mike oscar " * (i % 5 + 1)}
                                                      for i in range(40)])
    ref = os.path.join(d, "ref")
    train(write_job(os.path.join(d, "ref.json"), **spec(model, data)), ref)
    total = metrics(ref)[-1]["step"]

    out = os.path.join(d, "run")
    # the same run, stopped after step 30 (max_steps changes the spec hash, so instead the
    # finished run's checkpoints are copied and the later ones removed)
    shutil.copytree(ref, out)
    ck = os.path.join(out, "checkpoints")
    steps = sorted(int(n.split("-")[1]) for n in os.listdir(ck) if n.startswith("step-"))
    for s in steps:
        if s > 30:
            shutil.rmtree(os.path.join(ck, f"step-{s}"))
    shutil.rmtree(os.path.join(out, "adapter"), ignore_errors=True)
    state = os.path.join(ck, "step-30", STATE)
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    job = write_job(os.path.join(d, "run.json"), **spec(model, data))
    p = train(job, out, "--resume")
    check("step-30 is damaged" in p.stderr and "step 20" in p.stderr,
          f"no warning naming the damaged checkpoint and the one used:\n{p.stderr[-2000:]}")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        check(read(os.path.join(out, "adapter", name)) == read(os.path.join(ref, "adapter", name)),
              f"{name} differs from the uninterrupted run's after resuming from step 20")
    got = [m["step"] for m in metrics(out)]
    check(got == list(range(1, total + 1)), f"metrics steps after the fallback: {got[:3]}...{got[-3:]} (n={len(got)})")

    # every checkpoint damaged: refused, not started over
    for s in os.listdir(ck):
        if s.startswith("step-"):
            with open(os.path.join(ck, s, STATE), "r+b") as f:
                f.truncate(10)
    p = train(job, out, "--resume", check_rc=False)
    check(p.returncode != 0 and "every checkpoint" in p.stderr, f"all damaged: exit {p.returncode}\n{p.stderr[-1500:]}")
    print(f"damaged step-30 -> resumed from step 20, identical adapter after {total} steps; all damaged -> refused")


if __name__ == "__main__":
    main(test)
