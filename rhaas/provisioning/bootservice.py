"""The boot service of an instance's provisioning network: DHCP (dnsmasq) and a relay to the API.

``rhaas-admin boot-service`` runs it in the foreground, on the machine (or in the network namespace) that
has an interface on the provisioning network, and stops dnsmasq when it stops::

    plain PXE ROM        --DHCP--> dnsmasq: "boot undionly.kpxe" (BIOS) or "snponly.efi" (UEFI)
                         --TFTP--> dnsmasq: iPXE, which starts over as an iPXE client:
    node firmware (iPXE) --DHCP--> dnsmasq: "you are 10.0.0.100, boot http://10.0.0.1:8080/boot/v1/ipxe"
                         --HTTP--> relay --> boot listener: /boot/v1/ipxe → chain /boot/v1/ipxe/<MAC>
                                                        → kernel /boot/v1/fpbl/vmlinuz <cmdline>; initrd …
    FPBL agent           --HTTPS-> relay --> agents' listener: /agent/v1/… (check-in, work, image blobs)

The instance's boot listener (``[provisioning] boot_listen``, plain HTTP) serves the scripts and the FPBL;
its agents' listener (``agent_listen``, TLS with the certificate agents pin) the agents' API; neither is
the customer API (see `rhaas.api.app`). The relay is only needed where those listeners are not on the
provisioning network themselves: it forwards TCP connections from ``<address>:<port>`` to the boot
listener (``--api``) and from ``<address>:<agent-port>`` to the agents' (``--agent-api``). TLS passes
through it untouched: the relay sees no secret. With ``--netns`` the relay listens and dnsmasq runs in
that network namespace while the relay's outgoing connections stay in this process's own: one process
bridges a namespace on the provisioning network and listeners on this machine's loopback.

iPXE clients (QEMU's NIC ROMs, iPXE-flashed NICs) get the boot URL straight away. Other PXE clients get
iPXE itself over dnsmasq's TFTP server, from Debian's ``ipxe`` package (``--ipxe-dir``): ``undionly.kpxe``
for BIOS firmware, ``snponly.efi`` for x86-64 UEFI (DHCP option 93 = 7 or 9); without those files the
service answers iPXE clients only, and says so. dnsmasq also sends IPv6 router advertisements, which cut
iPXE's network configuration from ~16 s to ~3 s on a network without routers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from rhaas import procs

#: A unique local IPv6 prefix for the router advertisements (on the provisioning network only).
RA_PREFIX = "fd00:0:0:a"
#: Where Debian's ``ipxe`` package puts the iPXE binaries a plain PXE ROM chain-loads.
IPXE_DIR = Path("/usr/lib/ipxe")
#: The binaries served over TFTP: for BIOS PXE ROMs, and for x86-64 UEFI ones.
IPXE_BIOS, IPXE_UEFI = "undionly.kpxe", "snponly.efi"
_CLONE_NEWNET = 0x40000000


class BootServiceError(RuntimeError):
    """The boot service cannot start: a bad argument, a missing tool, a namespace or port not there."""


def dnsmasq_common(interface: str, directory: Path) -> list[str]:
    """The dnsmasq settings every boot service shares: DHCP only, on one interface, with the RA that
    speeds iPXE up (``dhcp-range`` lines for addresses are the caller's)."""
    return [
        "port=0",  # no DNS
        f"interface={interface}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "dhcp-authoritative",
        "log-dhcp",
        f"dhcp-leasefile={directory / 'dnsmasq.leases'}",
        f"log-facility={directory / 'dnsmasq.log'}",
        # iPXE's "Configuring" waits for IPv6 router discovery as well as DHCP: ~15 s on a network
        # without routers. A router advertisement (lifetime 0: not a default router) ends that wait.
        "enable-ra",
        f"dhcp-range={RA_PREFIX}::,ra-only,64",
        f"ra-param={interface},10,0",
    ]


def dnsmasq_config(
    directory: Path, interface: str, address: str, boot_url: str, ipxe_dir: Path | None = None
) -> Path:
    """Write the dnsmasq configuration: dynamic leases in the upper half of ``address``'s network (up to
    200 addresses), every iPXE client told to boot ``<boot_url>/boot/v1/ipxe``; with ``ipxe_dir`` (which
    must hold `IPXE_BIOS` and `IPXE_UEFI`), other PXE clients told to fetch iPXE over TFTP first."""
    iface = ipaddress.ip_interface(address)
    if not isinstance(iface, ipaddress.IPv4Interface) or iface.network.num_addresses < 8:
        raise BootServiceError(f"--address {address}: an IPv4 address with a prefix of /29 or shorter")
    network = iface.network
    hosts = list(network.hosts()) if network.num_addresses <= 1024 else None
    if hosts is None:
        first, last = network.network_address + 100, network.network_address + 299
    else:
        first, last = hosts[len(hosts) // 2], hosts[min(len(hosts) - 1, len(hosts) // 2 + 199)]
    if first <= iface.ip <= last:
        raise BootServiceError(f"--address {address} falls in the lease range {first}-{last}")
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by rhaas-admin boot-service.", *dnsmasq_common(interface, directory)]
    lines += [
        f"dhcp-range={first},{last},{network.netmask},1h",
        "dhcp-userclass=set:ipxe,iPXE",
        f"dhcp-boot=tag:ipxe,{boot_url.rstrip('/')}/boot/v1/ipxe",
    ]
    if ipxe_dir is not None:
        tftp = directory / "tftp"
        tftp.mkdir(exist_ok=True)
        for name in (IPXE_BIOS, IPXE_UEFI):
            shutil.copyfile(ipxe_dir / name, tftp / name)
        lines += [
            "enable-tftp",
            f"tftp-root={tftp}",
            "dhcp-match=set:efi64,option:client-arch,7",
            "dhcp-match=set:efi64,option:client-arch,9",
            f"dhcp-boot=tag:!ipxe,tag:!efi64,{IPXE_BIOS}",
            f"dhcp-boot=tag:!ipxe,tag:efi64,{IPXE_UEFI}",
        ]
    conf = directory / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


# --- network namespaces --------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise BootServiceError(f"setns: {os.strerror(ctypes.get_errno())}")


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block in network namespace ``name`` (None: where we are), then come back. Sockets made and
    processes started inside stay in it."""
    if name is None:
        yield
        return
    path = Path("/run/netns") / name
    if not path.exists():
        raise BootServiceError(f"network namespace {name} does not exist")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


# --- the relay -------------------------------------------------------------------------------------------


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""
    sockets = [a, b]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 300)
            if not readable:
                return  # idle for 5 minutes
            for src in readable:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


def relay(listener: socket.socket, target: tuple[str, int], stop: threading.Event) -> None:
    """Accept on ``listener`` and forward each connection to ``target`` until ``stop`` is set."""
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            conn.close()  # the API is down: the agent retries, as it would with no relay
            continue
        upstream.settimeout(None)
        conn.settimeout(None)
        threading.Thread(target=_pump, args=(conn, upstream), daemon=True).start()


def serve(
    directory: Path,
    address: str,
    port: int,
    api: str | None,
    netns: str | None = None,
    interface: str = "eth0",
    dnsmasq: str = "dnsmasq",
    ready: Callable[[str], None] = print,
    ipxe_dir: Path = IPXE_DIR,
    agent_relay: tuple[int, str] | None = None,
) -> int:
    """Run the boot service until SIGTERM/SIGINT or dnsmasq's end; dnsmasq's exit status (0 when we
    stopped it). ``api`` is the boot listener's own URL (None: it listens on ``address:port`` itself);
    ``agent_relay`` (port, URL): also relay ``address:port`` to the agents' listener at URL. Plain PXE
    clients are served iPXE from ``ipxe_dir`` if it has the binaries."""
    ip = str(ipaddress.ip_interface(address).ip)
    boot_url = f"http://{ip}:{port}"
    have_ipxe = all((ipxe_dir / name).is_file() for name in (IPXE_BIOS, IPXE_UEFI))
    conf = dnsmasq_config(directory, interface, address, boot_url, ipxe_dir if have_ipxe else None)
    relays = [(port, api)] if api is not None else []
    if agent_relay is not None:
        relays.append(agent_relay)
    listeners: list[tuple[socket.socket, tuple[str, int]]] = []
    with in_netns(netns):
        done = subprocess.run(
            ["ip", "addr", "replace", f"{RA_PREFIX}::1/64", "dev", interface, "nodad"],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BootServiceError(f"cannot give {interface} an IPv6 address: {done.stderr.strip()}")
        for relay_port, url in relays:
            target = urlsplit(url)
            default = 443 if target.scheme == "https" else 80
            sock = socket.create_server((ip, relay_port), backlog=64)
            listeners.append((sock, (target.hostname or "127.0.0.1", target.port or default)))
        with open(directory / "dnsmasq.out", "ab") as err:  # the child keeps its own copy
            proc = subprocess.Popen(
                [dnsmasq, "--keep-in-foreground", f"--conf-file={conf}", "--user=root"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
    stop = threading.Event()
    threads = [threading.Thread(target=relay, args=(*pair, stop), daemon=True) for pair in listeners]
    for thread in threads:
        thread.start()

    def ending(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, ending) for s in (signal.SIGTERM, signal.SIGINT)}
    where = f" in namespace {netns}" if netns else ""
    relayed = "".join(f", relaying {ip}:{p} to {url}" for p, url in relays)
    pxe = f"plain PXE ROMs chain-load iPXE over TFTP ({IPXE_BIOS}, {IPXE_UEFI})"
    if not have_ipxe:
        pxe = f"iPXE clients only (no {IPXE_BIOS} and {IPXE_UEFI} in {ipxe_dir}: Debian's ipxe has them)"
    ipxe_url = f"{boot_url}/boot/v1/ipxe"
    ready(f"boot service{where}: DHCP on {interface} ({address}), boot URL {ipxe_url}{relayed}; {pxe}")
    try:
        while not stop.is_set():
            if proc.poll() is not None:
                return proc.returncode or 1
            stop.wait(0.5)
        return 0
    finally:
        stop.set()
        procs.end(proc)
        for sock, _ in listeners:
            sock.close()
        for thread in threads:
            thread.join(timeout=5)
        for s, handler in previous.items():
            signal.signal(s, handler)
