"""A customer's own machine on the lab: a headnode's namespace on the customer's VLAN, with a DHCP server
for the customer's nodes (cloud-init asks for DHCP on the NIC the customer connected) and SSH into them.

The namespace is a lab headnode (`rhaas.lab.site.Lab.headnode`); the base's operator puts its port on
the customer's network (`put_on`), as the customer's own gear would be cabled. The DHCP server
(dnsmasq, no DNS) hands each node a fixed address by its MAC; it is ended by its PID (`stop`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from rhaas.client import Client

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]  # fmt: skip
#: The desk's interface in its namespace (the lab's headnodes have one NIC).
NIC = "eth0"


def keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """A new ed25519 SSH key pair in ``directory``: (private key, public key file)."""
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, directory / f"{name}.pub"


class Desk:
    """DHCP and SSH from the headnode namespace ``netns`` to nodes at fixed addresses (``ips``: node →
    (MAC, address)); ``user`` is the images' default user."""

    def __init__(
        self, netns: str, workdir: Path, ips: dict[str, tuple[str, str]], user: str = "debian"
    ) -> None:
        self.netns, self.user = netns, user
        self.addresses = {node: ip for node, (_mac, ip) in ips.items()}
        first = sorted(self.addresses.values())[0].rsplit(".", 1)[0]
        hosts = [f"--dhcp-host={mac},{ip}" for mac, ip in ips.values()]
        self.dhcp = subprocess.Popen(
            ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--bind-interfaces", f"--interface={NIC}",
             f"--dhcp-range={first}.100,{first}.150,1h",
             f"--dhcp-leasefile={workdir / f'{netns}.leases'}", *hosts],
            stdout=subprocess.DEVNULL, stderr=(workdir / f"{netns}.dhcp.log").open("w"),
        )  # fmt: skip

    def ssh(
        self, key: Path, node: str, command: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``node`` as the image's user with ``key`` (exit 255: not let in)."""
        argv = ["ip", "netns", "exec", self.netns, "ssh", "-i", str(key), *SSH_OPTIONS]
        return subprocess.run(
            [*argv, f"{self.user}@{self.addresses[node]}", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def logged_in(self, key: Path, node: str) -> str | None:
        """The node's hostname over SSH with ``key``, or None while it does not let us in."""
        try:
            done = self.ssh(key, node, "hostname")
        except subprocess.TimeoutExpired:
            return None
        return done.stdout.strip() or None

    def stop(self) -> None:
        """End the DHCP server, by its PID."""
        self.dhcp.terminate()
        try:
            self.dhcp.wait(10)
        except subprocess.TimeoutExpired:
            self.dhcp.kill()
            self.dhcp.wait(10)


def put_on(base: Client, desk: str, owner: str, vlan: str, away_from: str | None = None) -> str:
    """At the base (as its operator): connect the desk headnode's port to the network of project
    ``owner`` that carries VLAN ``vlan`` (a recursive instance's customer network is one such network),
    leaving ``away_from`` first; returns that network's name at the base."""
    net = next(n for n in base.project.networks_in(owner)
               if base.network.show(n)["channels"][1] == f"vlan/{vlan}")  # fmt: skip
    if away_from is not None:
        base.wait_networking_action(base.node.detach_network(desk, NIC, away_from)["status_id"])
    base.wait_networking_action(base.node.connect_network(desk, NIC, net)["status_id"])
    return net
