#!/usr/bin/python3
"""Runs one integration test (a tests/**/*.py driving the real binary) with every lorad process it
starts under valgrind's memcheck, then reads every process's memcheck log: the test must pass, and
no log may report an error (invalid read or write, use of uninitialised memory in a branch, an
invalid free) or a definitely lost block. Usage: run_under_valgrind.py TEST.py

The environment names the real binary (LORAD_BIN, as ctest sets it for every script test); the
test itself sees LORAD_BIN=lorad-under-valgrind. Skipped (77) where valgrind is missing."""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def scan(log_path):
    """(problems, complete) of one memcheck log: the lines that report an error or a definite leak,
    and whether memcheck wrote its final summary (a process killed with SIGKILL never does)."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    problems = []
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    if m and int(m.group(1)) > 0:
        problems.append(m.group(0))
    m = re.search(r"definitely lost: ([\d,]+) bytes", text)
    if m and m.group(1) != "0":
        problems.append(m.group(0))
    for kind in ("Invalid read", "Invalid write", "Invalid free", "Conditional jump or move depends on uninitialised",
                 "Syscall param"):
        if kind in text:
            problems.append(kind)
    return problems, "ERROR SUMMARY" in text


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if not shutil.which("valgrind"):
        print("valgrind not found: skipped")
        return 77
    real = os.environ["LORAD_BIN"]
    logs = tempfile.mkdtemp(prefix="lorad-valgrind-")
    env = dict(os.environ, LORAD_BIN=os.path.join(HERE, "lorad-under-valgrind"), LORAD_VALGRIND_REAL=real,
               LORAD_VALGRIND_LOGS=logs, LORAD_TEST_VALGRIND="1")
    rc = subprocess.run([sys.executable, sys.argv[1]], env=env).returncode
    paths = sorted(glob.glob(os.path.join(logs, "memcheck.*.log")))
    bad = []
    complete = 0
    for p in paths:
        problems, done = scan(p)
        complete += done
        if problems:
            bad.append((p, problems))
    print(f"valgrind: {len(paths)} lorad processes, {complete} ran to their summary, {len(bad)} with problems")
    for p, problems in bad:
        print(f"FAIL: {p}: {'; '.join(problems)}")
        with open(p, errors="replace") as f:
            print(f.read()[-6000:])
    if rc != 0:
        print(f"FAIL: {os.path.basename(sys.argv[1])} exited {rc} under valgrind (memcheck logs in {logs})")
        return 1
    if not paths or complete == 0:
        print(f"FAIL: no lorad process ran to its memcheck summary (logs in {logs})")
        return 1
    if bad:
        return 1
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
