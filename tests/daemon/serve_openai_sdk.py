"""Runs serve_openai_sdk.cjs (the official `openai` npm package, pinned in tools/) against a real
`lorad serve` on an ephemeral port. tools/node_modules comes from scripts/setup-deps (npm ci)."""
import os
import subprocess

from serve_common import SOURCE, Daemon, check, main, make_model, write_text_dataset


def test(d, daemons):
    sdk = os.path.join(SOURCE, "tools", "node_modules", "openai", "package.json")
    check(os.path.exists(sdk), "tools/node_modules/openai is missing: run scripts/setup-deps (npm ci in tools/)")
    models = os.path.join(d, "models")
    make_model(os.path.join(models, "tiny"))
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 40)
    dm = Daemon(d, models, extra=["--workers", "1", "--threads-per-job", "1"])
    daemons.append(dm)
    dm.start()
    dm.wait_ready()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_openai_sdk.cjs")
    p = subprocess.run(["node", script, f"{dm.base}/v1", data, "tiny"], capture_output=True, text=True,
                       timeout=180, env=dict(os.environ, LORAD_SOURCE_DIR=SOURCE))
    print(p.stdout, end="")
    check(p.returncode == 0 and "sdk ok" in p.stdout,
          f"the OpenAI SDK client failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    rc = dm.stop()
    check(rc == 0, f"lorad serve exited {rc} on SIGTERM")


if __name__ == "__main__":
    main(test)
