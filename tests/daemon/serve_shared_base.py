"""Two jobs on one base share its mapped pages (issue 15): a daemon with two workers trains two jobs
on the same bf16 safetensors model at once, and the kernel's own accounting of the daemon
(/proc/PID/smaps) must show the model file mapped read-only once per job, every mapped page a
clean page of the file (no private copy, nothing converted up front), and the proportional set
size of those mappings about one copy of the file rather than two: PSS divides each page by the
number of mappings it is in, so two jobs holding their own copies would count twice.

The model is large enough (about 100 MB of bf16 weights) that one private copy would stand far
above page-granularity noise, and above what the jobs themselves allocate: the daemon's anonymous
memory may grow by less than one copy of the file from idle to two jobs running."""
import os
import time

from serve_common import PYTHON, SANITIZED, SOURCE, Daemon, check, log, main, write_text_dataset

import subprocess

MODEL_ARGS = ["--dim", "768", "--layers", "8", "--heads", "8", "--kv-heads", "4", "--hidden", "2048",
              "--dtype", "BF16", "--seed", "3"]


def smaps_of(pid, path):
    """[(fields dict in kB, perms)] of every mapping of path in process pid."""
    out, cur = [], None
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and not parts[0].endswith(":"):
                cur = None
                if len(parts) >= 6 and os.path.realpath(parts[5]) == real:
                    cur = ({}, parts[1])
                    out.append(cur)
            elif cur is not None and len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                cur[0][parts[0][:-1]] = int(parts[1])
    return out


def rollup(pid):
    """/proc/PID/smaps_rollup as {field: kB}."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {p[0][:-1]: int(p[1]) for p in (l.split() for l in f) if len(p) >= 2 and p[1].isdigit()}


def test(d, daemons):
    models = os.path.join(d, "models")
    model_dir = os.path.join(models, "shared")
    subprocess.run([PYTHON, os.path.join(SOURCE, "scripts", "make-demo-model"), model_dir] + MODEL_ARGS, check=True,
                   stdout=subprocess.DEVNULL)
    weights = os.path.join(model_dir, "model.safetensors")
    check(os.path.exists(weights), f"make-demo-model wrote no {weights}: {os.listdir(model_dir)}")
    file_kb = os.path.getsize(weights) / 1024
    data = write_text_dataset(os.path.join(d, "train.jsonl"), 200)

    dm = Daemon(d, models, extra=["--workers", "2"])
    daemons.append(dm)
    dm.start()
    f = dm.upload_ok(data)
    idle_anon_kb = rollup(dm.proc.pid).get("Anonymous", 0)
    spec = {"model": "shared", "training_file": f["id"], "seed": 1,
            "hyperparameters": {"n_epochs": 1000, "batch_size": 1, "max_seq_len": 64, "threads": 1,
                                "compute_dtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    jobs = [dm.create_job_ok(spec)["id"] for _ in range(2)]
    # both running, and each past a few steps (every weight page has been read)
    deadline = time.time() + 120
    while True:
        done = [j for j in jobs if dm.job(j)["status"] == "running" and len(dm.metrics(j)) >= 3]
        if len(done) == 2:
            break
        check(time.time() < deadline, f"the two jobs were not both running with 3 steps within 120 s: "
              f"{[dm.job(j)['status'] for j in jobs]}\n{dm.log_tail(2000)}")
        time.sleep(0.2)
    maps = smaps_of(dm.proc.pid, weights)
    # both jobs still running while the pages were counted
    check(all(dm.job(j)["status"] == "running" for j in jobs), "a job stopped while its mappings were read")
    log(f"{weights}: {file_kb:.0f} kB; mappings: " +
        "; ".join(f"{p} Rss {m.get('Rss')} Pss {m.get('Pss')} Private {m.get('Private_Clean', 0) + m.get('Private_Dirty', 0)}"
                  f" Anonymous {m.get('Anonymous')}" for m, p in maps))
    check(len(maps) == 2, f"the daemon maps {weights} {len(maps)} times with two jobs running, expected once per job")
    for m, perms in maps:
        check(perms.startswith("r") and "w" not in perms and perms.endswith("s"),
              f"the model is mapped {perms}, expected read-only shared (r--s)")
        check(m.get("Rss", 0) >= 0.9 * file_kb,
              f"a job's mapping holds only {m.get('Rss')} kB resident of the {file_kb:.0f} kB file: its weights "
              f"were not read from the mapping")
        check(m.get("Anonymous", 0) == 0 and m.get("Private_Dirty", 0) == 0,
              f"a mapping of the model has private pages: {m}")
    pss = sum(m.get("Pss", 0) for m, _ in maps)
    rss = sum(m.get("Rss", 0) for m, _ in maps)
    check(pss <= 1.1 * file_kb,
          f"the two jobs' mappings have PSS {pss} kB for a {file_kb:.0f} kB file (RSS {rss} kB): they do not share "
          "the file's pages")
    # and nothing in the process holds a second, converted copy of the weights
    grown = rollup(dm.proc.pid).get("Anonymous", 0) - idle_anon_kb
    log(f"anonymous memory: {idle_anon_kb} kB idle, +{grown} kB with the two jobs running")
    # Under ASan freed blocks wait in its quarantine (256 MB) and every heap byte has shadow, so the
    # anonymous total says nothing about copies there; the release run checks it.
    check(SANITIZED or grown < file_kb,
          f"the daemon's anonymous memory grew by {grown} kB with two jobs on a {file_kb:.0f} kB model: a copy of "
          "the weights?")
    for j in jobs:
        dm.ok("POST", f"/v1/fine_tuning/jobs/{j}/cancel")
    for j in jobs:
        dm.wait_job(j, "cancelled", timeout=60)
    dm.stop()


if __name__ == "__main__":
    main(test)
