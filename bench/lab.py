"""Lab figures: network boot time of the test OS and IPMI round trips (root).

    .venv/bin/python bench/lab.py [--boots 3] [--rounds 50] [--json]

Brings up a lab with two nodes and a headnode serving the test OS's network boot (in a temporary
directory, torn down at the end), puts n1 and the headnode on one network through the API, and measures:

- power on (the API call ``POST /node/n1/power_on``) → the test OS's marker line on n1's console, after
  firmware, iPXE DHCP, HTTP download of kernel and initrd, and kernel boot; median over ``--boots``
  boots, each from power off;
- ``GET /node/n1/power_status`` through the API (HTTP → rhaas → IPMI over UDP → virtual BMC);
- ``ipmitool -I lanplus ... chassis power status`` against the same BMC (a new process and RMCP+
  session every time).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rhaas.lab.polling import wait_for
from rhaas.lab.site import Lab
from rhaas.procs import cleanup_on_signals


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def wait_marker(console: Path, offset: int, timeout: float = 180.0) -> None:
    pattern = re.compile(r"RHAAS-TESTOS \S+ UP ")

    def marker() -> bool:
        with open(console, "rb") as f:
            f.seek(offset)
            return pattern.search(f.read().decode("latin-1")) is not None

    wait_for(f"the test OS's marker on {console}", marker, timeout, every=0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lab = Lab(tempfile.mkdtemp(prefix="rl-bench-"), say=lambda line: print(f"· {line}", file=sys.stderr))
    try:
        record = lab.up(nodes=2)
        lab.headnode("hn", boot=True)
        creds = lab.credentials()
        n1 = record.nodes[0]
        console = lab.nodes_dir / f"{n1.name}.console.log"
        with lab.client() as api:
            api.project.create("bench")
            api.network.create("benchnet", "bench", "bench", "")
            for node in ("hn", n1.name):
                api.project.connect("bench", node)
                api.wait_networking_action(api.node.connect_network(node, "eth0", "benchnet")["status_id"])
            api.node.enable_obm(n1.name)
            api.node.set_bootdev(n1.name, "pxe")
            boots = []
            for _ in range(args.boots):
                offset = console.stat().st_size if console.exists() else 0
                started = time.perf_counter()
                api.node.power_on(n1.name)
                wait_marker(console, offset)
                boots.append(time.perf_counter() - started)
                api.node.power_off(n1.name)
            api_status = timed(args.rounds, lambda: api.node.power_status(n1.name))
        ipmitool = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(n1.bmc_port)]
        ipmitool += ["-U", creds["bmc_user"], "-P", creds["bmc_password"], "chassis", "power", "status"]
        tool_status = timed(
            args.rounds, lambda: subprocess.run(ipmitool, check=True, capture_output=True, timeout=30)
        )
    finally:
        lab.down()
    result: dict[str, Any] = {
        "command": "python bench/lab.py " + " ".join(sys.argv[1:]),
        "boot_power_on_to_marker_s": {
            "median": round(statistics.median(boots), 2),
            "samples": [round(b, 2) for b in boots],
        },
        "power_status_api_ms": {"median": median_ms(api_status), "rounds": args.rounds},
        "power_status_ipmitool_ms": {"median": median_ms(tool_status), "rounds": args.rounds},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"command: {result['command']}")
    boot = result["boot_power_on_to_marker_s"]
    print(f"power on (API) -> test OS marker, network boot: median {boot['median']} s of {boot['samples']}")
    print(f"power status through the rhaas API: median {median_ms(api_status)} ms over {args.rounds}")
    print(f"power status with ipmitool (new process + session): median {median_ms(tool_status)} ms")


def timed(n: int, call: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


if __name__ == "__main__":
    with cleanup_on_signals():  # a kill stops the lab too
        main()
