"""Runs serve_openai_sdk.cjs (the official `openai` npm package, pinned in tools/) against a real
`lorad serve` on an ephemeral port, with a text dataset and a preference (DPO) one. tools/node_modules
comes from scripts/setup-deps (npm ci)."""
import json
import os
import random
import subprocess

from serve_common import SOURCE, Daemon, check, main, make_model, write_text_dataset


def write_preference_dataset(path, n, seed=6):
    """n pairs in OpenAI's DPO format (ASCII, for the byte-level tokenizer)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"input": {"messages": [{"role": "user", "content": f"Name thing {i}."}]},
                                "preferred_output": [{"role": "assistant", "content": rng.choice(["cat", "dog", "owl"])}],
                                "non_preferred_output": [{"role": "assistant", "content": "NO " + str(i)}]}) + "\n")
    return path


def test(d, daemons):
    sdk = os.path.join(SOURCE, "tools", "node_modules", "openai", "package.json")
    check(os.path.exists(sdk), "tools/node_modules/openai is missing: run scripts/setup-deps (npm ci in tools/)")
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    pairs = write_preference_dataset(os.path.join(d, "pairs.jsonl"), 8)
    dm = Daemon(d, models, extra=["--workers", "1", "--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_openai_sdk.cjs")
    p = subprocess.run(["node", script, f"{dm.base}/v1", data, "tiny", pairs], capture_output=True, text=True,
                       timeout=180, env=dict(os.environ, LORAD_SOURCE_DIR=SOURCE))
    print(p.stdout, end="")
    check(p.returncode == 0 and "sdk ok" in p.stdout,
          f"the OpenAI SDK client failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
