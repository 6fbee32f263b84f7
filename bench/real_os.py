"""Fast provisioning of a real distribution on the lab, against the same image booted straight from its disk.

    .venv/bin/python bench/provision.py --image debian [--nodes 2] [--rounds 1] [--memory 1536] \
        [--cpu qemu64|max] [--json]

The lab's QEMU nodes (TCG, one vCPU) under the base instance; a reseller's recursive instance with fast
provisioning holds them (`rhaas.lab.reseller`). The image is the lab's Debian 12 whole-disk image
(`rhaas lab image build debian`), registered as it comes. The customer's own machine (`rhaas.lab.desk`)
sits on the customer's VLAN: its DHCP server answers cloud-init, and it logs in over SSH. In one run:

- **register**: the image read, cut into chunks, uploaded (holes neither sent nor stored);
- **provision → SSH answers**: ``POST /node/<n>/provision`` with an SSH key → the node lets the key in
  (chunks fetched over the agents' TLS, written and checked, the image's GRUB entry found, the NoCloud
  seed written, kexec, the Debian first boot with cloud-init and DHCP), one node alone, then all at once;
- **straight from its disk → SSH answers**: the same image, on a node of the same shape (memory, one
  vCPU, virtio), booted by QEMU from a copy of its disk with the same key in a NoCloud seed and no rhaas
  at all (`rhaas.lab.straight`): the baseline; provision / straight is the ratio the goal is about;
- **return → ready** by the fast path (NMI, wipe, verified) and by the reboot path (power cycle, network
  boot, wipe), and firmware boots per cycle from the BMCs' counters;
- **bytes sent against the virtual size**: what a deploy fetched (the image's data) and the disk it
  fills;
- **deployed from**: per round, the FPBL the deploy started in (round 1 the full FPBL, later rounds the
  return FPBL the round before left), and why it booted the full FPBL first where it did (memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rhaas.client import Client
from rhaas.lab import distro
from rhaas.lab.desk import Desk, keypair, put_on
from rhaas.lab.polling import in_parallel, wait_for
from rhaas.lab.reseller import Reseller, start_reseller
from rhaas.lab.site import Lab
from rhaas.lab.straight import Straight
from rhaas.provisioning.fpbl import build_fpbl, export
from rhaas.provisioning.phases import phase_durations

TIMEOUT = 1500.0  # TCG: a Debian first boot, on up to four nodes sharing two cores
HEADNODE, HEAD_IP, DESK, DESK_IP = "head", "10.0.0.1/24", "desk", "10.0.1.1/24"
NETWORK, PROJECT, IMAGE = "bnet", "bench", "debian12"


class RealOsBench:
    def __init__(self, workdir: Path, count: int, memory: int, cpu: str = "qemu64") -> None:
        self.workdir, self.count, self.memory, self.cpu = workdir, count, memory, cpu
        self.lab = Lab(workdir / "lab")
        export(build_fpbl(), workdir / "fpbl")
        self.image = distro.build_debian("bookworm")
        self.key, self.pub = keypair(workdir, "bench")
        self.reseller: Reseller | None = None
        self.desk: Desk | None = None
        self.figures: dict[str, float] = {}

    def start(self) -> None:
        self.lab.up(self.count, self.memory, cpu=self.cpu)
        self.lab.headnode(HEADNODE, HEAD_IP)
        self.lab.headnode(DESK, DESK_IP)
        self.reseller = start_reseller(self.lab, HEADNODE, self.workdir / "fpbl", return_timeout=90,
                                       reboot_timeout=900)  # fmt: skip
        self.base: Client = self.lab.client()
        self.base.project.connect("reseller", DESK)
        self.admin = self.reseller.admin
        self.names = sorted(self.admin.pool.grow(self.count))
        self.admin.project.create(PROJECT)
        started = time.monotonic()
        shown = self.admin.image.register_disk(IMAGE, self.image.disk, project=PROJECT)
        self.figures["register_s"] = time.monotonic() - started
        disk = shown.get("disk") or self.admin.image.show(IMAGE)["disk"]
        self.figures["virtual_bytes"] = float(disk["virtual_size"])
        self.figures["stored_bytes"] = float(disk["stored_bytes"])
        self.admin.network.create(NETWORK, PROJECT, PROJECT, "")
        put_on(self.base, DESK, "reseller", self.admin.network.show(NETWORK)["channels"][1].split("/")[1])
        status = self.lab.status()
        macs = {n["node"]: n["mac"] for n in status["nodes"]}
        desk_ns = next(h["netns"] for h in status["headnodes"] if h["headnode"] == DESK)
        self.desk = Desk(
            desk_ns, self.workdir, {n: (macs[n], f"10.0.1.{11 + i}") for i, n in enumerate(self.names)}
        )

    def state(self, name: str) -> str:
        return str(self.admin.node.provisioning(name)["state"])

    def network_boot(self, name: str) -> float:
        started = time.monotonic()
        self.admin.node.enroll_fpbl(name)
        wait_for(f"{name} ready", lambda: self.state(name) == "ready", TIMEOUT)
        return time.monotonic() - started

    def provision(self, name: str) -> float:
        """Request → the node lets the key in over SSH, from the customer's machine."""
        assert self.desk is not None
        self.admin.project.connect(PROJECT, name)
        self.admin.wait_networking_action(self.admin.node.connect_network(name, "eth0", NETWORK)["status_id"])
        started = time.monotonic()
        self.admin.node.provision(name, IMAGE, ssh_keys=[self.pub.read_text()])
        desk = self.desk
        wait_for(f"SSH to {name}", lambda: desk.logged_in(self.key, name) == name, TIMEOUT, every=1)
        return time.monotonic() - started

    def give_back(self, name: str) -> float:
        started = time.monotonic()
        self.admin.wait_networking_action(self.admin.node.detach_network(name, "eth0", NETWORK)["status_id"])
        self.admin.project.detach(PROJECT, name)
        wait_for(f"{name} ready again", lambda: self.state(name) == "ready", TIMEOUT, every=0.2)
        return time.monotonic() - started

    def straight(self, index: int) -> float:
        """The same image booted by QEMU from a copy of its disk, same node shape, no rhaas → SSH."""
        node = Straight(self.image.disk, self.workdir / f"straight{index}", self.memory, self.key,
                        self.pub.read_text(), self.cpu)  # fmt: skip
        try:
            wait_for("SSH straight from the disk", node.answers, TIMEOUT, every=1)
            return time.monotonic() - node.started
        finally:
            node.stop()

    def last_deploy(self, name: str) -> dict[str, Any]:
        """The node's last deploy job, with its phases."""
        return [j for j in self.admin.node.provisioning(name)["jobs"] if j["kind"] == "deploy"][-1]

    def sent_bytes(self, name: str) -> float:
        """What the node's last deploy wrote (the image's data: every byte of it was fetched once)."""
        deploy = self.last_deploy(name)
        detail = next(
            p["detail"] for p in deploy["phases"] if p["phase"] == "write-disk" and p["state"] == "done"
        )
        return float(detail.split()[0])

    def phases(self, name: str) -> dict[str, float]:
        """Seconds of each phase of the node's last deploy (`phase_durations`, as bench/provision.py and the
        demo count them), and the agent's whole part: its first report to its last (the node's clock)."""
        deploy = self.last_deploy(name)
        seconds = {f"deploy phase {phase}": s for phase, s in phase_durations(deploy).items()}
        ats = [p["at"] for p in deploy["phases"]]
        seconds["deploy in the agent (first report to last)"] = max(ats) - min(ats)
        return seconds

    def restored(self, name: str) -> str | None:
        """Why the node's last deploy booted the full FPBL first (the return FPBL's memory), or None."""
        deploy = self.last_deploy(name)
        starts = (p for p in deploy["phases"] if p["phase"] == "restore-memory" and p["state"] == "start")
        return next((str(p["detail"]) for p in starts), None)

    def boots(self) -> dict[str, int]:
        return {n["node"]: n["firmware_boots"] for n in self.lab.status()["nodes"]}

    def stop(self) -> None:
        if self.desk is not None:
            self.desk.stop()
        if self.reseller is not None:
            self.reseller.stop()
        self.lab.down()


