"""Lab nodes with a server's hardware (UEFI or BIOS firmware, Intel NICs, NVMe or MegaRAID disks) and a
POST that holds the firmware at every firmware boot, as a real server's does."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhaas.lab import images
from rhaas.lab.qemu import CPU_MODELS, OVMF_CODE, PROFILES, QemuNode

needs_qemu = [
    pytest.mark.qemu,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"),
]

#: (vendor, device) of the PCI functions each profile's NIC and disk controller show the guest.
PCI_IDS = {
    "virtio-net-pci": (0x1AF4, 0x1000),
    "e1000e": (0x8086, 0x10D3),
    "e1000": (0x8086, 0x100E),
    "virtio": (0x1AF4, 0x1001),
    "nvme": (0x1B36, 0x0010),
    "megasas": (0x1000, 0x0079),  # MegaRAID SAS 2108 (gen2)
}


def test_each_profile_names_its_firmware_nic_and_disk_on_the_command_line(tmp_path: Path):
    seen = set()
    for name, profile in PROFILES.items():
        node = QemuNode("p1", tmp_path / name, profile=name)
        cmd = " ".join(node.command())
        assert f"-device {profile.nic_model},netdev=net0" in cmd
        assert ("if=pflash" in cmd) == (profile.firmware == "uefi")
        assert {"virtio": "if=virtio", "nvme": "-device nvme,", "megasas": "megasas-gen2"}[
            profile.disk_bus
        ] in cmd
        seen.add((profile.firmware, profile.nic_model, profile.disk_bus))
    assert len(seen) == len(PROFILES), "no two profiles are the same hardware"


def test_uefi_nodes_get_their_boot_order_as_boot_indexes(tmp_path: Path):
    """OVMF ignores ``-boot order``: a UEFI node's NIC and disk carry the order as ``bootindex``."""
    node = QemuNode("p1", tmp_path / "uefi", profile="uefi-nvme")
    for device, first in (("pxe", "nic0"), ("disk", "disk0dev"), ("none", "nic0")):
        node.set_boot_device(device)  # type: ignore[arg-type]
        cmd = node.command()
        nic = next(a for a in cmd if a.startswith("e1000e,"))
        disk = next(a for a in cmd if a.startswith("nvme,"))
        indexes = {"nic0": nic, "disk0dev": disk}
        assert f"id={first},bootindex=1" in indexes[first], (device, cmd)
        other = ({"nic0", "disk0dev"} - {first}).pop()
        assert f"id={other},bootindex=2" in indexes[other], (device, cmd)
    bios = QemuNode("p1", tmp_path / "bios", profile="bios-megasas")
    assert not any("bootindex" in a for a in bios.command()), "SeaBIOS takes -boot order"


def test_unknown_profile_and_post_out_of_range_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown node profile 'sparc'.*virtio"):
        QemuNode("p1", tmp_path, profile="sparc")
    with pytest.raises(ValueError, match="post_seconds"):
        QemuNode("p1", tmp_path, post_seconds=-1)


@pytest.fixture
def make_node(tmp_path_factory) -> Iterator:
    made: list[QemuNode] = []

    def make(profile: str, post_seconds: float = 0.0, flavour: str = "cloud") -> QemuNode:
        image = images.build_test_os(f"testos-{flavour}", flavour=flavour)
        node = QemuNode(
            "p1", tmp_path_factory.mktemp(profile), memory_mb=512, disk_size="64M", profile=profile,
            post_seconds=post_seconds, kernel=image.kernel, initrd=image.initrd,
            append=f"{image.cmdline} rhaas.ip=10.0.0.5/24",
        )  # fmt: skip
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.stop()
            assert not node.is_running()


def _pci_ids(node: QemuNode) -> set[tuple[int, int]]:
    return {
        (dev["id"]["vendor"], dev["id"]["device"]) for bus in node.qmp("query-pci") for dev in bus["devices"]
    }


@pytest.mark.parametrize("name", sorted(set(PROFILES) - {"virtio"}))  # virtio: every other lab test
def test_a_node_of_each_profile_boots_with_its_hardware(make_node, name: str):
    profile = PROFILES[name]
    if profile.firmware == "uefi" and not OVMF_CODE.exists():
        pytest.skip(f"no UEFI firmware at {OVMF_CODE} (Debian package ovmf)")
    node = make_node(name, flavour="generic")  # Debian's generic kernel: the servers' drivers
    node.start()
    up = node.wait_for_console(r"RHAAS-TESTOS testos-generic UP ip=(\S+)(.*)", 300)
    assert up.group(1) == "10.0.0.5/24" and "net=" not in up.group(2), f"the NIC works: {up.group(0)}"
    assert f"disk={profile.guest_disk}" in up.group(2), up.group(0)
    ids = _pci_ids(node)
    assert PCI_IDS[profile.nic_model] in ids
    assert PCI_IDS[profile.disk_bus] in ids
    assert node.firmware_boots == 1
    if profile.firmware == "uefi":
        assert node.efivars.stat().st_size == Path(str(OVMF_CODE).replace("CODE", "VARS")).stat().st_size


@pytest.mark.skipif(not OVMF_CODE.exists(), reason=f"no UEFI firmware at {OVMF_CODE} (Debian package ovmf)")
def test_a_running_uefi_node_takes_a_new_boot_device_for_its_next_reset(make_node):
    """The BMC's boot override reaches a running UEFI node's devices (QEMU gives the firmware the new
    order at the reset), both ways round, with no restart of QEMU."""
    node = make_node("uefi-nvme", flavour="generic")
    node.start()
    pid = node.pid()

    def indexes() -> dict[str, int]:
        return {
            device: node.qmp("qom-get", {"path": f"/machine/peripheral/{device}", "property": "bootindex"})
            for device in ("nic0", "disk0dev")
        }

    assert indexes() == {"nic0": 1, "disk0dev": 2}
    node.set_boot_device("disk")
    assert indexes() == {"nic0": 2, "disk0dev": 1}
    node.set_boot_device("pxe")
    assert indexes() == {"nic0": 1, "disk0dev": 2}
    node.reset()
    assert node.pid() == pid and node.firmware_boots == 2


@pytest.mark.parametrize("name", ["virtio"])
def test_post_holds_the_firmware_at_every_firmware_boot(make_node, name: str):
    post = 3.0
    node = make_node(name, post_seconds=post)
    node.start()
    started = node.last_firmware_boot
    assert node.qmp("query-status")["status"] == "prelaunch", "held before the firmware's first instruction"
    node.wait_for_console(images.build_test_os("testos-cloud").up_regex, 300)
    assert time.monotonic() - started >= post
    assert node.qmp("query-status")["status"] == "running"
    node.reset()
    held = node.last_firmware_boot
    assert node.qmp("query-status")["status"] == "paused", "a reset is a firmware boot: held again"
    node.wait_for_console(images.build_test_os("testos-cloud").up_regex, 300)
    assert time.monotonic() - held >= post
    assert node.firmware_boots == 2


def test_the_cli_offers_the_labs_profiles():
    from rhaas.cli import lab as cli_lab

    assert tuple(PROFILES) == cli_lab.NODE_PROFILES
    assert CPU_MODELS == cli_lab.CPU_MODELS
