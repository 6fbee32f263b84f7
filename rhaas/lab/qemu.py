"""One lab node as a QEMU process: power, reset, NMI, boot device and serial console.

A `QemuNode` is the lab's stand-in for a physical machine. It owns one ``qemu-system-x86_64`` process with
a NIC (iPXE ROM, on a tap device or an isolated hub) and a qcow2 disk of its hardware profile (virtio, or
a server's: UEFI or BIOS firmware, Intel NIC, NVMe or MegaRAID disk), its serial console appended to a
log file, a QMP socket, and a pidfile so that ``lab down`` can find the process after a crash. It also
implements the virtual BMC's Machine protocol (``power_on``, ``power_off``, ``reset``, ``is_on``, ``nmi``,
``set_boot_device``, ``get_boot_device``) and counts firmware boots, so the lab can show that the fast path
(kexec, NMI to a crash kernel) boots no firmware.

TCG is the default accelerator: on the machines this was built on, a guest under KVM hung in early boot.
Tap devices get ``vnet_hdr=off``: on an Open vSwitch userspace bridge the guest's TCP checksums otherwise
stay partial and TCP silently fails while ping works.

This module does not build images (`rhaas.lab.images`), wire switches (`rhaas.lab.ovs`) or speak IPMI
(`rhaas.lab.vbmc`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from rhaas.lab.qmpevents import ResetWatcher

BootDevice = Literal["pxe", "disk", "none"]
#: The vCPU models a lab node may have: QEMU's default ``qemu64`` (no SSSE3, AES-NI or AVX: crypto runs in
#: plain software under the emulation), or ``max``, every instruction the emulator offers (AES-NI,
#: PCLMULQDQ, AVX2 among them, as on a server).
CPU_MODELS = ("qemu64", "max")
Accel = Literal["tcg", "kvm"]

#: ``-boot order=`` per boot device; ``none`` means "no override": the node's default order.
BOOT_ORDERS: dict[str, str] = {"pxe": "n", "disk": "c"}
DEFAULT_BOOT_ORDER = "nc"
#: The QOM ids of a node's NIC and disk devices: UEFI nodes get their boot order as the devices'
#: ``bootindex``, which QEMU hands the firmware (its ``bootorder`` file) at every reset. OVMF ignores
#: ``-boot order`` (SeaBIOS's CMOS setting): without this it would boot a bootable disk before the
#: network whatever the BMC set, as no server honouring a boot override does.
NIC_ID, DISK_ID = "nic0", "disk0dev"
#: A unix socket path longer than this does not fit in ``sockaddr_un``.
_MAX_SOCKET_PATH = 107
#: A guest's reset this soon after the last start or reset is the firmware finishing that one: SeaBIOS
#: answers a warm reset by resetting the machine again itself (port 0xcf9) about 40 ms later. No OS runs
#: that soon.
FIRMWARE_RESET_WINDOW = 1.0
#: SeaBIOS reset in its first moments can hang for good in real mode at its reset vector (CS=f000, seen
#: under TCG on a loaded machine: about one early reset in four): `reset` holds a reset until this long
#: after the last start or reset, as a real BMC's reset takes its time too.
FIRMWARE_SETTLE = 1.0
_log = logging.getLogger(__name__)
_POLL = 0.05


def _start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``, None if it has fully exited.

    A zombie counts as exited only once all its threads have: the thread-group leader turns zombie as
    soon as its own thread ends, while QEMU's other threads may still be finishing, and its parent cannot
    reap it before they have.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            status = Path(f"/proc/{pid}/status").read_text()
            threads = re.search(r"^Threads:\s*(\d+)", status, re.MULTILINE)
            if threads is None or int(threads.group(1)) <= 1:
                return None
    except (OSError, IndexError):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Profile:
    """The hardware of a lab node: its firmware, NIC model and disk controller."""

    name: str
    firmware: Literal["bios", "uefi"]
    nic_model: str
    disk_bus: Literal["virtio", "nvme", "megasas"]
    summary: str
    #: What Linux on the node sees: its disk's device and its NIC's driver.
    guest_disk: str
    guest_nic_driver: str
    #: Kernel parameters the FPBL needs on this hardware (`[provisioning] fpbl_args`).
    fpbl_args: str = ""


#: QEMU 7.2's emulated NVMe controller (Debian 12's) can lose a submission while many commands are in
#: flight: the commands are never run (its block statistics show no request at all), the driver's I/O
#: timeout resets the controller and the disk is gone. Seen on the return FPBL's wipe, a burst of
#: write-zeroes commands, about one return in two on a busy host; the guest driver's shadow doorbells (a
#: feature of emulated controllers, which real drives do not offer) are the likely race. One command in
#: flight at a time cannot lose one, and the wipe takes no longer here (it is bound by the emulation).
LAB_NVME_FPBL_ARGS = "nvme.io_queue_depth=2"

#: The lab's node profiles: ``virtio`` looks like a cloud VM; the others like servers (a UEFI server with
#: an Intel 82574 NIC and an NVMe disk; a BIOS server with an Intel 82540 NIC and a MegaRAID SAS disk).
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("virtio", "bios", "virtio-net-pci", "virtio", "SeaBIOS, virtio NIC, virtio disk",
                "/dev/vda", "virtio_net"),
        Profile("uefi-nvme", "uefi", "e1000e", "nvme", "OVMF (UEFI), e1000e NIC, NVMe disk",
                "/dev/nvme0n1", "e1000e", fpbl_args=LAB_NVME_FPBL_ARGS),
        Profile("bios-megasas", "bios", "e1000", "megasas", "SeaBIOS, e1000 NIC, MegaRAID SAS disk",
                "/dev/sda", "e1000"),
    )
}  # fmt: skip
#: Debian's ``ovmf`` package: the UEFI firmware's code (read-only) and the template of a node's variables.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def disk_args(bus: str, drive: str, serial: str, device: str = "") -> list[str]:
    """QEMU's arguments for a node's disk ``drive`` (a ``-drive`` spec: file and format) on controller
    ``bus`` (`Profile.disk_bus`); ``device`` is added to the disk device's options (an id, a boot index)."""
    if bus == "virtio" and not device:
        return ["-drive", f"{drive},if=virtio"]
    attach = ["-drive", f"{drive},if=none,id=disk0"]
    if bus == "virtio":
        return [*attach, "-device", f"virtio-blk-pci,drive=disk0{device}"]
    if bus == "nvme":
        return [*attach, "-device", f"nvme,drive=disk0,serial={serial}{device}"]
    scsi = f"scsi-hd,drive=disk0,bus=raid0.0{device}"
    return ["-device", "megasas-gen2,id=raid0", *attach, "-device", scsi]


