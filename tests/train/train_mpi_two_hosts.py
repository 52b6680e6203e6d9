#!/usr/bin/env python3
"""Data-parallel `lorad train` on two "hosts" (issue 16): two network namespaces joined by a veth
pair, made by the test and removed on exit, each rank in its own, talking over Open MPI's TCP
transport only. mpirun runs in the first namespace; it reaches the second through a launch agent
that stands in for ssh (`ip netns exec` instead of a login), so nothing but the network separates
the ranks, as between two machines.

The run must equal the single process's (train_mpi.py's job and tolerance), and the veth must
have carried at least the gradients: rank 0 broadcasts the summed LoRA gradients to rank 1 every
step. Skipped (77) where namespaces cannot be made (not root, no `ip`, a container without
CAP_SYS_ADMIN) or without mpirun or an MPI build."""
import atexit
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from train_common import LORAD, check, main  # noqa: E402
from train_mpi import ENV, make_job, read_safetensors, run, same_run, skip_without_mpi  # noqa: E402

NET = "10.77.{}.{}"


def sh(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True)


class Hosts:
    """Two namespaces h0, h1 with addresses 10.77.N.1 and 10.77.N.2 on a veth pair."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.ns = [f"lorad-h0-{tag}", f"lorad-h1-{tag}"]
        self.dev = [f"lrd0-{tag}", f"lrd1-{tag}"]
        self.subnet = 1 + tag % 250
        self.addr = [NET.format(self.subnet, 1), NET.format(self.subnet, 2)]
        self.made = []

    def make(self):
        for ns in self.ns:
            p = sh("ip", "netns", "add", ns)
            if p.returncode != 0:
                print(f"cannot make a network namespace ({p.stderr.strip()}): skipped")
                self.remove()
                sys.exit(77)
            self.made.append(ns)
        steps = [["ip", "link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1]]]
        for i in (0, 1):
            steps += [["ip", "link", "set", self.dev[i], "netns", self.ns[i]],
                      ["ip", "-n", self.ns[i], "addr", "add", f"{self.addr[i]}/24", "dev", self.dev[i]],
                      ["ip", "-n", self.ns[i], "link", "set", "lo", "up"],
                      ["ip", "-n", self.ns[i], "link", "set", self.dev[i], "up"]]
        for cmd in steps:
            p = sh(*cmd)
            check(p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}")

    def remove(self):
        for ns in self.made:  # deleting a namespace deletes its end of the veth, and so the pair
            sh("ip", "netns", "del", ns)
        self.made = []

    def tx_bytes(self, i):
        p = sh("ip", "netns", "exec", self.ns[i], "cat", f"/sys/class/net/{self.dev[i]}/statistics/tx_bytes")
        check(p.returncode == 0, f"tx_bytes of {self.dev[i]}: {p.stderr}")
        return int(p.stdout)

    def agent(self, path):
        """The launch agent mpirun calls as it would call ssh: [options] HOST COMMAND..."""
        cases = "\n".join(f"{a}) ns={n};;" for a, n in zip(self.addr, self.ns))
        with open(path, "w") as f:
            f.write(f"""#!/bin/sh
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case $host in
{cases}
*) echo "launch agent: unknown host $host" >&2; exit 1;;
esac
exec ip netns exec "$ns" sh -c "$*"
""")
        os.chmod(path, 0o755)
        return path


def test(d):
    skip_without_mpi()
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("network namespaces need root and iproute2: skipped")
        sys.exit(77)
    hosts = Hosts()
    atexit.register(hosts.remove)
    for sig in (signal.SIGTERM, signal.SIGINT):  # ctest's timeout: still clean up
        signal.signal(sig, lambda *_: sys.exit(1))
    hosts.make()
    job = make_job(d)
    ref = os.path.join(d, "one")
    run(job, ref, 1)

    out = os.path.join(d, "two-hosts")
    subnet = f"{NET.format(hosts.subnet, 0)}/24"
    before = hosts.tx_bytes(0)
    cmd = ["ip", "netns", "exec", hosts.ns[0], "mpirun", "--host", f"{hosts.addr[0]}:1,{hosts.addr[1]}:1", "-np", "2",
           "--mca", "plm_rsh_agent", hosts.agent(os.path.join(d, "agent.sh")),
           "--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", subnet,
           "--mca", "oob_tcp_if_include", subnet, LORAD, "train", job, "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)
    check(p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    check("data-parallel over 2 MPI ranks" in p.stdout, f"lorad train did not run on 2 ranks:\n{p.stdout[-1500:]}")
    sent = hosts.tx_bytes(0) - before
    same_run(ref, out, "two hosts over TCP")

    grads = sum(t.size for t in read_safetensors(os.path.join(out, "adapter", "adapter_model.safetensors")).values())
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = sum(1 for _ in f)
    want = steps * grads * 4
    check(sent >= want, f"the veth of host 0 sent {sent} bytes, less than the {steps} steps' broadcast "
                        f"gradients ({want} bytes): the ranks did not talk over it")
    print(f"two hosts over TCP: {steps} steps, {sent} bytes out of host 0 ({want} bytes of gradients)")


if __name__ == "__main__":
    main(test)