def run(nodes: int, rounds: int, memory: int, cpu: str = "qemu64") -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    boots: dict[str, list[int]] = {}
    deployed_from: list[str] = []

    def add(key: str, values: dict[str, float]) -> None:
        samples.setdefault(key, []).extend(values.values())

    with tempfile.TemporaryDirectory(prefix="rb-") as tmp:
        bench = RealOsBench(Path(tmp), nodes, memory, cpu)
        try:
            bench.start()
            one = bench.names[:1]
            add("network boot to the FPBL (enrol -> ready)", in_parallel(bench.names, bench.network_boot))
            for r in range(rounds):  # side by side: rhaas's fast path, then the image straight from its disk
                before = bench.boots()
                add("provision -> SSH answers, 1 node", in_parallel(one, bench.provision))
                sent = bench.sent_bytes(one[0])
                for key, value in bench.phases(one[0]).items():
                    add(key, {"1": value})
                line = f"round {r + 1}: " + ("the full FPBL" if r == 0 else "the return FPBL")
                why = bench.restored(one[0])
                deployed_from.append(line + (f", which booted the full FPBL first ({why})" if why else ""))
                add("return by the fast path, 1 node", in_parallel(one, bench.give_back))
                boots.setdefault("fast path", []).extend(bench.boots()[n] - before[n] for n in one)
                add("straight from its disk -> SSH answers, 1 node", {"straight": bench.straight(r)})
            if nodes > 1:
                add(
                    f"provision -> SSH answers, {nodes} nodes at once",
                    in_parallel(bench.names, bench.provision),
                )
                add(
                    f"return by the fast path, {nodes} nodes at once",
                    in_parallel(bench.names, bench.give_back),
                )
            assert bench.reseller is not None
            bench.reseller.restart(return_path="reboot")
            for _ in range(rounds):
                before = bench.boots()
                in_parallel(one, bench.provision)
                add("return by the reboot path, 1 node", in_parallel(one, bench.give_back))
                boots.setdefault("reboot path", []).extend(bench.boots()[n] - before[n] for n in one)
        finally:
            bench.stop()
    medians = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    figures = bench.figures
    result: dict[str, Any] = {
        "image": f"{bench.image.release} ({bench.image.kernel_release})",
        "medians_s": medians,
        "deployed_from": deployed_from,
        "samples_s": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "firmware_boots_per_cycle": {k: statistics.median(v) for k, v in boots.items()},
        "register_s": round(figures["register_s"], 1),
        "bytes_sent_per_deploy": int(sent),
        "virtual_bytes": int(figures["virtual_bytes"]),
        "sent_over_virtual": round(sent / figures["virtual_bytes"], 3),
        "nodes": nodes,
        "rounds": rounds,
        "memory_mb": memory,
        "cpu": cpu,
    }
    provision = medians["provision -> SSH answers, 1 node"]
    result["provision_over_straight"] = round(
        provision / medians["straight from its disk -> SSH answers, 1 node"], 2
    )
    result["provision_reboot_path_s"] = round(
        provision + medians["network boot to the FPBL (enrol -> ready)"], 1
    )
    result["return_fast_over_reboot"] = round(
        medians["return by the fast path, 1 node"] / medians["return by the reboot path, 1 node"], 2
    )
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", choices=["debian"], default="debian")
    parser.add_argument("--nodes", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--memory", type=int, default=1536, help="MB per node (and for the straight boot)")
    parser.add_argument("--cpu", choices=["qemu64", "max"], default="qemu64",
                        help="the vCPU of the nodes and of the straight boot (max: AES-NI...)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.nodes, args.rounds, args.memory, args.cpu)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"image: {result['image']}; vCPU {result['cpu']}; register {result['register_s']} s")
    print(f"{'measure':<50} {'median s':>9}   samples")
    for key, value in result["medians_s"].items():
        print(f"{key:<50} {value:>9.1f}   {result['samples_s'][key]}")
    reboot = result["provision_reboot_path_s"]
    print(f"provision by the reboot path (network boot + the same deploy): {reboot} s")
    for line in result["deployed_from"]:
        print(f"deployed from {line}")
    for key, value in result["firmware_boots_per_cycle"].items():
        print(f"firmware boots per provision+return cycle, {key}: {value:g}")
    sent, virtual = result["bytes_sent_per_deploy"], result["virtual_bytes"]
    print(f"bytes sent per deploy {sent} of a {virtual}-byte image ({result['sent_over_virtual']:.1%})")
    for key in ("provision_over_straight", "return_fast_over_reboot"):
        print(f"{key}: {result[key]}")
    return 0
