"""Fast provisioning figures on the lab: provision and return by the fast path and by the reboot path (root).

    .venv/bin/python bench/provision.py [--nodes 4] [--rounds 2] [--memory 1024] [--disk-mb 64] [--json]
    .venv/bin/python bench/provision.py --nodes 1 --rounds 1 --post 0 --post 60     # a server's POST
    .venv/bin/python bench/provision.py --image debian [--nodes 2] [--rounds 1]   # bench/real_os.py

The lab's QEMU nodes (TCG) sit behind Open vSwitch with virtual BMCs speaking IPMI, under the lab's base
instance; a reseller's recursive instance with fast provisioning holds them, and its boot service in a
headnode serves DHCP, iPXE scripts and the FPBL on its provisioning network (`rhaas.lab.reseller`), as
in ``rhaas demo``. On the same nodes, in one run:

- **network boot**: enrol → ready (boot from the network, power cycle over IPMI, iPXE, the FPBL over
  HTTP, the agent's check-in): what a provision by the reboot path pays on top of the deploy itself;
- **provision**: ``POST /node/<n>/provision`` → the customer OS's marker line on the node's console
  (download kernel, initrd and a ``--disk-mb`` disk image, verify, write the disk, kexec; the NIC moves
  to the customer's network when the OS is up);
- **return, fast path**: ``detach_node`` → the node is ready again (the NIC back on the provisioning
  network, NMI over IPMI through the base, the return FPBL wipes the disk's metadata, reads it back and
  reports the node ready; the next provision starts from that return FPBL);
- **return, reboot path**: the same with ``[provisioning] return_path = "reboot"`` (power cycle, network
  boot, FPBL, wipe, check-in): the reseller is restarted between the two, on the same database and nodes;
- firmware boots per cycle, from the BMCs' own counters;
- with ``--post S`` (repeatable): one node's return by each path again with every firmware boot held S
  seconds, as a server's power-on self test holds it (``rhaas lab up --post``), side by side in the run;
- every phase once with one node alone, then with all ``--nodes`` nodes at once;
- per-phase medians of the fast path, from the jobs' phase records (`phase_times`);
- the return's wipe per policy (``full``, the default; ``discard``; ``metadata``, the opt-in), one
  fast return of one node each: seconds of the wipe and of its read-back, and seconds per GiB of the
  node's disk (`wipe_figures`). The lab's disks are qcow2 with ``discard=unmap``: a write-zeroes or a
  discard is done by QEMU's block layer without the data crossing the virtual bus.
"""

from __future__ import annotations

import argparse
import datetime as dt  # noqa: F401 - tests/test_bench_provision.py makes its times with it
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rhaas.lab import images
from rhaas.lab.polling import in_parallel, wait_for
from rhaas.lab.reseller import Reseller, start_reseller
from rhaas.lab.site import Lab
from rhaas.procs import cleanup_on_signals
from rhaas.provisioning.fpbl import build_fpbl, export
from rhaas.provisioning.phases import phase_durations

TIMEOUT = 600.0
HEADNODE, HEAD_IP = "head", "10.0.0.1/24"


def phase_times(job: dict[str, Any], end: float | None = None, last: str = "") -> dict[str, float]:
    """Seconds per phase of one provisioning job, named ``<kind>: <phase>`` (see
    `rhaas.provisioning.phases.phase_durations`, which the demo uses too)."""
    return {f"{job['kind']}: {name}": s for name, s in phase_durations(job, end, last).items()}


WIPE_POLICIES = ("full", "discard", "metadata")
_WIPED = re.compile(r": (\d+) bytes ")


def wipe_figures(job: dict[str, Any]) -> dict[str, float]:
    """A return job's wipe: seconds wiping and reading back (start to done of each phase, summed over
    the node's disks) and the bytes the wipe reports it zeroed."""
    seconds = {"wipe": 0.0, "verify-wipe": 0.0}
    started: dict[str, float] = {}
    wiped = 0
    for record in job["phases"]:
        phase, state = record["phase"], record["state"]
        if phase not in seconds:
            continue
        if state == "start" and "progress" not in record:
            started[phase] = record["at"]
        elif state == "done" and phase in started:
            seconds[phase] += record["at"] - started.pop(phase)
            found = _WIPED.search(record.get("detail", ""))
            if phase == "wipe" and found:
                wiped += int(found.group(1))
    return {"wipe_s": seconds["wipe"], "verify_s": seconds["verify-wipe"], "bytes": float(wiped)}


