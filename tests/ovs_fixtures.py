"""Fixtures and helpers for tests on a real, private Open vSwitch in userspace.

A test module imports the ``*_fixture`` functions it needs; pytest knows them by their short names
(``ovs``, ``bridge``, ``internal_ports``, ``hosts``, ``arp_probe``).

Everything made here (daemons, bridges, ports, namespaces, veth pairs) is removed in the fixtures'
``finally`` blocks, also when a test fails. Names carry a random part, so a test run never touches
devices it did not make; Linux interface names are at most 15 characters.

The kernel of the lab machine has no 802.1Q module (no ``ip link add … type vlan``), so tagged traffic
is sent and received with raw packet sockets instead (`ArpProbe`): the kernel only moves a received tag
into the packet's metadata, which a raw socket can read.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from rhaas.drivers.switch.ovs import OVSSwitch, OVSSwitchSettings
from rhaas.lab import netns
from rhaas.lab.ovs import OVSDaemon, OVSDaemonError, find_binary

T = TypeVar("T")

_MARKS = [
    pytest.mark.ovs,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, veth pairs, Open vSwitch)"),
    pytest.mark.skipif(
        find_binary("ovs-vswitchd") is None, reason="ovs-vswitchd is not installed (openvswitch-switch)"
    ),
]


def needs_ovs(test: T) -> T:
    """Mark a test (function or class) that runs a real Open vSwitch: ``ovs``, ``root``, and the skips."""
    for mark in _MARKS:
        test = mark(test)
    return test


def unique(suffix: str) -> str:
    """A fresh interface-sized name: ``rh`` + 6 random hex digits + ``suffix`` (≤ 7 characters)."""
    assert len(suffix) <= 7
    return f"rh{secrets.token_hex(3)}{suffix}"


@pytest.fixture(scope="module", name="ovs")
def ovs_fixture() -> Iterator[OVSDaemon]:
    """A private Open vSwitch for the test module, in a short directory (AF_UNIX paths are short).

    Its ovs-vswitchd runs in a network namespace of its own, so that the tests can run beside any other
    userspace Open vSwitch on the machine (a lab, another test run).
    """
    workdir = tempfile.mkdtemp(prefix="rhaas-")
    daemon = OVSDaemon(workdir, netns=unique("sw"))
    try:
        daemon.start()
        yield daemon
    finally:
        try:
            daemon.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(name="bridge")
def bridge_fixture(ovs: OVSDaemon) -> Iterator[str]:
    """A userspace bridge of its own for each test (deleting it removes its ports too)."""
    name = unique("br")
    try:
        ovs.add_bridge(name)
        yield name
    finally:
        ovs.del_bridge(name)


@pytest.fixture(name="internal_ports")
def internal_ports_fixture(ovs: OVSDaemon, bridge: str) -> list[str]:
    """Two new internal ports on ``bridge``, as OVS makes them: trunking every VLAN until set."""
    names = [unique("p0"), unique("p1")]
    for name in names:
        ovs.vsctl("add-port", bridge, name, "--", "set", "interface", name, "type=internal")
    return names


def make_switch(ovs: OVSDaemon, bridge: str, name: str = "sw-ovs", **settings: object) -> OVSSwitch:
    values = {"bridge": bridge, "db": ovs.db_url, **settings}
    return OVSSwitch(name, OVSSwitchSettings.model_validate(values))


@pytest.fixture(name="hosts")
def hosts_fixture(ovs: OVSDaemon) -> Iterator[Callable[..., netns.NetnsPort]]:
    """A factory of namespaces plugged into a bridge; all of them are unplugged at the end."""
    made: list[netns.NetnsPort] = []

    def plug(bridge: str, address: str | None = None) -> netns.NetnsPort:
        name = unique("h")
        port = netns.plug(ovs, bridge, netns=name, port=name, address=address)
        made.append(port)
        return port

    try:
        yield plug
    finally:
        errors = []
        for port in made:
            try:
                netns.unplug(ovs, port)
            except (netns.NetnsError, OVSDaemonError) as exc:
                errors.append(exc)
        assert not errors, errors


# -- tagged frames without an 802.1Q module ------------------------------------------------------------
ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
_AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata


@dataclass
class ArpProbe:
    """A "host" that is only a raw socket on one end of a veth pair whose other end is an OVS port.

    `ask` broadcasts an ARP request for an address, tagged with a VLAN or untagged, and reports the
    VLAN the answer came back on.
    """

    dev: str
    sock: socket.socket
    mac: bytes

    def ask(self, target: str, vlan: int | None, *, timeout: float = 1.0) -> int | None | bool:
        """Ask who has ``target`` on ``vlan`` (None: untagged).

        The VLAN id of the reply (None: untagged), or False if no reply came within ``timeout`` s.
        """
        sender, wanted = socket.inet_aton("192.0.2.99"), socket.inet_aton(target)  # TEST-NET-1 sender
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, self.mac, sender, b"\0" * 6, wanted)
        tag = b"" if vlan is None else struct.pack("!HH", ETH_P_8021Q, vlan)
        frame = b"\xff" * 6 + self.mac + tag + struct.pack("!H", ETH_P_ARP) + arp
        self._drain()  # a late reply to an earlier question must not answer this one
        self.sock.send(frame.ljust(60, b"\0"))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(_AUXDATA.size))
            except TimeoutError:
                break
            reply_vlan = _vlan_of(data, ancillary)
            if data[12:14] == struct.pack("!H", ETH_P_8021Q):
                data = data[:12] + data[16:]  # the tag was still in the frame
            if data[12:14] != struct.pack("!H", ETH_P_ARP) or len(data) < 42:
                continue
            op, _sha, spa, _tha, tpa = struct.unpack("!6xH6s4s6s4s", data[14:42])
            if op == 2 and spa == wanted and tpa == sender:
                return reply_vlan
        return False

    def _drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(2048)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)


def _vlan_of(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> int | None:
    if frame[12:14] == struct.pack("!H", ETH_P_8021Q):
        return int(struct.unpack("!H", frame[14:16])[0]) & 0xFFF
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _len, _snap, _mac, _net, tci, _tpid = _AUXDATA.unpack(data[: _AUXDATA.size])
            if status & TP_STATUS_VLAN_VALID:
                return int(tci) & 0xFFF
    return None


@pytest.fixture(name="arp_probe")
def arp_probe_fixture(ovs: OVSDaemon) -> Iterator[Callable[[str], ArpProbe]]:
    """A factory of `ArpProbe` ports on a bridge; their sockets and veth pairs go at the end.

    The probe's end of the veth pair stays in the host namespace, where this process can bind to it.
    """
    made: list[tuple[str, str, str, socket.socket | None]] = []
    ip = find_binary("ip") or "ip"

    def plug(bridge: str) -> ArpProbe:
        port, dev = unique("t"), unique("tp")
        made.append((bridge, port, dev, None))
        subprocess.run([ip, "link", "add", port, "type", "veth", "peer", "name", dev], check=True, timeout=10)
        if ovs.netns is not None:
            subprocess.run([ip, "link", "set", port, "netns", ovs.netns], check=True, timeout=10)
        subprocess.run(["ethtool", "-K", dev, "tx", "off"], check=True, timeout=10, capture_output=True)
        subprocess.run([ip, "link", "set", dev, "up"], check=True, timeout=10)
        ovs.ip("link", "set", port, "up")
        in_netns = [ip, "netns", "exec", ovs.netns] if ovs.netns else []
        subprocess.run(
            [*in_netns, "ethtool", "-K", port, "tx", "off"], check=True, timeout=10, capture_output=True
        )
        ovs.vsctl("add-port", bridge, port)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        made[-1] = (bridge, port, dev, sock)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.bind((dev, ETH_P_ALL))
        return ArpProbe(dev=dev, sock=sock, mac=bytes.fromhex("02" + secrets.token_hex(5)))

    try:
        yield plug
    finally:
        for bridge, port, dev, sock in made:
            if sock is not None:
                sock.close()
            ovs.vsctl("--if-exists", "del-port", bridge, port)
            # Deleting either end deletes the pair; the port end may not have reached the switch.
            if netns.link_exists(dev):
                subprocess.run([ip, "link", "del", dev], check=True, timeout=10)
            elif netns.link_exists(port):
                subprocess.run([ip, "link", "del", port], check=True, timeout=10)
