"""Driver figures: what one call costs on the real drivers the lab uses.

    .venv/bin/python bench/drivers.py [--rounds 20] [--json]

- **IPMI**: ``power_status`` through the IPMI driver against the lab's virtual BMC (its own process,
  speaking IPMI over UDP on 127.0.0.1, with a fake machine): the first call (it logs in) and the median
  of ``--rounds`` calls on the live session.
- **Open vSwitch** (root, Debian ``openvswitch-switch``): ``set_port`` through the OVS driver on a private
  userspace Open vSwitch in a network namespace of its own, alternating between two states so that
  every call changes the port; median, min and max of ``--rounds`` calls. Skipped, saying why, where it
  cannot run.

The tests check what these drivers do; how fast they do it is measured here. Everything started is
stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ipmi_helpers import BmcProcess  # noqa: E402

from rhaas.drivers.obm.ipmi import IPMIOBM  # noqa: E402
from rhaas.drivers.switch.base import PortState  # noqa: E402
from rhaas.drivers.switch.ovs import OVSSwitch, OVSSwitchSettings  # noqa: E402
from rhaas.lab.ovs import OVSDaemon, find_binary  # noqa: E402


def timed(rounds: int, call: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def summary_ms(samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {
        "median": round(statistics.median(ms), 2),
        "min": round(min(ms), 2),
        "max": round(max(ms), 2),
        "rounds": len(ms),
    }


def ipmi(rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rhaas-bench-bmc-"))
    bmc = BmcProcess(workdir / "bmc.json")
    try:
        bmc.start()
        obm = IPMIOBM(bmc.settings())
        first = timed(1, lambda _i: obm.power_status())
        live = timed(rounds, lambda _i: obm.power_status())
    finally:
        bmc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"first_call_ms": round(first[0] * 1000, 1), "live_session_ms": summary_ms(live)}


def ovs(rounds: int) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root (a network namespace and Open vSwitch)"}
    if find_binary("ovs-vswitchd") is None:
        return {"skipped": "ovs-vswitchd is not installed (openvswitch-switch)"}
    workdir = tempfile.mkdtemp(prefix="rhaas-")  # short: AF_UNIX paths are short
    tag = secrets.token_hex(3)
    daemon = OVSDaemon(workdir, netns=f"rh{tag}sw")
    bridge, port = f"rh{tag}br", f"rh{tag}p0"
    try:
        daemon.start()
        daemon.add_bridge(bridge)
        daemon.vsctl("add-port", bridge, port, "--", "set", "interface", port, "type=internal")
        driver = OVSSwitch(
            "sw-bench", OVSSwitchSettings.model_validate({"bridge": bridge, "db": daemon.db_url})
        )
        tagged = frozenset({"200"})
        samples = timed(rounds, lambda i: driver.set_port(port, PortState(str(100 + i % 2), tagged)))
    finally:
        try:
            daemon.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"set_port_ms": summary_ms(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "command": "python bench/drivers.py " + " ".join(sys.argv[1:]),
        "ipmi_power_status": ipmi(args.rounds),
        "ovs": ovs(args.rounds),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"command: {result['command']}")
    ipmi_result = result["ipmi_power_status"]
    live = ipmi_result["live_session_ms"]
    print(f"IPMI power_status: first call (login) {ipmi_result['first_call_ms']} ms; on the live session")
    print(f"  median {live['median']} ms (min {live['min']}, max {live['max']}) over {live['rounds']}")
    ovs_result = result["ovs"]
    if "skipped" in ovs_result:
        print(f"OVS set_port: skipped: {ovs_result['skipped']}")
    else:
        s = ovs_result["set_port_ms"]
        print(f"OVS set_port: median {s['median']} ms (min {s['min']}, max {s['max']}) over {s['rounds']}")


if __name__ == "__main__":
    main()
