"""Lab nodes as QEMU processes: boot the test OS, reset, NMI, boot device, stop, and two nodes on OVS."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from rhaas.lab import images
from rhaas.lab.images import TestOS
from rhaas.lab.qemu import QemuError, QemuNode

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"),
]

BOOT_TIMEOUT = 120  # TCG on a busy 2-core machine


@pytest.fixture(scope="module")
def image() -> TestOS:
    return images.build_test_os()


@pytest.fixture
def workdir(tmp_path_factory) -> Path:
    # Short: the QMP socket path must fit in a unix socket address.
    return tmp_path_factory.mktemp("q")


def _direct(image: TestOS, workdir: Path, name: str, **kwargs) -> QemuNode:
    append = kwargs.pop("append", image.cmdline)
    return QemuNode(
        name, workdir, memory_mb=1024, kernel=image.kernel, initrd=image.initrd, append=append, **kwargs
    )


def test_boot_reset_nmi_stop(image, workdir, nodes):
    node = _direct(image, workdir, "n1", append=image.cmdline_with(ip="192.0.2.5/24"))
    nodes.append(node)
    node.start()
    pid = node.pid()
    assert pid is not None and node.is_on()
    assert node.pidfile.read_text().strip() == str(pid)
    found = node.wait_for_console(image.up_regex, BOOT_TIMEOUT)
    assert found.group(1) == "192.0.2.5/24"
    # The kernel that booted is the one the manifest names.
    assert re.search(rf"kernel={re.escape(image.kernel_release)}\b", node.console_text())
    assert node.firmware_boots == 1

    before = node.console_offset()
    node.reset()
    assert node.firmware_boots == 2
    again = node.wait_for_console(image.up_regex, BOOT_TIMEOUT)
    assert again.group(1) == "192.0.2.5/24"
    assert before > 0 and image.marker in node.console_text(before)
    assert node.pid() == pid, "reset restarts the guest, not the process"

    node.nmi()  # no crash kernel, no unknown_nmi_panic: the guest logs it and carries on
    assert node.qmp("query-status")["status"] == "running"
    assert node.is_running()

    node.stop()
    assert not node.is_running()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not node.pidfile.exists() and not node.qmp_path.exists()
    node.stop()  # idempotent
    with pytest.raises(QemuError):
        node.reset()


def test_boot_time_median_of_three(image, workdir, nodes):
    node = _direct(image, workdir, "bt")
    nodes.append(node)
    times = []
    for _ in range(3):
        started = time.monotonic()
        node.start()
        node.wait_for_console(image.up_regex, BOOT_TIMEOUT)
        times.append(time.monotonic() - started)
        node.stop()
    median = statistics.median(times)
    size = image.initrd.stat().st_size
    rounded = [round(t, 2) for t in times]
    print(f"\nQEMU start -> marker: median {median:.2f} s of {rounded}; initrd {size} bytes")
    assert node.firmware_boots == 3


def test_disk_marker_and_kernel_ip_syntax(image, workdir, nodes):
    raw = workdir / "disk.raw"
    raw.write_bytes(b"RHAAS-DISK customer-data 42\n" + b"\0" * (1024 * 1024))
    disk = workdir / "d.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    # Also the kernel's own ip= syntax, netmask and all.
    append = image.cmdline_with(extra="ip=192.0.2.7::192.0.2.1:255.255.255.0:dk:eth0:off")
    node = _direct(image, workdir, "dk", disk=disk, append=append)
    nodes.append(node)
    node.start()
    assert node.wait_for_console(image.up_regex, BOOT_TIMEOUT).group(1) == "192.0.2.7/24"
    assert re.search(r"^RHAAS-DISK customer-data 42$", node.console_text(), re.MULTILINE)


def test_a_second_object_finds_and_stops_the_process(image, workdir, nodes):
    node = _direct(image, workdir, "orph")
    nodes.append(node)
    node.start()
    pid = node.pid()
    # As ``lab down`` after a crash: a new object, the same name and directory.
    other = QemuNode("orph", workdir)
    assert other.pid() == pid and other.is_running()
    other.power_off()
    assert not other.is_on() and not node.is_on()


def test_pidfile_of_another_process_is_not_trusted(workdir):
    node = QemuNode("ghost", workdir)
    node.pidfile.write_text(f"{os.getpid()}\n")  # alive, but not our QEMU
    assert not node.is_running()
    node.stop()  # must not signal this process
    assert not node.pidfile.exists()


def test_boot_device_reaches_the_firmware(workdir, nodes):
    # No kernel: the firmware boots, from the network first (iPXE), or from the empty disk.
    node = QemuNode("fw", workdir, memory_mb=1024, disk_size="64M", boot_device="pxe")
    nodes.append(node)
    assert node.get_boot_device() == "pxe"
    assert "order=n" in node.command()
    node.power_on()
    node.wait_for_console(r"iPXE initialising devices", BOOT_TIMEOUT)
    assert not re.search(r"Booting from Hard Disk", node.console_text())
    node.set_boot_device("disk")
    assert node.get_boot_device() == "disk"
    node.reset()
    node.wait_for_console(r"Booting from Hard Disk", BOOT_TIMEOUT)
    # The blank disk does not boot and the firmware may reset the machine by itself: QEMU reports that
    # as a reset of the guest's, counted too. The start and our reset are the other two.
    assert node.firmware_boots - node.guest_resets == 2
    with pytest.raises(ValueError):
        node.set_boot_device("floppy")  # type: ignore[arg-type]


def test_command_line(tmp_path):
    node = QemuNode("cmd", tmp_path, tap="tap-cmd", kernel="k", initrd="i", append="console=ttyS0")
    cmd = node.command()
    joined = " ".join(cmd)
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert "ifname=tap-cmd,script=no,downscript=no,vnet_hdr=off" in joined
    assert f"mac={node.mac}" in joined and re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", node.mac)
    assert "-nographic" in cmd and "-pidfile" in cmd and "-smp" in cmd
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0"
    assert "kvm" in QemuNode("k", tmp_path, accel="kvm").command()
    assert cmd[cmd.index("-cpu") + 1] == "qemu64", "QEMU's default, said out loud"
    server = QemuNode("m", tmp_path, cpu="max").command()
    assert server[server.index("-cpu") + 1] == "max"
    with pytest.raises(ValueError):
        QemuNode("bad name", tmp_path)
    with pytest.raises(ValueError, match="cpu must be one of qemu64, max"):
        QemuNode("c", tmp_path, cpu="host")


def test_a_qemu_that_cannot_start_says_why(workdir, nodes):
    node = QemuNode("bad", workdir, disk_size=None, extra_args=["-no-such-option"])
    nodes.append(node)
    with pytest.raises(QemuError, match="no-such-option"):
        node.start()
    assert not node.is_running()
    assert node.firmware_boots == 0


def test_it_is_a_vbmc_machine(tmp_path):
    node = QemuNode("m", tmp_path)
    for method in ("power_on", "power_off", "reset", "is_on", "nmi", "set_boot_device", "get_boot_device"):
        assert callable(getattr(node, method)), method
    assert node.get_boot_device() == "none"
    assert not node.is_on()
    node.set_boot_device("pxe")  # while off: used by the next start
    assert "order=n" in node.command()


def test_wait_for_console_times_out_with_the_tail(tmp_path):
    node = QemuNode("quiet", tmp_path)
    node.console_log.write_text("line one\nline two\n")
    with pytest.raises(TimeoutError, match="line two"):
        node.wait_for_console("never", timeout=0.2, offset=0)
    assert node.wait_for_console(r"line (\w+)$", timeout=0.2, offset=9).group(1) == "two"


# --- two nodes on one Open vSwitch bridge --------------------------------------------------------------


def _ovs_daemon(workdir: Path):
    try:
        from rhaas.lab.ovs import OVSDaemon, find_binary
    except ImportError:
        pytest.skip("rhaas.lab.ovs is not there")
    if os.geteuid() != 0 or not (find_binary("ovs-vswitchd") and find_binary("ovsdb-server")):
        pytest.skip("needs root and Open vSwitch")
    return OVSDaemon(workdir)


@pytest.mark.root
@pytest.mark.ovs
def test_two_nodes_on_taps_in_one_ovs_bridge(image, tmp_path_factory, nodes):
    ovs = _ovs_daemon(tmp_path_factory.mktemp("ovs"))
    workdir = tmp_path_factory.mktemp("q")
    suffix = f"{os.getpid() % 100000}"
    bridge = f"rbr{suffix}"
    # TEST-NET-1 addresses, only on this private bridge.
    specs = [("a", "192.0.2.11", "192.0.2.12"), ("b", "192.0.2.12", "192.0.2.11")]
    try:
        ovs.start()
        ovs.add_bridge(bridge)
        for name, ip, peer in specs:
            node = _direct(
                image, workdir, name, tap=f"rt{name}{suffix}",
                append=image.cmdline_with(ip=f"{ip}/24", ping=[peer], tcp=[peer]),
            )  # fmt: skip
            nodes.append(node)
            node.start()  # QEMU creates the tap
            subprocess.run(["ip", "link", "set", node.tap, "up"], check=True)
            ovs.vsctl("add-port", bridge, node.tap)
        for node, (_, _, peer) in zip(nodes, specs, strict=True):
            node.wait_for_console(image.up_regex, BOOT_TIMEOUT)
            node.wait_for_console(rf"RHAAS-PING {re.escape(peer)} OK", BOOT_TIMEOUT)
            # TCP too: with vnet_hdr on, ping works and TCP silently fails.
            node.wait_for_console(rf"RHAAS-TCP {re.escape(peer)} OK", BOOT_TIMEOUT)
    finally:
        for node in nodes:
            node.stop()
        ovs.stop()
    for node in nodes:
        assert not Path("/sys/class/net", str(node.tap)).exists(), "QEMU's tap outlived it"


def test_a_qmp_command_skips_an_event_sent_before_the_greeting(workdir):
    """QEMU keeps its monitor in command mode from one client to the next, so a client connecting as the
    machine starts may read a RESUME event before the greeting (seen under load, as a power cycle's
    start failed with "not a QMP greeting"). The command still runs and answers."""
    import json
    import socket
    import threading

    from rhaas.lab.qemu import qmp_command

    path = workdir / "fake.qmp"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    asked: list[str] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\n')
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            stream.flush()
            for _ in range(2):
                asked.append(json.loads(stream.readline())["execute"])
                reply = {"status": "running"} if asked[-1] == "query-status" else {}
                stream.write(json.dumps({"return": reply}).encode() + b"\n")
                stream.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert qmp_command(path, "query-status", timeout=5.0) == {"status": "running"}
        thread.join(5)
        assert asked == ["qmp_capabilities", "query-status"]
    finally:
        server.close()
