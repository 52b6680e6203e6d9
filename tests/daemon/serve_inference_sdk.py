"""Runs serve_inference_sdk.cjs (the official `openai` npm package, pinned in tools/) against a real
`lorad serve` on an ephemeral port: completions and chat completions, streamed and not, on a base
model and on a fine-tuned model trained here (a tiny job: the SDK test checks the protocol, not
quality). Skipped (exit 77) without node or tools/node_modules/openai (scripts/setup-deps installs
both); LORAD_NODE_MODULES may point at another node_modules holding `openai`."""
import os
import shutil
import subprocess
import sys

from serve_common import SOURCE, Daemon, check, log, main, make_model, write_text_dataset

NODE_MODULES = os.environ.get("LORAD_NODE_MODULES", os.path.join(SOURCE, "tools", "node_modules"))


def test(d, daemons):
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    dm = Daemon(d, models, extra=["--workers", "1", "--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    f = dm.upload_ok(data)
    spec = {"model": "tiny", "training_file": f["id"], "seed": 3, "suffix": "sdk",
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64,
                                "threads": 1, "checkpoint_every_steps": 5},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "lm_head"]}}
    job = dm.wait_job(dm.create_job_ok(spec)["id"], "succeeded", timeout=120)
    ft = job["fine_tuned_model"]
    log(f"tiny job {job['id']} succeeded: {ft}")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_inference_sdk.cjs")
    p = subprocess.run(["node", script, f"{dm.base}/v1", "tiny", ft], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, LORAD_SOURCE_DIR=SOURCE, LORAD_NODE_MODULES=NODE_MODULES))
    print(p.stdout, end="")
    check(p.returncode == 0 and "sdk inference ok" in p.stdout,
          f"the OpenAI SDK client failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    if shutil.which("node") is None:
        print("skipped: node is not installed (scripts/setup-deps)")
        sys.exit(77)
    if not os.path.exists(os.path.join(NODE_MODULES, "openai", "package.json")):
        print(f"skipped: {NODE_MODULES}/openai is missing (scripts/setup-deps runs npm ci in tools/)")
        sys.exit(77)
    main(test)
