"""A whole-disk image deployed by the real agent against a fake (but real HTTP) agent API: the image's
data chunks written, its own GRUB default entry found and kexec'd with the return payload, cloud-init's
seed written as a CIDATA partition. The disk is a real one: sfdisk's GPT, mkfs's ext4, grub-mkconfig's
grub.cfg shape."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest
from disk_images import Disk, Link, blkid, debian_grub_cfg, ext4, make_tree, require_tools
from test_fpbl import FakeAgentApi, FakeSystem, _agent, _crashed_agent, _fake_fpbl

from rhaas.lab import images

MIB = 1 << 20
VERSION = "6.1.0-18-amd64"
GPT_BIOS_ROOT = """label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPrcnJ8nCk/4Ez0kWhmYBn/EyjD4Q+fCkTPcYv6V7Crq alice@laptop"


@pytest.fixture
def fake_api():
    api = FakeAgentApi()
    yield api
    api.close()


def debian_disk(tmp_path: Path, kernel: bytes, initrd: bytes) -> tuple[Path, str]:
    """A 24 MiB disk: GPT with BIOS boot and an ext4 root holding /boot, grub.cfg and the links."""
    require_tools()
    tree = make_tree(tmp_path / "root", {
        f"/boot/vmlinuz-{VERSION}": kernel, f"/boot/initrd.img-{VERSION}": initrd,
        "/vmlinuz": Link(f"boot/vmlinuz-{VERSION}"), "/initrd.img": Link(f"boot/initrd.img-{VERSION}"),
        "/etc/fstab": "UUID=placeholder / ext4 errors=remount-ro 0 1\n",
    })  # fmt: skip
    uuid = blkid(ext4(tmp_path / "root.img", 20, tree))["UUID"]
    (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
    (tree / "boot/grub/grub.cfg").write_text(debian_grub_cfg(uuid, uuid, [VERSION]))
    image = ext4(tmp_path / "root.img", 20, tree, "-U", uuid)
    disk = Disk(tmp_path / "disk.img", 24, GPT_BIOS_ROOT)
    disk.put(2, image)
    return disk.path, uuid


def chunked(api: FakeAgentApi, path: Path, size: int = 4 * MIB) -> dict:
    """The image as the store keeps it: its non-zero 4 MiB windows, served by the fake API."""
    data, extents = path.read_bytes(), []
    for offset in range(0, len(data), size):
        window = data[offset : offset + size]
        if window.count(0) == len(window):
            continue
        digest = hashlib.sha256(window).hexdigest()
        api.files[digest] = window
        extents.append({"offset": offset, "length": len(window), "sha256": digest})
    return {"virtual_size": len(data), "zeroed": False, "chunk_url": "files/{sha256}", "extents": extents}


def test_a_whole_disk_image_boots_its_own_grub_default_with_the_way_back_and_a_seed(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    kernel = b"DEBIAN-KERNEL" * 5000
    initrd = images.write_cpio([images.file_entry("init", b"#!/bin/sh\n", 0o755)])
    path, uuid = debian_disk(tmp_path / "img", kernel, initrd)
    image = chunked(fake_api, path)
    holes = 24 * MIB - sum(e["length"] for e in image["extents"])
    assert holes > 0, "the test image has holes"
    fake_api.push({
        "action": "deploy", "job": "j1", "image": image, "cmdline": "",
        "boot": {"cmdline": None}, "secret": "s3cret-of-j1", "return_token": "token-of-j1",
        "seed": {"instance_id": "j1", "hostname": "n1", "ssh_keys": [KEY], "user_data": None},
    })  # fmt: skip
    _agent(fake_api, system).run(rounds=2)

    done = {r["phase"]: r["detail"] for r in fake_api.reports if r["job"] == "j1" and r["state"] == "done"}
    assert "holes written with zeros" in done["write-disk"], done  # the disk held 0xee: holes are written
    assert "grub entry" in done["find-boot"] and f"vmlinuz-{VERSION}" in done["find-boot"], done
    [(k, i, cmdline)] = system.kexecs
    assert Path(k).read_bytes() == kernel
    assert Path(i).read_bytes().startswith(initrd), "the image's initrd, the return payload after it"
    assert f"root=UUID={uuid}" in cmdline.split() and "rdinit=/rhaas/init" in cmdline.split()

    disk = (tmp_path / "dev/vda").read_bytes()
    written = path.read_bytes()
    # The partitions' bytes, holes included (the tables before them gained the seed's partition).
    assert disk[MIB : 23 * MIB] == written[MIB : 23 * MIB] and disk[:446] == written[:446]
    table = json.loads(subprocess.run(["sfdisk", "--json", str(tmp_path / "dev/vda")], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]  # fmt: skip
    seed = table["partitions"][-1]
    assert seed["name"] == "cidata" and len(table["partitions"]) == 3
    part = tmp_path / "cidata.img"
    part.write_bytes(disk[seed["start"] * 512 : (seed["start"] + seed["size"]) * 512])
    assert blkid(part)["LABEL"] == "CIDATA"
    meta = subprocess.run(["mtype", "-i", str(part), "::meta-data"], check=True, capture_output=True).stdout
    assert json.loads(meta) == {"instance-id": "j1", "local-hostname": "n1", "public-keys": [KEY]}


class _LoadWatched(FakeSystem):
    """Records which files sit in the agent's tmpfs at each kexec load."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.loaded_with: list[list[str]] = []

    def kexec_load(self, kernel: str, initrd: str, cmdline: str) -> None:
        self.loaded_with.append(sorted(p.name for p in Path(self.tmp).iterdir()))
        super().kexec_load(kernel, initrd, cmdline)


def _crashed_deploy(fake_api, tmp_path: Path, initrd_mib: int, available_kb: int) -> _LoadWatched:
    """A whole-disk image with an initrd of ``initrd_mib`` MiB deployed from the return FPBL with
    ``available_kb`` available, its return payload prepared as the idle agent does."""
    system = _LoadWatched(tmp_path)
    _fake_fpbl(tmp_path)
    system.set_available(available_kb)
    initrd = images.write_cpio([images.file_entry("init", b"#!/bin/sh\n", 0o755)]) + bytes(initrd_mib * MIB)
    path, _uuid = debian_disk(tmp_path / "img", b"DEBIAN-KERNEL" * 5000, initrd)
    fake_api.push({"action": "deploy", "job": "j1", "image": chunked(fake_api, path), "cmdline": "",
                   "boot": {"cmdline": None}})  # fmt: skip
    agent = _crashed_agent(fake_api, system)
    agent.payload.made()
    agent.run(rounds=1)
    return system


def test_a_whole_disk_image_from_the_crash_kernel_restores_the_memory_before_writing(fake_api, tmp_path):
    """From the return FPBL, a whole-disk image's boot files are known only once it is written; a
    distribution's do not fit there with the return payload, and checking after the write would write the
    image twice (bench/real_os.py: 95 s against 63 s). Unless a distribution's would fit, the full FPBL
    is booted first, with nothing written."""
    system = _crashed_deploy(fake_api, tmp_path, 1, 150_000)  # 146 MiB: 3 x 32 MiB + 64 MiB is more
    start = fake_api.report_of("j1", "restore-memory", "start")
    assert start and "the deploy needs 160 MiB, the return FPBL has 146 MiB" in start["detail"], start
    assert not fake_api.report_of("j1", "write-disk", "start"), "nothing written before the restore"
    [(kernel, _initrd, _cmdline)] = system.kexecs
    assert kernel.endswith("rhaas/fpbl/vmlinuz"), "the full FPBL, not the image's kernel"
    assert system.loaded_with == [["fpbl.initrd"]], "the prepared return payload was freed first"


def test_an_image_bigger_than_guessed_frees_its_files_before_loading_the_full_fpbl(fake_api, tmp_path):
    """An image whose boot files outweigh the guess is found too big only once written: the full FPBL's
    load must not meet its kernel and initrd and the return payload still in the (RAM) tmpfs (a Debian
    13 image with dracut's initramfs had kexec killed for memory on the lab's nodes)."""
    system = _crashed_deploy(fake_api, tmp_path, 40, 170_000)  # 166 MiB: the guess fits, 40 MiB does not
    assert fake_api.report_of("j1", "write-disk", "done")
    start = fake_api.report_of("j1", "restore-memory", "start")
    assert start and "the return FPBL has 166 MiB available" in start["detail"], start
    [(kernel, _initrd, _cmdline)] = system.kexecs
    assert kernel.endswith("rhaas/fpbl/vmlinuz"), "the full FPBL, not the image's kernel"
    assert system.loaded_with == [["fpbl.initrd"]], system.loaded_with


def test_an_image_with_no_bootable_linux_says_what_was_searched(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    require_tools()
    disk = Disk(tmp_path / "blank.img", 8, GPT_BIOS_ROOT)
    disk.put(2, ext4(tmp_path / "empty.img", 5, make_tree(tmp_path / "empty", {"/etc/hostname": "x\n"})))
    fake_api.push({"action": "deploy", "job": "j1", "image": chunked(fake_api, disk.path), "cmdline": ""})
    _agent(fake_api, system).run(rounds=2)
    error = fake_api.report_of("j1", "find-boot", "error")
    searched = error["detail"] if error else ""
    assert "no bootable Linux found" in searched and "/boot/grub/grub.cfg" in searched, error
    assert "/loader/entries" in searched and "/etc/fstab" in searched, error
    assert system.kexecs == []


def test_a_deploy_through_the_peer_exchange_says_where_its_bytes_came_from(fake_api, tmp_path):
    """With ``peers`` in the work answer, the agent deploys through the exchange; its tracker here lists
    no peer, so every chunk comes from the server, and write-disk's detail says so, with no peer's
    address in it (the customer reads the job's history)."""
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    path, _ = debian_disk(tmp_path / "img", b"DEBIAN-KERNEL" * 5000,
                          images.write_cpio([images.file_entry("init", b"#!/bin/sh\n", 0o755)]))  # fmt: skip
    image = chunked(fake_api, path)
    free = socket.create_server(("127.0.0.1", 0))
    image["peers"] = {"url": "peers", "port": free.getsockname()[1]}
    free.close()
    fake_api.push({
        "action": "deploy", "job": "j1", "image": image, "cmdline": "", "boot": {"cmdline": None},
        "secret": "s3cret-of-j1", "return_token": "token-of-j1", "seed": None,
    })  # fmt: skip
    _agent(fake_api, system).run(rounds=2)
    done = {r["phase"]: r["detail"] for r in fake_api.reports if r["job"] == "j1" and r["state"] == "done"}
    data = sum(e["length"] for e in image["extents"])
    assert f"peer exchange: {data} bytes from the server, 0 from peers" in done["write-disk"], done
    assert len(system.kexecs) == 1