class Bench:
    """The lab (``nodes`` QEMU nodes behind Open vSwitch, IPMI BMCs, the base instance) and a reseller's
    recursive instance with fast provisioning and its boot service in a headnode."""

    def __init__(self, workdir: Path, count: int, memory: int, disk_mb: int) -> None:
        self.workdir, self.count, self.memory = workdir, count, memory
        self.lab = Lab(workdir / "lab")
        self.fpbl = build_fpbl()
        export(self.fpbl, workdir / "fpbl")
        self.os = images.build_test_os("bench-os", "RHAAS-TESTOS bench-os")
        self.disk = workdir / "disk.img"
        with open(self.disk, "wb") as f:  # a first line the OS shows, then data that does not compress
            f.write(b"RHAAS-DISK bench\n")
            for _ in range(disk_mb):
                f.write(os.urandom(1 << 20))
        self.reseller: Reseller | None = None
        #: Per-phase seconds of every fast-path job, by phase (see `phase_times`).
        self.phases: dict[str, list[float]] = {}
        self.record_phases = False

    def start(self) -> None:
        self.lab.up(self.count, self.memory)
        self.lab.headnode(HEADNODE, HEAD_IP)
        self.consoles = {n["node"]: Path(n["console"]) for n in self.lab.status()["nodes"]}
        self.reseller = start_reseller(self.lab, HEADNODE, self.workdir / "fpbl", reboot_timeout=600)
        self.admin = self.reseller.admin
        self.names = self.admin.pool.grow(self.count)
        self.admin.project.create("bench")
        files = {"kernel": self.os.kernel, "initrd": self.os.initrd, "disk": self.disk}
        digests = {role: self.admin.image.upload(path)["sha256"] for role, path in files.items()}
        self.admin.image.register("bench-os", project="bench", cmdline=self.os.cmdline, **digests)

    def state(self, name: str) -> str:
        return str(self.admin.node.provisioning(name)["state"])

    def network_boot(self, name: str) -> float:
        """Enrol: boot from the network, power cycle, iPXE, the FPBL over HTTP, the agent's check-in."""
        started = time.monotonic()
        self.admin.node.enroll_fpbl(name)
        wait_for(f"{name} ready", lambda: self.state(name) == "ready", TIMEOUT)
        return time.monotonic() - started

    def provision(self, name: str) -> float:
        self.admin.project.connect("bench", name)
        console = self.consoles[name]
        offset = console.stat().st_size
        started = time.monotonic()
        self.admin.node.provision(name, "bench-os")
        marker = f"{self.os.marker} UP".encode()
        wait_for(f"the OS on {name}", lambda: marker in console.read_bytes()[offset:], TIMEOUT, every=0.1)
        seconds = time.monotonic() - started
        self._phases(name, "deploy", time.time(), "kexec -> customer OS up")
        return seconds

    def give_back(self, name: str) -> float:
        started = time.monotonic()
        self.admin.project.detach("bench", name)
        wait_for(f"{name} ready again", lambda: self.state(name) == "ready", TIMEOUT, every=0.1)
        seconds = time.monotonic() - started
        self._phases(name, "return")
        return seconds

    def _phases(self, name: str, kind: str, end: float | None = None, last: str = "") -> None:
        if not self.record_phases:
            return
        job = [j for j in self.admin.node.provisioning(name)["jobs"] if j["kind"] == kind][-1]
        for phase, seconds in phase_times(job, end, last).items():
            self.phases.setdefault(phase, []).append(seconds)

    def switch_path(self, return_path: str, **settings: object) -> None:
        assert self.reseller is not None
        self.reseller.restart(return_path=return_path, **settings)

    def wipe_by(self, name: str, policy: str) -> dict[str, float]:
        """One provision and fast return of ``name`` with ``policy``; that return's `wipe_figures`."""
        self.switch_path("fast", wipe_policy=policy)
        self.provision(name)
        self.give_back(name)
        job = [j for j in self.admin.node.provisioning(name)["jobs"] if j["kind"] == "return"][-1]
        return wipe_figures(job)

    def boots(self) -> dict[str, int]:
        return {n["node"]: n["firmware_boots"] for n in self.lab.status()["nodes"]}

    def stop(self) -> None:
        if self.reseller is not None:
            self.reseller.stop()
        self.lab.down()


