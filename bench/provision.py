"""Fast provisioning figures: provision and return by the fast path and by the reboot path (root).

    .venv/bin/python bench/provision.py [--nodes 2] [--rounds 2] [--memory 1024] [--disk-mb 64] [--json]

Real QEMU nodes (TCG) boot the FPBL and check in with a real rhaas server; each node's BMC is a virtual
BMC speaking IPMI. On the same nodes, in one run:

- **provision**: ``POST /node/<n>/provision`` → the customer OS's marker line on the node's console
  (download kernel, initrd and a ``--disk-mb`` disk image, verify, write the disk, kexec);
- **return, fast path**: ``detach_node`` → the node is ready again (NMI over IPMI, the crash FPBL wipes
  the disk's metadata and reads it back, restores the full memory map, the full FPBL checks in);
- **return, reboot path**: the same with the server's ``[provisioning] return_path = "reboot"`` (power
  cycle over IPMI, firmware, FPBL, wipe, check-in): the server is restarted between the two, on the
  same database and nodes;
- **FPBL boot**: power on → the agent's first check-in (what any reboot-path provision pays on top of
  the deploy itself: a reboot-path deploy boots the firmware into an installer, then again into the OS);
- firmware boots per cycle, from the nodes' own counters;
- every phase once with one node alone, then with all ``--nodes`` nodes at once.

Nodes use QEMU's user-mode network (the server is 10.0.2.2 to them), so the bench needs no switch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rhaas.client import Client
from rhaas.lab import images
from rhaas.lab.fastnode import BMC_USER, FastNode, agent_url
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import QemuNode
from rhaas.lab.servers import Server
from rhaas.provisioning.fpbl import build_fpbl

TIMEOUT = 600.0
BMC_PASSWORD = "bench-bmc"


def in_parallel(names: list[str], action: Callable[[str], float]) -> dict[str, float]:
    """Run ``action(name)`` for every name at once; each returns its own seconds."""
    results: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = action(name)
        except BaseException as exc:  # reported below, after every thread ended
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class Bench:
    def __init__(self, workdir: Path, count: int, memory: int, disk_mb: int) -> None:
        self.workdir = workdir
        self.config = workdir / "rhaas.toml"
        self.server = Server(f"sqlite:///{workdir / 'rhaas.sqlite3'}", workdir / "server.log", "--config",
                             str(self.config))  # fmt: skip
        self.names = [f"b{i}" for i in range(1, count + 1)]
        self.memory, self.disk_size = memory, f"{disk_mb * 2}M"
        self.fast: dict[str, FastNode] = {}
        self.nodes: dict[str, QemuNode] = {}
        self.fpbl = build_fpbl()
        self.os = images.build_test_os("bench-os", "RHAAS-TESTOS bench-os")
        self.disk = workdir / "disk.img"
        with open(self.disk, "wb") as f:  # a 64 MB image: a first line the OS shows, then data
            f.write(b"RHAAS-DISK bench\n")
            for _ in range(disk_mb):
                f.write(os.urandom(1 << 20))

    def configure(self, return_path: str) -> None:
        self.config.write_text(
            f'[provisioning]\nenabled = true\nagent_url = "{agent_url(self.server.port)}"\n'
            f'return_path = "{return_path}"\nreturn_timeout = 300\nreboot_timeout = 600\n'
            "tick_seconds = 0.1\nagent_poll_seconds = 0.2\n"
        )

    def start(self) -> None:
        self.configure("fast")
        self.server.start()
        for name in self.names:
            self.fast[name] = FastNode(name, self.workdir, BMC_PASSWORD, self.fpbl.kernel, self.fpbl.initrd,
                                       self.memory, self.disk_size)  # fmt: skip
            self.nodes[name] = self.fast[name].node
        self.admin = Client(self.server.url, "admin", "adminpw")
        self.admin.project.create("bench")
        files = {"kernel": self.os.kernel, "initrd": self.os.initrd, "disk": self.disk}
        digests = {role: self.admin.image.upload(path)["sha256"] for role, path in files.items()}
        self.admin.image.register("bench-os", project="bench", cmdline=self.os.cmdline, **digests)

    def state(self, name: str) -> str:
        return str(self.admin.node.provisioning(name)["state"])

    def boot_fpbl(self, name: str) -> float:
        fast = self.fast[name]
        self.admin.node.register(name, "ipmi", "127.0.0.1", BMC_USER, BMC_PASSWORD, port=fast.port)
        self.admin.node.add_nic(name, "eth0", fast.node.mac)
        enrolled = self.admin.node.enroll_fpbl(name)["cmdline"]
        started = time.monotonic()
        fast.boot_fpbl(f"{self.fpbl.cmdline} {enrolled}")
        wait_for(f"{name} ready", lambda: self.state(name) == "ready", TIMEOUT)
        return time.monotonic() - started

    def provision(self, name: str) -> float:
        node = self.nodes[name]
        self.admin.project.connect("bench", name)
        offset = node.console_offset()
        started = time.monotonic()
        self.admin.node.provision(name, "bench-os")
        node.wait_for_console(self.os.up_regex, TIMEOUT, offset=offset)
        return time.monotonic() - started

    def give_back(self, name: str) -> float:
        started = time.monotonic()
        self.admin.project.detach("bench", name)
        wait_for(f"{name} ready again", lambda: self.state(name) == "ready", TIMEOUT)
        return time.monotonic() - started

    def switch_path(self, return_path: str) -> None:
        self.server.stop()
        self.configure(return_path)
        self.server.start()

    def boots(self) -> dict[str, int]:
        return {n: fast.boots() for n, fast in self.fast.items()}

    def stop(self) -> None:
        if hasattr(self, "admin"):
            self.admin.close()
        for fast in self.fast.values():
            fast.close()
        self.server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", type=int, default=1024, help="MB per node")
    parser.add_argument("--disk-mb", type=int, default=64, help="size of the customer's disk image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {}
    boots: dict[str, list[int]] = {}

    def add(key: str, values: dict[str, float]) -> None:
        samples.setdefault(key, []).extend(values.values())

    with tempfile.TemporaryDirectory(prefix="rb-") as tmp:
        bench = Bench(Path(tmp), args.nodes, args.memory, args.disk_mb)
        try:
            bench.start()
            add("FPBL boot (power on -> ready)", in_parallel(bench.names, bench.boot_fpbl))
            groups = [("1 node", bench.names[:1])]
            if args.nodes > 1:
                groups.append((f"{args.nodes} nodes at once", bench.names))
            for label, names in groups:
                for path in ("fast", "reboot"):
                    bench.switch_path(path)
                    for _ in range(args.rounds):
                        before = bench.boots()
                        add(f"provision, {label}", in_parallel(names, bench.provision))
                        add(f"return by the {path} path, {label}", in_parallel(names, bench.give_back))
                        after = bench.boots()
                        boots.setdefault(f"{path} path", []).extend(after[n] - before[n] for n in names)
        finally:
            bench.stop()

    medians = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    result = {
        "medians_s": medians,
        "samples_s": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "firmware_boots_per_cycle": {k: statistics.median(v) for k, v in boots.items()},
        "nodes": args.nodes,
        "rounds": args.rounds,
        "disk_mb": args.disk_mb,
    }
    one = "1 node"
    fast, reboot = (
        medians.get(f"return by the fast path, {one}"),
        medians.get(f"return by the reboot path, {one}"),
    )
    if fast and reboot:
        result["return_fast_over_reboot"] = round(fast / reboot, 2)
    if args.nodes > 1:
        many = medians[f"provision, {args.nodes} nodes at once"]
        result["provision_parallel_over_one"] = round(many / medians[f"provision, {one}"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'measure':<45} {'median s':>9}   samples")
    for key, value in medians.items():
        print(f"{key:<45} {value:>9.2f}   {result['samples_s'][key]}")
    for key, value in result["firmware_boots_per_cycle"].items():
        print(f"firmware boots per provision+return cycle, {key}: {value:g}")
    for key in ("return_fast_over_reboot", "provision_parallel_over_one"):
        if key in result:
            print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
