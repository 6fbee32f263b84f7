"""Every firmware boot of a lab node is counted, whoever caused it: the BMC, or the guest rebooting by
itself (here: a kernel that panics with ``panic=1`` reboots the machine, as a watchdog or a ``reboot``
would). The lab counts them from QEMU's own RESET events, not from what the BMC was asked."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhaas.lab import images
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import FIRMWARE_SETTLE, QemuNode
from rhaas.lab.vbmc import BMCState, VirtualBMC

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"),
]

#: A kernel that finds no init panics, and ``panic=1`` makes it reset the machine a second later.
PANIC_AND_REBOOT = "console=ttyS0 rdinit=/no-such-init root=/dev/no-such-disk panic=1"


@pytest.fixture
def node(tmp_path_factory) -> Iterator[QemuNode]:
    image = images.build_test_os()
    made = QemuNode(
        "r1", tmp_path_factory.mktemp("r"), memory_mb=256, disk_size=None,
        kernel=image.kernel, initrd=image.initrd, append=PANIC_AND_REBOOT,
    )  # fmt: skip
    try:
        yield made
    finally:
        made.stop()
        assert not made.is_running()


def test_a_guest_that_reboots_itself_is_counted_as_a_firmware_boot(node: QemuNode):
    node.start()
    assert node.firmware_boots == 1
    wait_for("the guest to reset itself", lambda: node.guest_resets >= 1, timeout=180)
    assert node.firmware_boots >= 2
    assert node.qmp("query-status")["status"] == "running", "QEMU resets, it does not exit"


def test_the_virtual_bmc_counts_the_guests_own_resets_and_its_own_once(node: QemuNode, tmp_path: Path):
    node.append = images.build_test_os().cmdline  # the test OS, which stays up (no reboot of its own)
    state = tmp_path / "bmc.json"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bmc = VirtualBMC(node, port=port, user="admin", password="secret", state_file=state)  # type: ignore[arg-type]
    try:
        bmc.power_on()
        offset = node.console_offset()
        bmc.power_reset()
        # SeaBIOS answers a warm reset by resetting once more itself: still one firmware boot.
        node.wait_for_console(images.build_test_os().up_regex, 180, offset=offset)
        after_reset = BMCState.read(state)
        assert (after_reset.boots, after_reset.guest_resets) == (2, 0), "power on + one reset, each once"
        node.append = PANIC_AND_REBOOT
        bmc.power_cycle()  # this boot's kernel panics and resets the machine by itself
        assert BMCState.read(state).boots == 3
        wait_for("the guest's reset to reach the BMC", lambda: BMCState.read(state).guest_resets >= 1, 180)
        assert BMCState.read(state).boots >= 4
    finally:
        bmc.stop()


def test_a_reset_right_after_power_on_is_held_until_the_firmware_has_settled(node: QemuNode):
    """SeaBIOS reset in its first moments can hang for good in real mode (seen here: one early reset in
    four on a loaded machine, the console silent for minutes): the lab's reset waits until the firmware
    has had `FIRMWARE_SETTLE` seconds, and the OS comes up after it."""
    image = images.build_test_os()
    node.append = image.cmdline
    for _ in range(2):
        before = node.firmware_boots
        node.start()
        started = node.last_firmware_boot
        node.reset()
        assert node.last_firmware_boot - started >= FIRMWARE_SETTLE, "the reset was held"
        node.wait_for_console(image.up_regex, 180)
        assert node.firmware_boots == before + 2, "the start and the reset, each once"
        node.stop()
