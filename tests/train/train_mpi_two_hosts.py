#!/usr/bin/env python3
"""Data-parallel `lorad train` on two hosts over Open MPI's TCP transport (issue 16).

train_mpi runs its ranks on one host, where Open MPI may pass the sums through shared memory and
never opens a socket between ranks. Here two network namespaces, joined by a veth pair, stand for
two hosts: mpirun starts in the first and reaches the second through a generated rsh agent
(`ip netns exec`) instead of ssh, and only the tcp (and self) transport is allowed. The 2-rank run
must match one process as train_mpi requires (same job), Open MPI must report the tcp BTL between
the ranks, and each direction of the veth must have carried at least every step's gradients.
Skipped (77) unless root with `ip netns`, Open MPI's mpirun and a lorad built with MPI."""
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from train_common import LORAD, Fail, check, main  # noqa: E402
from train_mpi import ENV, losses, make_job, read_safetensors, run, same_run, skip_without_mpi  # noqa: E402

PID = os.getpid()
NS = [f"lorad-nt0-{PID}", f"lorad-nt1-{PID}"]  # nt: this test's; the pid tells a stale pair from a live one
VETH = [f"lrdv0-{PID}", f"lrdv1-{PID}"]
NET = f"10.77.{PID % 250}"
IPS = [f"{NET}.1", f"{NET}.2"]


def skip(why):
    print(f"{why}: skipped")
    sys.exit(77)


def ip(*args, check_rc=True):
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check_rc and p.returncode != 0:
        raise Fail(f"ip {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def remove_namespace(ns):
    """Ends what still runs in ns (our orted and lorad ranks after a failure), then deletes it."""
    p = ip("netns", "pids", ns, check_rc=False)
    for pid in p.stdout.split() if p.returncode == 0 else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", ns, check_rc=False)


def cleanup():
    for ns in NS:
        if os.path.exists(f"/run/netns/{ns}"):
            remove_namespace(ns)


def remove_stale():
    """Namespaces left by a run of this test that was killed (SIGKILL, e.g. ctest's timeout)."""
    for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        m = re.fullmatch(r"lorad-nt[01]-(\d+)", ns)
        if m and int(m.group(1)) != PID and not os.path.exists(f"/proc/{m.group(1)}"):
            remove_namespace(ns)


def on_signal(sig, frame):
    raise SystemExit(128 + sig)  # unwinds through guarded's finally


def make_hosts():
    """Two namespaces with lo up, joined by a veth pair: h0 holds IPS[0], h1 IPS[1]."""
    for ns in NS:
        p = ip("netns", "add", ns, check_rc=False)
        if p.returncode != 0:
            skip(f"ip netns add {ns} failed ({p.stderr.strip()})")
        p = ip("netns", "exec", ns, "true", check_rc=False)
        if p.returncode != 0:
            skip(f"ip netns exec {ns} failed ({p.stderr.strip()})")
    p = ip("link", "add", VETH[0], "netns", NS[0], "type", "veth", "peer", "name", VETH[1], "netns", NS[1],
           check_rc=False)
    if p.returncode != 0:
        skip(f"cannot make a veth pair ({p.stderr.strip()})")
    for ns, dev, addr in zip(NS, VETH, IPS):
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", dev, "up")


def tx_bytes(i):
    p = ip("-n", NS[i], "-j", "-s", "link", "show", "dev", VETH[i])
    return json.loads(p.stdout)[0]["stats64"]["tx"]["bytes"]


def write_agent(d):
    """An ssh stand-in for Open MPI's rsh launcher: `agent [options] HOST command...` runs the
    command in HOST's namespace."""
    path = os.path.join(d, "netns-agent")
    cases = "".join(f"  {addr}) ns={ns} ;;\n" for addr, ns in zip(IPS, NS))
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "while [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) break ;; esac; done\n"
                "host=$1; shift\n"
                f"case \"$host\" in\n{cases}"
                "  *) echo \"netns-agent: unknown host $host\" >&2; exit 255 ;;\n"
                "esac\n"
                "exec ip netns exec \"$ns\" sh -c \"$*\"\n")
    os.chmod(path, 0o755)
    return path


def test(d):
    skip_without_mpi()
    if os.geteuid() != 0:
        skip("network namespaces need root")
    if not shutil.which("ip"):
        skip("ip (iproute2) not found")
    if "Open MPI" not in subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout:
        skip("mpirun is not Open MPI's (the launch below uses its rsh agent and --mca options)")
    lorad = shutil.which(LORAD)  # absolute: orted starts rank 1 in h1
    check(lorad is not None, f"{LORAD} not found")
    remove_stale()
    make_hosts()
    job = make_job(d)
    ref = os.path.join(d, "one")
    run(job, ref, 1)

    out = os.path.join(d, "two-hosts")
    subnet = f"{NET}.0/24"
    cmd = ["ip", "netns", "exec", NS[0], "mpirun", "-np", "2", "--host", ",".join(IPS),
           "--mca", "plm_rsh_agent", write_agent(d), "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
           "--mca", "btl_tcp_if_include", subnet, "--mca", "oob_tcp_if_include", subnet,
           "--mca", "btl_base_verbose", "1", lorad, "train", job, "--out", out]
    before = [tx_bytes(0), tx_bytes(1)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    except subprocess.TimeoutExpired:
        raise Fail(f"{' '.join(cmd)} did not finish in 120 s")
    text = p.stdout + p.stderr
    check(p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{text[-4000:]}")
    sent = [tx_bytes(0) - before[0], tx_bytes(1) - before[1]]

    check("data-parallel over 2 MPI ranks" in text, f"lorad train did not say it runs on 2 ranks:\n{text[-1500:]}")
    # Open MPI names the transport to each peer; rank 0 must reach rank 1 at h1's address
    check(re.search(rf"Using tcp btl for send to \[\S*,1\] on node {re.escape(IPS[1])}\b", text),
          f"Open MPI did not report rank 0 sending to rank 1 on {IPS[1]} over tcp:\n{text[-3000:]}")
    check(re.search(r"Using tcp btl for send to \[\S*,0\]", text),
          f"Open MPI did not report rank 1 sending to rank 0 over tcp:\n{text[-3000:]}")
    same_run(ref, out, "2 ranks in 2 namespaces")
    # every step sums the float32 gradients (one per adapter element): whatever the allreduce
    # algorithm, each rank's gradient must cross the veth in full
    grads = sum(t.size for t in read_safetensors(os.path.join(out, "adapter", "adapter_model.safetensors")).values())
    need = len(losses(out)) * grads * 4
    for i in (0, 1):
        check(sent[i] >= need, f"{VETH[i]} ({NS[i]}) sent {sent[i]} bytes during the run, less than the "
                               f"{need} bytes of gradients its rank must send")
    print(f"veth bytes sent h0->h1 {sent[0]}, h1->h0 {sent[1]}; gradients per direction {need}")


def guarded(d):
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        test(d)
    except SystemExit as e:
        if e.code == 77:
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        cleanup()


if __name__ == "__main__":
    main(guarded)
