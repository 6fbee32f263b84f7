"""The boot service's DHCP and TFTP, spoken to on the wire as firmware would.

``rhaas-admin boot-service`` runs in a network namespace on one end of a veth pair; the test is a PXE
client in a second namespace on the other end. It sends DHCP DISCOVERs the way three kinds of firmware do
and reads the boot file each OFFER names: a BIOS PXE ROM is told to fetch ``undionly.kpxe``, a UEFI one
``snponly.efi``, and iPXE (user class ``iPXE``) the HTTP boot script; then it fetches ``undionly.kpxe`` over
TFTP and compares it byte for byte with Debian's.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhaas.lab import procs
from rhaas.lab.polling import wait_for
from rhaas.provisioning.bootservice import IPXE_BIOS, IPXE_DIR, IPXE_UEFI, dnsmasq_config, in_netns

SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
MAC = bytes.fromhex("525400770002")
DHCP_MAGIC = b"\x63\x82\x53\x63"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not shutil.which("dnsmasq"), reason="needs dnsmasq (Debian: dnsmasq-base)"),
    pytest.mark.skipif(
        not (IPXE_DIR / IPXE_BIOS).is_file(), reason=f"needs {IPXE_DIR / IPXE_BIOS} (Debian: ipxe)"
    ),
]


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=15)


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: (the boot service's, the client's). Removed however the
    test ends (a namespace takes its end of the pair with it)."""
    tag = f"{os.getpid() % 100000}"
    server, client = f"rhbs{tag}", f"rhbc{tag}"
    try:
        ip("netns", "add", server)
        ip("netns", "add", client)
        ip("link", "add", f"bs{tag}", "type", "veth", "peer", "name", f"bc{tag}")
        for ns, dev, addr in ((server, f"bs{tag}", SERVER_IP), (client, f"bc{tag}", CLIENT_IP)):
            ip("link", "set", dev, "netns", ns, "name", "eth0")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield server, client
    finally:
        for ns in (server, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)
        subprocess.run(["ip", "link", "del", f"bs{tag}"], capture_output=True, timeout=15)


@pytest.fixture
def boot_service(wire: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The boot service in the server's namespace: (the client's namespace, its log)."""
    server, client = wire
    log = tmp_path / "boot-service.log"
    argv = [sys.executable, "-m", "rhaas.admin", "boot-service", "--address", f"{SERVER_IP}/24", "--port",
            "8080", "--netns", server, "--interface", "eth0", "--dir", str(tmp_path / "bs")]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("the boot service", lambda: proc.poll() is not None or "boot service" in log.read_text(), 30)
        assert proc.poll() is None, log.read_text()
        yield client, log
    finally:
        procs.end(proc)


def discover(arch: int, user_class: bytes | None = None) -> bytes:
    """A DHCPDISCOVER as a PXE ROM sends it (broadcast flag set: answer by broadcast)."""
    xid = os.urandom(4)
    head = struct.pack("!BBBB4sHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, *(bytes(4),) * 4)
    options = bytes([53, 1, 1]) + bytes([93, 2]) + struct.pack("!H", arch)
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    options += bytes([60, len(vendor)]) + vendor
    if user_class is not None:
        options += bytes([77, len(user_class)]) + user_class
    return head + MAC.ljust(16, b"\0") + bytes(64 + 128) + DHCP_MAGIC + options + b"\xff"


def offered_boot_file(arch: int, user_class: bytes | None = None) -> tuple[str, str]:
    """Send DISCOVERs (again every half second, as firmware does) until an OFFER comes; its (boot file,
    next server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        sock.bind(("0.0.0.0", 68))
        sock.settimeout(0.5)
        packet = discover(arch, user_class)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sock.sendto(packet, ("255.255.255.255", 67))
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            if reply[4:8] == packet[4:8] and reply[0] == 2:
                siaddr = socket.inet_ntoa(reply[20:24])
                return reply[108:236].rstrip(b"\0").decode(), siaddr
    raise TimeoutError("no DHCPOFFER within 30 s")


def tftp_get(server: str, name: str) -> bytes:
    """A file over TFTP (RFC 1350, octet mode, 512-byte blocks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(struct.pack("!H", 1) + name.encode() + b"\0octet\0", (server, 69))
        data, expected = bytearray(), 1
        while True:
            packet, peer = sock.recvfrom(4 + 512)
            opcode, block = struct.unpack("!HH", packet[:4])
            assert opcode == 3, f"TFTP error {block}: {packet[4:].rstrip(bytes(1)).decode(errors='replace')}"
            if block == expected:
                data += packet[4:]
                expected = (expected + 1) & 0xFFFF
            sock.sendto(struct.pack("!HH", 4, block), peer)
            if len(packet) < 4 + 512:
                return bytes(data)


def test_plain_pxe_roms_chain_load_ipxe_over_tftp_and_ipxe_gets_the_boot_script(boot_service):
    client, log = boot_service
    assert "plain PXE ROMs chain-load iPXE over TFTP" in log.read_text()
    with in_netns(client):
        assert offered_boot_file(0) == (IPXE_BIOS, SERVER_IP)  # BIOS
        assert offered_boot_file(7) == (IPXE_UEFI, SERVER_IP)  # x86-64 UEFI
        assert offered_boot_file(0, b"iPXE")[0] == f"http://{SERVER_IP}:8080/boot/v1/ipxe"
        assert tftp_get(SERVER_IP, IPXE_BIOS) == (IPXE_DIR / IPXE_BIOS).read_bytes()


def test_without_ipxe_binaries_the_service_answers_ipxe_clients_only(tmp_path):
    conf = dnsmasq_config(tmp_path / "a", "eth0", f"{SERVER_IP}/24", f"http://{SERVER_IP}:8080")
    text = conf.read_text()
    assert "enable-tftp" not in text and "tag:!ipxe" not in text
    assert f"dhcp-boot=tag:ipxe,http://{SERVER_IP}:8080/boot/v1/ipxe" in text
    conf = dnsmasq_config(tmp_path / "b", "eth0", f"{SERVER_IP}/24", f"http://{SERVER_IP}:8080", IPXE_DIR)
    text = conf.read_text()
    assert f"tftp-root={tmp_path / 'b' / 'tftp'}" in text and f"tag:!ipxe,tag:efi64,{IPXE_UEFI}" in text
    assert (tmp_path / "b" / "tftp" / IPXE_UEFI).read_bytes() == (IPXE_DIR / IPXE_UEFI).read_bytes()
