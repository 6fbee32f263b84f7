"""Network boot of the lab's test OS from a headnode: dnsmasq (DHCP) and an HTTP server in its namespace.

QEMU's NIC ROM (Debian ``ipxe-qemu``) is iPXE, which does DHCP and fetches the boot file over HTTP when
the DHCP filename is an ``http://`` URL, so no TFTP is needed (dnsmasq also sends IPv6 router
advertisements, which cut iPXE's network configuration from ~16 s to ~3 s):

    node firmware (iPXE) --DHCP--> dnsmasq: "you are 10.0.0.11, boot http://10.0.0.1/n1.ipxe"
                         --HTTP--> n1.ipxe: kernel .../vmlinuz <cmdline>; initrd .../initrd.gz; boot

dnsmasq answers only the MACs it knows, each with a fixed address and its own iPXE script (a dnsmasq
tag per node). Each script boots the test OS (`rhaas.lab.images`) with ``rhaas.ip=<its address>``,
``rhaas.ping=<every other node>`` and ``console=ttyS0``. Both servers run in the headnode's network
namespace, as detached processes whose PIDs the caller records; `stop` ends them by PID.

This is lab equipment, kept small on purpose: rhaas's boot service proper belongs to provisioning.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rhaas.lab import procs
from rhaas.lab.images import TestOS
from rhaas.procs import find_binary
from rhaas.provisioning.bootservice import RA_PREFIX, dnsmasq_common


@dataclass(frozen=True)
class BootClient:
    """A node the boot service answers: its name, MAC and address with prefix (``10.0.0.11/24``)."""

    name: str
    mac: str
    address: str


def node_address(headnode_cidr: str, index: int) -> str:
    """The address (CIDR) the boot service gives the node with 1-based ``index``: host number 10+index."""
    iface = ipaddress.ip_interface(headnode_cidr)
    address = iface.network.network_address + 10 + index
    if address not in iface.network or address == iface.ip:
        raise ValueError(f"no room for node {index} in {iface.network}")
    return f"{address}/{iface.network.prefixlen}"


def write_files(directory: Path, server_cidr: str, image: TestOS, clients: list[BootClient]) -> Path:
    """Write the dnsmasq configuration and the HTTP root (kernel, initrd, one iPXE script per node).

    Returns the configuration file.
    """
    server_ip = str(ipaddress.ip_interface(server_cidr).ip)
    network = ipaddress.ip_interface(server_cidr).network
    http = directory / "http"
    http.mkdir(parents=True, exist_ok=True)
    for name, target in (("vmlinuz", image.kernel), ("initrd.gz", image.initrd)):
        link = http / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    base = f"http://{server_ip}"
    lines = ["# Written by rhaas.lab.bootserver.", *dnsmasq_common("eth0", directory)]
    lines.append(f"dhcp-range={network.network_address},static,{network.netmask}")
    for client in clients:
        ip = str(ipaddress.ip_interface(client.address).ip)
        peers = [str(ipaddress.ip_interface(c.address).ip) for c in clients if c is not client]
        cmdline = image.cmdline_with(ip=client.address, ping=peers)
        # initrd=: what a UEFI boot's EFI stub needs to find the initrd (see rhaas.core.provisioning).
        script = f"#!ipxe\nkernel {base}/vmlinuz initrd=initrd.gz {cmdline}\ninitrd {base}/initrd.gz\nboot\n"
        (http / f"{client.name}.ipxe").write_text(script)
        lines.append(f"dhcp-host={client.mac},set:{client.name},{ip}")
        lines.append(f"dhcp-boot=tag:{client.name},{base}/{client.name}.ipxe")
    conf = directory / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start(directory: Path, netns: str, server_cidr: str) -> dict[str, int]:
    """Start dnsmasq and the HTTP server in ``netns`` from the files `write_files` made; their PIDs."""
    dnsmasq = find_binary("dnsmasq")
    if dnsmasq is None:
        raise RuntimeError("dnsmasq is not installed (Debian: dnsmasq-base)")
    ip = find_binary("ip") or "ip"
    in_ns = [ip, "netns", "exec", netns]
    server_ip = str(ipaddress.ip_interface(server_cidr).ip)
    done = subprocess.run(
        [*in_ns, ip, "addr", "replace", f"{RA_PREFIX}::1/64", "dev", "eth0", "nodad"],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"cannot give eth0 in {netns} an IPv6 address: {done.stderr.strip()}")
    # Strays of an earlier, failed start would hold the ports.
    for pid in procs.ours_in(directory):
        procs.stop(pid, directory)
    pids: dict[str, int] = {}
    try:
        pids["dnsmasq"] = procs.spawn(
            [*in_ns, dnsmasq, "--keep-in-foreground", f"--conf-file={directory / 'dnsmasq.conf'}",
             "--user=root"],
            directory / "dnsmasq.out",
        )  # fmt: skip
        pids["http"] = procs.spawn(
            [*in_ns, sys.executable, "-m", "http.server", "80", "--bind", server_ip,
             "--directory", str(directory / "http")],
            directory / "http.log",
        )  # fmt: skip
        wait_listening(pids["http"], "tcp", 80, directory / "http.log")
        wait_listening(pids["dnsmasq"], "udp", 67, directory / "dnsmasq.out")
    except BaseException:
        for pid in pids.values():
            procs.stop(pid, directory)
        raise
    return pids


def wait_listening(pid: int, proto: str, port: int, log: Path, timeout: float = 30.0) -> None:
    """Wait until process ``pid``'s network namespace has a socket bound to ``port`` (``/proc/<pid>/net``
    shows the namespace of that process), or raise RuntimeError if the process ends or time runs out."""
    wanted = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while True:
        try:
            table = Path(f"/proc/{pid}/net/{proto}").read_text()
        except OSError:
            table = ""
        if any(line.split()[1:2] and wanted in line.split()[1] + " " for line in table.splitlines()[1:]):
            return
        if not procs.alive(pid):
            raise RuntimeError(f"boot service process {pid} ended; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {proto} port {port} after {timeout} s; see {log}")
        time.sleep(0.05)
