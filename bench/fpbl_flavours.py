"""The FPBL's two flavours side by side: their size, and their boot to the agent's first line.

    .venv/bin/python bench/fpbl_flavours.py [--rounds 3] [--memory 1280] [--json]

Builds (or finds in the cache) the ``cloud`` and the ``generic`` FPBL, then boots, one after the other on
a QEMU node (TCG, one vCPU, SeaBIOS, direct kernel boot, a 64 MiB disk):

- cloud on virtio (virtio-net, virtio-blk): what the lab runs;
- generic on the same virtio hardware: the flavour's own cost (a bigger initramfs, coldplug);
- generic on an Intel e1000e NIC and an NVMe disk: a server's kind of devices.

For each: the kernel and initrd bytes, the seconds from QEMU's start to the init's first line and to the
agent's first line (``RHAAS-AGENT``), the kernel's uptime when the init started, and what coldplug
loaded, and the uptime when the init had its NIC (a carrier). Each round boots the three in turn;
times are medians over the rounds. No agent API answers: the agent's first line is where the FPBL is up.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rhaas.lab.qemu import QemuNode
from rhaas.provisioning.fpbl import build_fpbl
from rhaas.provisioning.manifest import Fpbl

TIMEOUT = 300.0
VIRTIO: dict[str, Any] = {"nic_model": "virtio-net-pci", "disk_size": "64M"}


def server_hardware(workdir: Path) -> dict[str, Any]:
    """An e1000e NIC and an NVMe disk instead of virtio."""
    disk = workdir / "nvme.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    drive = ["-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "nvme,drive=d0,serial=bench0"]
    return {"nic_model": "e1000e", "disk_size": None, "extra_args": drive}


def boot(name: str, fpbl: Fpbl, workdir: Path, memory: int, hardware: dict[str, Any]) -> dict[str, Any]:
    """Boot ``fpbl`` once; the figures."""
    append = fpbl.cmdline_for("http://10.0.2.2:9", name, "bench", ip="10.0.2.15/24", gw="10.0.2.2")
    node = QemuNode(name, workdir, memory_mb=memory, user_net=True, kernel=fpbl.kernel, initrd=fpbl.initrd,
                    append=append, **hardware)  # fmt: skip
    try:
        started = time.monotonic()
        node.start()
        init = node.wait_for_console(r"RHAAS-FPBL init .* uptime=([0-9.]+)", TIMEOUT)
        to_init = time.monotonic() - started
        node.wait_for_console(r"^RHAAS-AGENT ", TIMEOUT)
        to_agent = time.monotonic() - started
        text = node.console_text()
    finally:
        node.stop()
    loaded = re.search(r"RHAAS-FPBL coldplug loaded: ([^\n(]*)\(([0-9.]+) s\)", text)
    nic = re.search(r"RHAAS-FPBL nic (\S+) .*uptime=([0-9.]+)", text)
    return {
        "kernel_bytes": fpbl.sizes["kernel"], "initrd_bytes": fpbl.sizes["initrd"],
        "core_bytes": fpbl.sizes["core"],
        "start_to_init_s": round(to_init, 1), "start_to_agent_s": round(to_agent, 1),
        "kernel_uptime_at_init_s": float(init.group(1)),
        "coldplug": loaded.group(1).split() if loaded else None,
        "coldplug_s": float(loaded.group(2)) if loaded else None, "nic": nic.group(1) if nic else None,
        "kernel_uptime_at_nic_s": float(nic.group(2)) if nic else None,
    }  # fmt: skip


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's figures, with every time replaced by the median over ``runs``."""
    out = dict(runs[0])
    for key, value in out.items():
        if key.endswith("_s") and value is not None:
            out[key] = round(statistics.median(r[key] for r in runs), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", type=int, default=1280, help="MiB per node")
    parser.add_argument("--rounds", type=int, default=3, help="boots of each; times are medians")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cloud, generic = build_fpbl(flavour="cloud"), build_fpbl(flavour="generic")
    rounds: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fl") as tmp:
        workdir = Path(tmp)
        runs = (("cloud, virtio", "c", cloud, VIRTIO), ("generic, virtio", "g", generic, VIRTIO),
                ("generic, e1000e + NVMe", "s", generic, server_hardware(workdir)))  # fmt: skip
        for _ in range(args.rounds):
            for label, name, fpbl, hardware in runs:
                rounds.setdefault(label, []).append(boot(name, fpbl, workdir, args.memory, hardware))
    results = {label: _median(runs_of) for label, runs_of in rounds.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    heads = ("kernel B", "initrd B", "-> init s", "-> agent s", "uptime s")
    print(f"{'':24} {heads[0]:>10} {heads[1]:>10} {heads[2]:>9} {heads[3]:>10} {heads[4]:>8}  coldplug")
    for label, r in results.items():
        plug = "(fixed list)" if r["coldplug"] is None else f"{' '.join(r['coldplug'])} ({r['coldplug_s']} s)"
        print(f"{label:24} {r['kernel_bytes']:>10} {r['initrd_bytes']:>10} {r['start_to_init_s']:>9} "
              f"{r['start_to_agent_s']:>10} {r['kernel_uptime_at_init_s']:>8}  {plug}; "
              f"nic {r['nic']} at uptime {r['kernel_uptime_at_nic_s']}")  # fmt: skip


if __name__ == "__main__":
    main()
