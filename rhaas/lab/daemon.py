"""The virtual BMC of one lab node, driving that node's QEMU: ``python -m rhaas.lab.daemon``.

``rhaas lab up`` starts one of these, detached, per node (pyghmi's I/O machinery is process-global, so
one BMC per process). It serves IPMI on ``127.0.0.1:<port>`` (UDP), or Redfish over HTTP there (TCP) with
``--protocol redfish`` (`rhaas.lab.redfish`); power on starts the node's QEMU (inside
the lab switch's network namespace, where the node's tap is), power off kills it. The QEMU process is
not a child that dies with the BMC: stopping or killing this daemon leaves a running node running, and
a new daemon finds it again by its pidfile. The BMC password comes from ``$RHAAS_LAB_BMC_PASSWORD``,
not the command line, which every local user can read.

This module is lab equipment: it knows nothing of rhaas's database or API.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rhaas.lab.qemu import CPU_MODELS, PROFILES, QemuNode
from rhaas.lab.vbmc import VirtualBMC, serve_until_signalled

PASSWORD_ENV = "RHAAS_LAB_BMC_PASSWORD"


class NetnsQemuNode(QemuNode):
    """A `QemuNode` whose QEMU runs inside network namespace ``netns`` (None: where we run).

    ``ip netns exec`` execs QEMU in place, so the PID, the pidfile and QMP are QEMU's own. With
    ``append_file``, a direct kernel boot reads its command line from that file at every start, so
    whoever boots the node can change it between boots (a fast-provisioning node's FPBL settings).
    """

    def __init__(
        self,
        name: str,
        workdir: Path | str,
        *,
        netns: str | None = None,
        append_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, workdir, **kwargs)
        self.netns = netns
        self.append_file = append_file

    def start(self, timeout: float = 30.0) -> None:
        if self.append_file is not None:
            self.append = self.append_file.read_text().strip()
        super().start(timeout)

    def command(self) -> list[str]:
        cmd = super().command()
        if self.netns is None:
            return cmd
        ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"
        return [ip, "netns", "exec", self.netns, *cmd]


def state_file(nodes_dir: Path, node: str) -> Path:
    """Where the BMC of ``node`` publishes its `rhaas.lab.vbmc.BMCState`."""
    return nodes_dir / f"{node}.bmc.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rhaas.lab.daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the node's directory (nodes/ of a lab)")
    parser.add_argument("--node", required=True)
    parser.add_argument("--port", type=int, required=True,
                        help="port of the BMC on 127.0.0.1 (UDP for IPMI, TCP for Redfish)")  # fmt: skip
    parser.add_argument("--protocol", choices=["ipmi", "redfish"], default="ipmi",
                        help="what the BMC speaks: IPMI over LAN, or Redfish over HTTP")  # fmt: skip
    parser.add_argument("--user", required=True)
    parser.add_argument("--mac", required=True)
    net = parser.add_mutually_exclusive_group(required=True)
    net.add_argument("--tap", help="the node's NIC is this tap device (on the lab's switch)")
    net.add_argument("--user-net", action="store_true", help="the NIC is on QEMU's user-mode network")
    parser.add_argument("--ssh-port", type=int, default=None,
                        help="with --user-net: forward 127.0.0.1:PORT to the guest's SSH port")  # fmt: skip
    parser.add_argument("--netns", help="network namespace holding the tap")
    parser.add_argument("--memory", type=int, default=1024, help="MB")
    parser.add_argument("--disk-size", default="4G")
    parser.add_argument("--profile", default="virtio", choices=sorted(PROFILES), help="the node's hardware")
    parser.add_argument(
        "--post-seconds", type=float, default=0.0, help="firmware hold at every firmware boot"
    )
    parser.add_argument("--cpu", default="qemu64", choices=CPU_MODELS, help="the vCPU model")
    parser.add_argument(
        "--kernel", type=Path, help="boot this kernel directly instead of the firmware's order"
    )
    parser.add_argument("--initrd", type=Path)
    parser.add_argument(
        "--append-file", type=Path, help="the direct boot's command line, read at each power on"
    )
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"set {PASSWORD_ENV}")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s bmc {args.node} %(message)s")
    node = NetnsQemuNode(
        args.node, args.workdir, netns=args.netns, memory_mb=args.memory, mac=args.mac, tap=args.tap,
        user_net=args.user_net, ssh_port=args.ssh_port, disk_size=args.disk_size, kernel=args.kernel,
        initrd=args.initrd, append_file=args.append_file, profile=args.profile,
        post_seconds=args.post_seconds, cpu=args.cpu,
    )  # fmt: skip
    if args.protocol == "redfish":
        from rhaas.lab import redfish

        redfish_bmc = redfish.RedfishBMC(
            node,  # type: ignore[arg-type]
            port=args.port,
            user=args.user,
            password=password,
            state_file=state_file(args.workdir, args.node),
        )
        redfish.serve_until_signalled(redfish_bmc)
        return 0
    bmc = VirtualBMC(
        # QemuNode types its boot device as a Literal and checks it at run time; Machine says str.
        node,  # type: ignore[arg-type]
        port=args.port,
        user=args.user,
        password=password,
        state_file=state_file(args.workdir, args.node),
        console_log=node.console_log,
    )
    serve_until_signalled(bmc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
