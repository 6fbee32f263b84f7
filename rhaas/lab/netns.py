"""Network namespaces plugged into a lab OVS bridge: small stand-ins for hosts on a switch port.

`plug` makes a namespace holding one end of a veth pair (``eth0`` inside, optionally with an address)
and adds the other end to a bridge of an `OVSDaemon` as a port of the same name; that end lives where
the daemon's ovs-vswitchd does (the host, or the daemon's own namespace). `unplug` removes the port,
the veth pair and the namespace, and is safe to call on anything half-made or already gone.

Checksum offload is turned off on both veth ends (``ethtool -K <dev> tx off``): the userspace datapath
forwards packets whose checksums the kernel left for the "hardware" to fill in, so TCP and UDP would
silently fail while ping works.

This module must not program VLANs: that is the switch driver's job.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rhaas.lab.ovs import OVSDaemon, OVSDaemonError, check_ifname


class NetnsError(RuntimeError):
    """A namespace, veth or port could not be made or removed."""


@dataclass(frozen=True)
class NetnsPort:
    """A namespace ``netns`` whose device ``ns_dev`` is cabled to OVS port ``port`` on ``bridge``."""

    netns: str
    port: str
    bridge: str
    ns_dev: str = "eth0"
    address: str | None = None

    @property
    def ip(self) -> str | None:
        """The address without its prefix length."""
        return self.address.partition("/")[0] if self.address else None


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        raise NetnsError(f"{name} is not installed")
    return path


def _run(*argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            [_tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)} took more than {timeout} s") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def netns_exists(name: str) -> bool:
    """True if the named namespace exists (``ip netns`` keeps them in /run/netns)."""
    return Path("/run/netns", name).exists()


def link_exists(dev: str) -> bool:
    """True if ``dev`` exists in the host namespace."""
    return Path("/sys/class/net", dev).exists()


def plug(
    ovs: OVSDaemon,
    bridge: str,
    netns: str,
    port: str,
    address: str | None = None,
    *,
    ns_dev: str = "eth0",
) -> NetnsPort:
    """Create namespace ``netns`` cabled to a new port ``port`` of ``bridge``; ``address`` like 10.0.0.1/24.

    On failure everything made so far is removed again.
    """
    for name in (netns, port, ns_dev):
        check_ifname(name)
    made = NetnsPort(netns=netns, port=port, bridge=bridge, ns_dev=ns_dev, address=address)
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", port, "type", "veth", "peer", "name", ns_dev, "netns", netns)
        if ovs.netns is not None:
            _run("ip", "link", "set", port, "netns", ovs.netns)
        ovs.ip("link", "set", port, "up")
        _switch_side(ovs, "ethtool", "-K", port, "tx", "off")
        run_in(netns, "ethtool", "-K", ns_dev, "tx", "off")
        run_in(netns, "ip", "link", "set", "lo", "up")
        if address is not None:
            run_in(netns, "ip", "addr", "add", address, "dev", ns_dev)
        run_in(netns, "ip", "link", "set", ns_dev, "up")
        ovs.vsctl("add-port", bridge, port)
    except (NetnsError, OVSDaemonError):
        unplug(ovs, made)
        raise
    return made


def unplug(ovs: OVSDaemon, port: NetnsPort) -> None:
    """Remove the OVS port, the veth pair and the namespace of ``port`` (idempotent)."""
    with contextlib.suppress(OVSDaemonError):
        ovs.vsctl("--if-exists", "del-port", port.bridge, port.port)
    # Deleting one end of a veth pair deletes both, at once; a namespace's devices go only some time
    # after `ip netns del`. A pair that plug() failed to move is still in the host.
    if link_exists(port.port):
        _run("ip", "link", "del", port.port)
    if ovs.netns is not None and ovs.link_exists(port.port):
        ovs.ip("link", "del", port.port)
    if netns_exists(port.netns):
        _run("ip", "netns", "del", port.netns)


def _switch_side(ovs: OVSDaemon, *argv: str) -> None:
    """Run ``argv`` where ovs-vswitchd runs (its namespace, or the host)."""
    if ovs.netns is None:
        _run(*argv)
    else:
        run_in(ovs.netns, *argv)


def run_in(netns: str, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``netns``; NetnsError if it fails or outlives ``timeout`` seconds."""
    return _run("ip", "netns", "exec", netns, *argv, timeout=timeout)


def ping(netns: str, target: str, *, count: int = 1, deadline: float = 3.0) -> bool:
    """True if ``target`` answers ``count`` echo requests from ``netns`` within ``deadline`` seconds.

    ping keeps sending (every 0.2 s) until enough replies arrived or the deadline passed, so a first
    request lost to ARP or MAC learning does not make a reachable host look unreachable. A missing
    namespace or a broken ping raises NetnsError rather than reading as "unreachable".
    """
    if not netns_exists(netns):
        raise NetnsError(f"network namespace {netns} does not exist")
    seconds = max(1, round(deadline))
    ping_argv = ["ping", "-n", "-q", "-i", "0.2", "-c", str(count), "-w", str(seconds), target]
    try:
        done = subprocess.run(
            [_tool("ip"), "netns", "exec", netns, *ping_argv],
            capture_output=True,
            text=True,
            timeout=seconds + 5,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"ping from {netns} to {target} hung") from exc
    if done.returncode not in (0, 1):  # 1: too few replies; anything else: ping itself failed
        raise NetnsError(f"ping from {netns} to {target} failed: {done.stderr.strip()}")
    return done.returncode == 0


def isolated(netns: str, target: str, *, settle: float = 5.0) -> bool:
    """True once ``target`` no longer answers from ``netns``: after a switch change, flows cached in a
    userspace datapath may carry a packet or two of the old state, so wait (up to ``settle`` seconds)
    for the first failed ping, then make sure a second one fails too."""
    import time

    deadline = time.monotonic() + settle
    while ping(netns, target, deadline=1):
        if time.monotonic() > deadline:
            return False
    return not ping(netns, target, deadline=1)