def uefi_variables(variables: Path, who: str) -> None:
    """Give ``who`` its own copy of OVMF's variables at ``variables``, from Debian's template, unless it
    has one (a node keeps its boot entries across restarts); `QemuError` if OVMF is not installed."""
    if variables.exists():
        return
    if not OVMF_CODE.exists():
        raise QemuError(f"{who}: UEFI firmware {OVMF_CODE} is missing (Debian package ovmf)")
    shutil.copyfile(OVMF_VARS, variables)


def uefi_firmware_args(variables: Path) -> list[str]:
    """QEMU's arguments for OVMF: its code, read-only, and the node's own copy of its variables."""
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
    ]  # fmt: skip


def node_profile(name: str) -> Profile:
    """The profile ``name``; `ValueError` naming the known ones if there is none."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown node profile {name!r}; known: {', '.join(PROFILES)}") from None


class QemuError(RuntimeError):
    """QEMU failed to start, refused a QMP command, or the node is in the wrong power state for the call."""


# --- QMP ---------------------------------------------------------------------------------------------


def qmp_command(
    path: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Run one QMP command over the unix socket ``path`` and return its ``return`` value.

    One connection per command: QEMU serves one QMP client at a time on a socket, and a fresh connection
    cannot be left in a bad state by an earlier timeout. Raises `QemuError` on an error reply, and
    `OSError` (including `TimeoutError`) if the socket cannot be reached or stays silent.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        greeting = _qmp_read(stream)
        while "event" in greeting:
            # QEMU keeps a monitor in command mode from one client to the next, and may send an event
            # (RESUME as the machine starts) to a new client before its greeting: not ours to read.
            greeting = _qmp_read(stream)
        if "QMP" not in greeting:
            raise QemuError(f"not a QMP greeting from {path}: {greeting}")
        _qmp_execute(stream, "qmp_capabilities", None)
        try:
            return _qmp_execute(stream, command, arguments)
        except EOFError:
            if command == "quit":  # QEMU may close the socket before its reply arrives
                return {}
            raise


def _qmp_read(stream: Any) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise EOFError("QMP socket closed")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise QemuError(f"QMP sent a non-object: {line!r}")
    return message


def _qmp_execute(stream: Any, command: str, arguments: dict[str, Any] | None) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    stream.write(json.dumps(request).encode() + b"\n")
    stream.flush()
    while True:
        reply = _qmp_read(stream)
        if "event" in reply:
            continue
        if "error" in reply:
            error = reply["error"]
            raise QemuError(f"QMP {command} failed: {error.get('class')}: {error.get('desc')}")
        return reply.get("return")


# --- the node ----------------------------------------------------------------------------------------


def mac_for(name: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from a node name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


class QemuNode:
    """One lab node: a QEMU process with a NIC, a disk, a serial log, a QMP socket and a pidfile.

    Files live in ``workdir``: ``<name>.qcow2``, ``<name>.console.log`` (appended across boots),
    ``<name>.qemu.log`` (QEMU's own messages), ``<name>.qmp`` and ``<name>.pid``. A second `QemuNode` with
    the same name and ``workdir`` (say, in ``lab down`` after a crash) finds and stops the running process
    through the pidfile.

    ``disk`` (default ``<workdir>/<name>.qcow2``) is created with ``disk_size`` (default 4G) if absent;
    ``disk_size=None`` without ``disk`` gives a node with no disk. ``tap`` is created by QEMU if it does
    not exist, and disappears with the process; ``user_net`` (without ``tap``) puts the NIC on QEMU's
    user-mode network instead, where 10.0.2.2 is the host's loopback; with neither the NIC sits on a hub
    that reaches nothing.
    ``kernel``/``initrd``/``append`` boot a kernel directly instead of through the firmware's boot order;
    they are attributes, read at each `start`.
    ``profile`` (one of `PROFILES`) gives the firmware, NIC model and disk controller; a UEFI node keeps its
    variables in ``<name>.efivars.fd``. ``post_seconds`` holds the firmware that long at every firmware
    boot (start, reset by anyone), paused through QMP, as a server's power-on self test does.
    """

    def __init__(
        self,
        name: str,
        workdir: Path | str,
        *,
        memory_mb: int = 1024,
        smp: int = 1,
        mac: str | None = None,
        tap: str | None = None,
        user_net: bool = False,
        ssh_port: int | None = None,
        disk: Path | str | None = None,
        disk_size: str | None = "4G",
        boot_device: BootDevice = "none",
        default_boot_order: str = DEFAULT_BOOT_ORDER,
        kernel: Path | str | None = None,
        initrd: Path | str | None = None,
        append: str | None = None,
        accel: Accel = "tcg",
        nic_model: str | None = None,
        extra_args: Sequence[str] = (),
        qemu_binary: str = "qemu-system-x86_64",
        profile: str = "virtio",
        post_seconds: float = 0.0,
        cpu: str = "qemu64",
    ) -> None:
        if cpu not in CPU_MODELS:
            raise ValueError(f"cpu must be one of {', '.join(CPU_MODELS)}, not {cpu!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"node name {name!r} may hold only letters, digits, '.', '_' and '-'")
        if accel not in get_args(Accel):
            raise ValueError(f"accel must be one of {get_args(Accel)}, not {accel!r}")
        if not 64 <= memory_mb <= 65536:
            raise ValueError(f"memory_mb {memory_mb} is out of range")
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.memory_mb = memory_mb
        self.smp = smp
        self.cpu = cpu
        self.mac = mac or mac_for(name)
        self.tap = tap
        self.user_net = user_net
        self.ssh_port = ssh_port
        self.disk: Path | None = None
        if disk is not None:
            self.disk = Path(disk).resolve()
        elif disk_size is not None:
            self.disk = self.workdir / f"{name}.qcow2"
        self.disk_size = disk_size or "4G"
        self._check_boot_device(boot_device)
        self.boot_device: BootDevice = boot_device
        self.default_boot_order = default_boot_order
        self.kernel = Path(kernel) if kernel else None
        self.initrd = Path(initrd) if initrd else None
        self.append = append
        self.accel: Accel = accel
        self.profile = node_profile(profile)
        self.nic_model = nic_model or self.profile.nic_model
        if not 0 <= post_seconds <= 600:
            raise ValueError(f"post_seconds {post_seconds} is out of range (0 to 600)")
        #: Seconds the firmware is held at every firmware boot, as a real server's POST holds it.
        self.post_seconds = post_seconds
        self._post_hold: threading.Timer | None = None
        self._post_generation = 0
        self.extra_args = list(extra_args)
        self.qemu_binary = qemu_binary
        #: Firmware boots seen by this object: starts, plus every reset QEMU reports, whoever caused it
        #: (the BMC, or the guest: ``reboot``, ``panic=N``, a triple fault); kexec is not a firmware boot.
        self.firmware_boots = 0
        #: The resets among them that the guest caused itself.
        self.guest_resets = 0
        #: Called with QEMU's RESET event data at each reset (the virtual BMC counts through it).
        self.on_reset: Callable[[dict[str, Any]], None] | None = None
        self._resets = threading.Condition()
        self._last_reset = 0.0  # time.monotonic() of the last start or counted reset
        self.console_log = self.workdir / f"{name}.console.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.qmp_path = self.workdir / f"{name}.qmp"
        self.events_path = self.workdir / f"{name}.events.qmp"
        self._watcher: ResetWatcher | None = None
        self.pidfile = self.workdir / f"{name}.pid"
        #: The node's own UEFI variables (a copy of OVMF's template), for the ``uefi`` firmware.
        self.efivars = self.workdir / f"{name}.efivars.fd"
        if len(str(self.events_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"QMP socket path {self.qmp_path} is too long for a unix socket")
        self._proc: subprocess.Popen[bytes] | None = None
        self._boot_offset = 0
        #: Set when a running QEMU refused a new boot order: the next reset restarts the process instead.
        self._restart_on_reset = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"QemuNode({self.name!r}, pid={self.pid()})"

    def __enter__(self) -> QemuNode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the command line ---

    def boot_order(self) -> str:
        """The ``-boot order=`` value for the current boot device."""
        return BOOT_ORDERS.get(self.boot_device, self.default_boot_order)

    def command(self) -> list[str]:
        """The QEMU command line `start` runs."""
        cmd = [
            self.qemu_binary,
            "-name", self.name,
            "-accel", self.accel,
            "-m", str(self.memory_mb),
            "-smp", str(self.smp),
            "-cpu", self.cpu,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-monitor", "none",
            "-chardev", f"file,id=console,path={self.console_log},append=on",
            "-serial", "chardev:console",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-qmp", f"unix:{self.events_path},server=on,wait=off",
            "-pidfile", str(self.pidfile),
            "-boot", f"order={self.boot_order()}",
        ]  # fmt: skip
        if self.profile.firmware == "uefi":
            cmd += uefi_firmware_args(self.efivars)
        if self.post_seconds:
            cmd.append("-S")  # paused: `start` holds the firmware for the POST, then lets it run
        if self.tap:
            netdev = f"tap,id=net0,ifname={self.tap},script=no,downscript=no,vnet_hdr=off"
        elif self.user_net:
            # QEMU's user-mode network: the guest (10.0.2.15) reaches the host's loopback at 10.0.2.2;
            # with ``ssh_port``, 127.0.0.1:ssh_port here reaches the guest's port 22.
            netdev = "user,id=net0"
            if self.ssh_port:
                netdev += f",hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        else:
            # A hub with one port: the NIC exists (and iPXE runs) but reaches nothing.
            netdev = "hubport,id=net0,hubid=0"
        index = self.boot_indexes()
        nic = f"{self.nic_model},netdev=net0,mac={self.mac}"
        if index:
            nic += f",id={NIC_ID},bootindex={index[NIC_ID]}"
        cmd += ["-netdev", netdev, "-device", nic]
        if self.disk is not None:
            cmd += self._disk_args(self.disk, f",id={DISK_ID},bootindex={index[DISK_ID]}" if index else "")
        if self.kernel is not None:
            cmd += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                cmd += ["-initrd", str(self.initrd)]
            if self.append:
                cmd += ["-append", self.append]
        return cmd + self.extra_args

    def boot_indexes(self) -> dict[str, int]:
        """UEFI nodes: the NIC's and the disk's ``bootindex`` for the current boot order (1 first);
        BIOS nodes: none (SeaBIOS takes ``-boot order``)."""
        if self.profile.firmware != "uefi":
            return {}
        order = [NIC_ID if c == "n" else DISK_ID for c in self.boot_order() if c in "nc"]
        order += [d for d in (NIC_ID, DISK_ID) if d not in order]
        return {device: i for i, device in enumerate(order, start=1)}

    def _disk_args(self, disk: Path, device: str = "") -> list[str]:
        """The disk's arguments; ``device`` is added to its device's options (an id and a boot index)."""
        return disk_args(self.profile.disk_bus, f"file={disk},format=qcow2,discard=unmap", self.name, device)

    # --- the process ---

    def pid(self) -> int | None:
        """The PID of this node's running QEMU, from the child handle or the pidfile, else None."""
        if self._proc is not None:
            if self._proc.poll() is None:
                # Stopped through another object, it may still await its last threads: not running.
                return self._proc.pid if _start_time(self._proc.pid) is not None else None
            self._proc = None
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_our_qemu(pid) else None

    def _is_our_qemu(self, pid: int) -> bool:
        """Whether ``pid`` is alive and is the QEMU that wrote our pidfile (PIDs get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z" and str(self.pidfile).encode() in cmdline

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 30.0) -> None:
        """Start QEMU and wait until its QMP socket answers. Counts one firmware boot."""
        with self._lock:
            if self.is_running():
                raise QemuError(f"{self.name} is already running")
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._create_disk()
            if self.profile.firmware == "uefi":
                uefi_variables(self.efivars, self.name)
            for stale in (self.qmp_path, self.events_path, self.pidfile):
                stale.unlink(missing_ok=True)
            self._boot_offset = self.console_offset()
            self._restart_on_reset = False
            with open(self.qemu_log, "ab") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(self.command())}\n".encode())
                log.flush()
                # A new session: a Ctrl-C meant for the lab's controller does not pull the node's plug.
                self._proc = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise QemuError(f"QEMU of {self.name} exited with {code}: {self._tail(self.qemu_log)}")
                try:
                    qmp_command(self.qmp_path, "query-status", timeout=2.0)
                    break
                except (OSError, EOFError):
                    if time.monotonic() >= deadline:
                        self._kill(self._proc.pid, time.monotonic() + 5.0)
                        msg = f"QEMU of {self.name} did not answer on QMP within {timeout} s"
                        raise QemuError(msg) from None
                    time.sleep(_POLL)
            self.firmware_boots += 1
            self._last_reset = time.monotonic()
            self.watch_resets()
            if not self._watcher_ready(5.0):
                _log.warning("%s: QEMU's events are not being watched: resets may go uncounted", self.name)
            if self.post_seconds:
                self._hold_firmware(paused=True)

    def _hold_firmware(self, paused: bool) -> None:
        """Hold the firmware for `post_seconds` (QMP ``stop``, then ``cont``), as a server's POST does.

        A later firmware boot starts a new hold; the earlier one's ``cont`` then does nothing.
        """
        with self._resets:
            self._post_generation += 1
            generation = self._post_generation
            if self._post_hold is not None:
                self._post_hold.cancel()
            if not paused:
                with contextlib.suppress(QemuError):
                    self.qmp("stop")

            def release() -> None:
                with self._resets:
                    if generation != self._post_generation:
                        return
                with contextlib.suppress(QemuError):
                    self.qmp("cont")

            self._post_hold = threading.Timer(self.post_seconds, release)
            self._post_hold.daemon = True
            self._post_hold.start()

    def _create_disk(self) -> None:
        if self.disk is None or self.disk.exists():
            return
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), self.disk_size],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise QemuError(f"qemu-img create {self.disk} failed: {done.stderr.strip()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop QEMU: QMP ``quit``, then SIGTERM, then SIGKILL, each within ``timeout``. Idempotent."""
        with self._lock:
            with self._resets:
                self._post_generation += 1
                if self._post_hold is not None:
                    self._post_hold.cancel()
                    self._post_hold = None
            deadline = time.monotonic() + timeout
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(OSError, EOFError, QemuError, ValueError):
                    qmp_command(self.qmp_path, "quit", timeout=min(2.0, timeout / 3))
                if not self._wait_exit(pid, time.monotonic() + timeout / 3):
                    self._kill(pid, deadline)
            if self._proc is not None:  # our child, already stopped: reap it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout)
            self._proc = None
            self.qmp_path.unlink(missing_ok=True)
            self.events_path.unlink(missing_ok=True)
            if self.pid() is None:
                self.pidfile.unlink(missing_ok=True)

    def _kill(self, pid: int, deadline: float) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            step = time.monotonic() + max(0.5, (deadline - time.monotonic()) / 2)
            if self._wait_exit(pid, step if sig == signal.SIGTERM else step + 5.0):
                return
        raise QemuError(f"QEMU of {self.name} (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, deadline: float) -> bool:
        """Wait until ``pid`` has exited (reaping it if it is our child); False at the deadline.

        A process that is not our child is gone once it is a zombie with no thread left, or its PID holds
        another process. Its command line alone does not tell: an exiting process reads as an empty
        ``cmdline`` before it has released its resources, and its parent would still see it running.
        """
        started = _start_time(pid)
        while True:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif started is None or _start_time(pid) != started:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    # --- QMP ---

    def qmp(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        """Run a QMP command on the running node. Raises `QemuError` if it is off or QEMU refuses."""
        if not self.is_running():
            raise QemuError(f"{self.name} is off")
        try:
            return qmp_command(self.qmp_path, command, arguments, timeout=timeout)
        except (OSError, EOFError, ValueError) as exc:
            raise QemuError(f"QMP {command} to {self.name} failed: {exc}") from exc

    def reset(self) -> None:
        """Hard reset (QMP ``system_reset``): the firmware runs again. Counts one firmware boot.

        A reset within `FIRMWARE_SETTLE` of the last start or reset (after its POST hold) is held until
        then (SeaBIOS can hang when reset in its first moments). If QEMU refused a boot-order change while
        running, the process is restarted instead, so that the new order applies. The console offset
        used by `wait_for_console` moves to this reset.
        """
        with self._lock:
            if not self.is_running():
                raise QemuError(f"{self.name} is off: cannot reset")
            if self._restart_on_reset:
                self.stop()
                self.start()
                return
            with self._resets:
                settle = self._last_reset + self.post_seconds + FIRMWARE_SETTLE - time.monotonic()
            if settle > 0:
                time.sleep(settle)  # a fixed hold, not a wait for a condition: see FIRMWARE_SETTLE
            offset = self.console_offset()
            with self._resets:
                seen = self.firmware_boots
            self.qmp("system_reset")
            self._boot_offset = offset
            # QEMU's RESET event counts it; wait for it, so that the count is right when we return.
            with self._resets:
                counted = self._resets.wait_for(lambda: self.firmware_boots > seen, timeout=5.0)
            if not counted:
                _log.warning("%s: no RESET event from QEMU in 5 s: counting the reset here", self.name)
                self._reset_seen({"guest": False, "reason": "no event seen"})

    @property
    def last_firmware_boot(self) -> float:
        """`time.monotonic` of the last firmware boot counted (a start or a reset)."""
        with self._resets:
            return self._last_reset

    def watch_resets(self) -> None:
        """Count every reset QEMU reports from now on (idempotent; `start` calls it). A new process that
        finds its node already running (a restarted BMC) calls it to count that node's resets."""
        if self._watcher is None:
            self._watcher = ResetWatcher(self.events_path, self._reset_seen)
            self._watcher.start()

    def _watcher_ready(self, timeout: float) -> bool:
        return self._watcher is not None and self._watcher.connected.wait(timeout)

    def _reset_seen(self, data: dict[str, Any]) -> None:
        with self._resets:
            now = time.monotonic()
            # The window opens when the firmware runs: after the POST's hold.
            if data.get("guest") and now - self._last_reset < FIRMWARE_RESET_WINDOW + self.post_seconds:
                _log.info(
                    "%s: a reset %.2f s after the last: the same firmware boot",
                    self.name,
                    now - self._last_reset,
                )
                return
            self._last_reset = now
            self.firmware_boots += 1
            if data.get("guest"):
                self.guest_resets += 1
            self._resets.notify_all()
        if self.post_seconds:
            self._hold_firmware(paused=False)
        if self.on_reset is not None:
            self.on_reset(data)

    def nmi(self) -> None:
        """Inject a non-maskable interrupt (QMP ``inject-nmi``), as a BMC's diagnostic interrupt does."""
        self.qmp("inject-nmi")

    def set_boot_device(self, device: BootDevice) -> None:
        """Boot from ``device`` from the next start or reset on ('none': the node's default order).

        A running QEMU takes the new order at once: through HMP ``boot_set`` (SeaBIOS), or as the
        devices' ``bootindex`` (UEFI); if it refuses, the next `reset` restarts the process.
        """
        self._check_boot_device(device)
        with self._lock:
            self.boot_device = device
            if self.is_running():
                try:
                    if self.boot_indexes():
                        self._set_boot_indexes()
                    else:
                        self.qmp("human-monitor-command", {"command-line": f"boot_set {self.boot_order()}"})
                except QemuError:
                    self._restart_on_reset = True

    def _set_boot_indexes(self) -> None:
        """Give the running devices their boot indexes (`boot_indexes`). QEMU refuses an index another
        device holds, so all first move out of the way."""
        wanted = self.boot_indexes()
        for value, device in enumerate(wanted, start=len(wanted) + 1):
            self._qom_bootindex(device, value)
        for device, index in wanted.items():
            self._qom_bootindex(device, index)

    def _qom_bootindex(self, device: str, value: int) -> None:
        self.qmp(
            "qom-set", {"path": f"/machine/peripheral/{device}", "property": "bootindex", "value": value}
        )

    def get_boot_device(self) -> BootDevice:
        return self.boot_device

    @staticmethod
    def _check_boot_device(device: str) -> None:
        if device not in get_args(BootDevice):
            raise ValueError(f"boot device must be one of {get_args(BootDevice)}, not {device!r}")

    # --- the Machine protocol of the virtual BMC ---

    def power_on(self) -> None:
        """Start the node unless it is on."""
        with self._lock:
            if not self.is_running():
                self.start()

    def power_off(self) -> None:
        """Pull the plug (no guest shutdown). Idempotent."""
        self.stop()

    def is_on(self) -> bool:
        return self.is_running()

    # --- the serial console ---

    def console_offset(self) -> int:
        """The console log's current size: pass it to `wait_for_console` to see only what comes next."""
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def console_text(self, offset: int = 0) -> str:
        """The console log from ``offset`` (bytes), carriage returns removed."""
        try:
            with open(self.console_log, "rb") as f:
                f.seek(offset)
                return f.read().decode("latin-1").replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_for_console(
        self, regex: str | re.Pattern[str], timeout: float = 60.0, offset: int | None = None
    ) -> re.Match[str]:
        """Wait until ``regex`` (multiline) matches the console after ``offset`` and return the match.

        ``offset`` defaults to where the console stood at the last `start` or `reset`. Raises
        `TimeoutError`, with the last lines of the console, if nothing matches within ``timeout``.
        """
        pattern = re.compile(regex, re.MULTILINE) if isinstance(regex, str) else regex
        start = self._boot_offset if offset is None else offset
        deadline = time.monotonic() + timeout
        while True:
            text = self.console_text(start)
            found = pattern.search(text)
            if found:
                return found
            if time.monotonic() >= deadline:
                state = "running" if self.is_running() else "not running"
                tail = "\n".join(text.splitlines()[-20:])
                raise TimeoutError(
                    f"{self.name} ({state}): no {pattern.pattern!r} on the console within {timeout} s; "
                    f"last lines:\n{tail}"
                )
            time.sleep(_POLL)

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