def main(argv: list[str] | None = None) -> int:
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--image", choices=["testos", "debian"], default="testos")
    chosen, rest = pick.parse_known_args(sys.argv[1:] if argv is None else argv)
    if chosen.image == "debian":  # a real distribution's whole-disk image: bench/real_os.py
        from real_os import main as real_os  # bench/ is on sys.path: this file runs as a script

        return real_os(rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", type=int, default=1024, help="MB per node")
    parser.add_argument("--disk-mb", type=int, default=64, help="size of the customer's disk image")
    parser.add_argument("--post", type=float, action="append", default=[], metavar="SECONDS",
                        help="also return one node by each path with every firmware boot held this long "
                        "(repeatable)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--image", choices=["testos"], default="testos", help="debian: bench/real_os.py")
    args = parser.parse_args(rest)
    if any(not 0 <= p <= 600 for p in args.post):
        parser.error("--post must be between 0 and 600 seconds")
    samples: dict[str, list[float]] = {}
    boots: dict[str, list[int]] = {}

    def add(key: str, values: dict[str, float]) -> None:
        samples.setdefault(key, []).extend(values.values())

    with tempfile.TemporaryDirectory(prefix="rb-") as tmp:
        bench = Bench(Path(tmp), args.nodes, args.memory, args.disk_mb)
        try:
            bench.start()
            add("network boot to the FPBL (enrol -> ready)", in_parallel(bench.names, bench.network_boot))
            groups = [("1 node", bench.names[:1])]
            if args.nodes > 1:
                groups.append((f"{args.nodes} nodes at once", bench.names))
            for label, names in groups:
                for path in ("fast", "reboot"):
                    bench.switch_path(path)
                    bench.record_phases = path == "fast" and label == "1 node"
                    for _ in range(args.rounds):
                        before = bench.boots()
                        add(f"provision, {label}", in_parallel(names, bench.provision))
                        add(f"return by the {path} path, {label}", in_parallel(names, bench.give_back))
                        after = bench.boots()
                        boots.setdefault(f"{path} path", []).extend(after[n] - before[n] for n in names)
            wipes = {policy: bench.wipe_by(bench.names[0], policy) for policy in WIPE_POLICIES}
            bench.record_phases = False
            for post in args.post:
                bench.lab.set_post(post)
                for path in ("fast", "reboot"):
                    bench.switch_path(path)
                    before = bench.boots()
                    add(f"provision, POST {post:g} s", {"1": bench.provision(bench.names[0])})
                    add(f"return by the {path} path, POST {post:g} s", {"1": bench.give_back(bench.names[0])})
                    boots.setdefault(f"{path} path, POST {post:g} s", []).append(
                        bench.boots()[bench.names[0]] - before[bench.names[0]]
                    )
        finally:
            bench.stop()

    medians = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    result = {
        "medians_s": medians,
        "samples_s": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "firmware_boots_per_cycle": {k: statistics.median(v) for k, v in boots.items()},
        "phase_medians_s": {k: round(statistics.median(v), 2) for k, v in bench.phases.items()},
        "nodes": args.nodes,
        "rounds": args.rounds,
        "disk_mb": args.disk_mb,
        "wipe_by_policy": wipe_table(wipes),
    }
    one = "1 node"
    fast, reboot = (
        medians.get(f"return by the fast path, {one}"),
        medians.get(f"return by the reboot path, {one}"),
    )
    if fast and reboot:
        result["return_fast_over_reboot"] = round(fast / reboot, 2)
    for post in args.post:
        fast_p = medians[f"return by the fast path, POST {post:g} s"]
        reboot_p = medians[f"return by the reboot path, POST {post:g} s"]
        result[f"return_fast_over_reboot_post_{post:g}s"] = round(fast_p / reboot_p, 2)
    if args.nodes > 1:
        many = medians[f"provision, {args.nodes} nodes at once"]
        result["provision_parallel_over_one"] = round(many / medians[f"provision, {one}"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'measure':<45} {'median s':>9}   samples")
    for key, value in medians.items():
        print(f"{key:<45} {value:>9.2f}   {result['samples_s'][key]}")
    print(f"\n{'phase (fast path, 1 node)':<45} {'median s':>9}")
    for key, value in result["phase_medians_s"].items():
        print(f"{key:<45} {value:>9.2f}")
    print()
    for key, value in result["firmware_boots_per_cycle"].items():
        print(f"firmware boots per provision+return cycle, {key}: {value:g}")
    print(f"\n{'wipe policy':<12} {'wipe s':>8} {'verify s':>9} {'s per GiB':>10}   zeroed")
    for policy, row in result["wipe_by_policy"].items():
        print(f"{policy:<12} {row['wipe_s']:>8.2f} {row['verify_s']:>9.2f} {row['s_per_gib']:>10.3f}   "
              f"{row['zeroed_gib']:.3f} GiB of a {row['disk_gib']:.2f} GiB disk")  # fmt: skip
    for key in (
        "return_fast_over_reboot",
        "provision_parallel_over_one",
        *(f"return_fast_over_reboot_post_{post:g}s" for post in args.post),
    ):
        if key in result:
            print(f"{key}: {result[key]}")
    return 0


def wipe_table(wipes: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per policy: seconds, and seconds per GiB of the disk (its size is what a full wipe zeroed)."""
    disk = max((w["bytes"] for w in wipes.values()), default=0.0) / (1 << 30)
    return {
        policy: {
            "wipe_s": round(w["wipe_s"], 2),
            "verify_s": round(w["verify_s"], 2),
            "s_per_gib": round(w["wipe_s"] / disk, 3) if disk else 0.0,
            "zeroed_gib": round(w["bytes"] / (1 << 30), 3),
            "disk_gib": round(disk, 2),
        }
        for policy, w in wipes.items()
    }


if __name__ == "__main__":
    with cleanup_on_signals():  # a kill stops the lab too
        sys.exit(main())
