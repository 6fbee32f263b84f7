"""The agent finds the kernel, initrd and command line a written image's own boot loader would boot.

Every disk here is a real image: partition tables by sfdisk, file systems by mkfs from directory trees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from disk_images import (
    Disk,
    Link,
    blkid,
    btrfs,
    debian_grub_cfg,
    ext4,
    grubenv,
    luks,
    make_tree,
    require_tools,
    vfat,
    xfs,
)

from rhaas.agent import bls, bootentry, grubcfg
from rhaas.agent.bootentry import BootEntryError, find_boot_entry, scan

NEW, OLD = "6.1.0-18-amd64", "6.1.0-17-amd64"
KERNEL_NEW = os.urandom(3 * 4096 + 123)  # several blocks, not a multiple of any
KERNEL_OLD = os.urandom(2 * 4096 + 7)
INITRD_NEW = os.urandom(70_001)
INITRD_OLD = os.urandom(5_003)

GPT_BIOS_ROOT = """label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
"""


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    require_tools()


def _fs_uuid(image: Path) -> str:
    return blkid(image)["UUID"]


def _boot_files(prefix: str = "/boot") -> dict[str, bytes | str | Link | None]:
    return {
        f"{prefix}/vmlinuz-{NEW}": KERNEL_NEW,
        f"{prefix}/initrd.img-{NEW}": INITRD_NEW,
        f"{prefix}/vmlinuz-{OLD}": KERNEL_OLD,
        f"{prefix}/initrd.img-{OLD}": INITRD_OLD,
    }


def _debian_disk(tmp_path: Path, default: str = "0", env: dict[str, str] | None = None) -> tuple[Path, str]:
    """GPT: BIOS boot + ext4 root with /boot/grub/grub.cfg (grub-mkconfig's shape) and the /vmlinuz links."""
    tree = make_tree(
        tmp_path / "root",
        {
            **_boot_files(),
            "/vmlinuz": Link(f"boot/vmlinuz-{NEW}"),
            "/initrd.img": Link(f"boot/initrd.img-{NEW}"),
            "/vmlinuz.old": Link(f"boot/vmlinuz-{OLD}"),
            "/etc/fstab": "# /etc/fstab\nUUID=placeholder / ext4 errors=remount-ro 0 1\n",
            "/boot/grub/grubenv": grubenv(**(env or {})),
        },
    )
    image = ext4(tmp_path / "root.img", 48, tree)
    uuid = _fs_uuid(image)
    cfg = debian_grub_cfg(uuid, uuid, [NEW, OLD], default=default)
    # The grub.cfg names the file system's UUID, which exists once it is made: make it again with it.
    (tree / "boot/grub/grub.cfg").write_text(cfg)
    (tree / "etc/fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
    image = ext4(tmp_path / "root.img", 48, tree, "-U", uuid)
    disk = Disk(tmp_path / "disk.img", 64, GPT_BIOS_ROOT)
    disk.put(2, image)
    return disk.path, uuid


def _find(path: Path, **overrides: str | None) -> bootentry.BootEntry:
    with open(path, "rb") as dev:
        entry = find_boot_entry(scan(dev), **overrides)
        # Read while the device is open: the entry reads lazily.
        entry._kernel_bytes = entry.read_kernel()  # type: ignore[attr-defined]
        entry._initrd_bytes = entry.read_initrd()  # type: ignore[attr-defined]
    return entry


def test_debian_grub_default_entry_is_the_newest_kernel(tmp_path: Path) -> None:
    path, uuid = _debian_disk(tmp_path)
    entry = _find(path)
    assert entry.method == "grub"
    assert entry.title == "Debian GNU/Linux"
    assert str(entry.kernel) == f"/boot/vmlinuz-{NEW} on p2"
    assert [str(i) for i in entry.initrds] == [f"/boot/initrd.img-{NEW} on p2"]
    assert entry.cmdline == f"BOOT_IMAGE=/boot/vmlinuz-{NEW} root=UUID={uuid} ro quiet"
    assert entry._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]
    assert entry._initrd_bytes == INITRD_NEW + bytes(-len(INITRD_NEW) % 4)  # type: ignore[attr-defined]
    assert "grub.cfg on p2" in entry.source


def test_grub_saved_entry_through_the_submenu_picks_the_older_kernel(tmp_path: Path) -> None:
    # GRUB_DEFAULT=saved, and grub-set-default wrote a submenu path of titles into grubenv.
    path, uuid = _debian_disk(
        tmp_path,
        default="saved",
        env={"saved_entry": f"Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux {OLD}"},
    )
    entry = _find(path)
    assert entry.method == "grub"
    assert entry.title == f"Debian GNU/Linux, with Linux {OLD}"
    assert entry._kernel_bytes == KERNEL_OLD  # type: ignore[attr-defined]
    assert entry.cmdline.startswith(f"BOOT_IMAGE=/boot/vmlinuz-{OLD} root=UUID={uuid} ro")


def test_grub_numeric_submenu_default(tmp_path: Path) -> None:
    path, uuid = _debian_disk(tmp_path, default="1>3")  # advanced options, 4th: OLD's recovery mode
    entry = _find(path)
    assert entry.title == f"Debian GNU/Linux, with Linux {OLD} (recovery mode)"
    assert entry.cmdline == f"BOOT_IMAGE=/boot/vmlinuz-{OLD} root=UUID={uuid} ro single"


def test_grub_next_entry_in_grubenv_wins_once(tmp_path: Path) -> None:
    # grub-reboot writes a full path; a bare title of a submenu's entry would name nothing at the top.
    path, _ = _debian_disk(
        tmp_path,
        env={"next_entry": f"Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux {OLD}"},
    )
    entry = _find(path)
    assert entry.kernel.path == f"/boot/vmlinuz-{OLD}"


def test_a_default_that_names_nothing_falls_back_to_entry_0(tmp_path: Path) -> None:
    path, _ = _debian_disk(tmp_path, default="no such entry")
    assert _find(path).kernel.path == f"/boot/vmlinuz-{NEW}"


def test_separate_boot_esp_stub_and_xfs_root(tmp_path: Path) -> None:
    """ESP (vfat) with EFI/debian/grub.cfg → configfile the /boot (ext4) one; root is xfs."""
    boot_tree = make_tree(tmp_path / "boot", {**_boot_files(""), "/grub/grubenv": grubenv()})
    boot = ext4(tmp_path / "boot.img", 24, boot_tree)
    boot_uuid = _fs_uuid(boot)
    root_tree = make_tree(tmp_path / "root", {"/etc/hostname": "node\n", "/boot": None})
    root = xfs(tmp_path / "root.img", 300, root_tree)
    root_uuid = _fs_uuid(root)
    (boot_tree / "grub/grub.cfg").write_text(
        debian_grub_cfg(boot_uuid, root_uuid, [NEW, OLD], device="hd0,gpt2", boot_prefix="")
    )
    boot = ext4(tmp_path / "boot.img", 24, boot_tree, "-U", boot_uuid)
    esp_tree = make_tree(
        tmp_path / "esp",
        {
            "/EFI/debian/grub.cfg": (
                f"search.fs_uuid {boot_uuid} root hd0,gpt2 \nset prefix=($root)'/grub'\n"
                "configfile $prefix/grub.cfg\n"
            ),
            "/EFI/debian/grubx64.efi": b"MZ" + bytes(1000),
        },
    )
    esp = vfat(tmp_path / "esp.img", 32, esp_tree, label="ESP")
    disk = Disk(
        tmp_path / "disk.img",
        400,
        "label: gpt\nsize=33MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
        "size=25MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    )
    disk.put(1, esp)
    disk.put(2, boot)
    disk.put(3, root)
    entry = _find(disk.path)
    assert entry.method == "grub"
    assert str(entry.kernel) == f"/vmlinuz-{NEW} on p2"
    assert entry._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]
    assert f"root=UUID={root_uuid} ro" in entry.cmdline
    with open(disk.path, "rb") as dev:
        volumes = {v.name: v for v in scan(dev)}
    assert (volumes["p1"].kind, volumes["p2"].kind, volumes["p3"].kind) == ("vfat", "ext4", "xfs")


def test_links_across_a_separate_boot_with_root_from_fstab(tmp_path: Path) -> None:
    """No grub.cfg: /vmlinuz on the xfs root points into /boot, a separate ext4 named in /etc/fstab."""
    boot = ext4(tmp_path / "boot.img", 24, make_tree(tmp_path / "boot", _boot_files("")), label="BOOT")
    root_tree = make_tree(
        tmp_path / "root",
        {
            "/boot": None,
            "/vmlinuz": Link(f"boot/vmlinuz-{NEW}"),
            "/initrd.img": Link(f"/boot/initrd.img-{NEW}"),
            "/etc/fstab": "LABEL=ROOT / xfs defaults 0 1\nLABEL=BOOT /boot ext4 defaults 0 2\n",
        },
    )
    root = xfs(tmp_path / "root.img", 300, root_tree, label="ROOT")
    disk = Disk(tmp_path / "disk.img", 400, "label: gpt\nsize=25MiB\nsize=330MiB\n")
    disk.put(1, boot)
    disk.put(2, root)
    entry = _find(disk.path)
    assert entry.method == "links"
    assert str(entry.kernel) == f"/vmlinuz-{NEW} on p1"
    assert [str(i) for i in entry.initrds] == [f"/initrd.img-{NEW} on p1"]
    assert entry.cmdline == "root=LABEL=ROOT ro"
    assert entry._initrd_bytes[: len(INITRD_NEW)] == INITRD_NEW  # type: ignore[attr-defined]


def test_xfs_root_with_grub(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "root", {**_boot_files(), "/etc/fstab": "", "/boot/grub": None})
    root = xfs(tmp_path / "root.img", 300, tree)
    uuid = _fs_uuid(root)
    (tree / "boot/grub/grub.cfg").write_text(debian_grub_cfg(uuid, uuid, [NEW]))
    root = xfs(tmp_path / "root.img", 300, tree, "-m", f"uuid={uuid}")
    disk = Disk(tmp_path / "disk.img", 320, GPT_BIOS_ROOT)
    disk.put(2, root)
    entry = _find(disk.path)
    assert (entry.method, entry.kernel.volume.kind) == ("grub", "xfs")
    assert entry._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]


def _bls_esp(tmp_path: Path, loader_conf: str | None) -> Path:
    machine = "6a9857a393724b7a981ebb5b8495b9ea"
    files: dict[str, bytes | str | Link | None] = {
        f"/{machine}/{NEW}/linux": KERNEL_NEW,
        f"/{machine}/{NEW}/initrd": INITRD_NEW,
        f"/{machine}/{OLD}/linux": KERNEL_OLD,
        f"/{machine}/{OLD}/initrd": INITRD_OLD,
        "/EFI/systemd/systemd-bootx64.efi": b"MZ" + bytes(100),
    }
    for version in (OLD, NEW):  # written oldest first: order on disk must not matter
        files[f"/loader/entries/{machine}-{version}.conf"] = (
            f"# Boot Loader Specification type#1 entry\ntitle      Debian GNU/Linux 12 (bookworm)\n"
            f"version    {version}\nmachine-id {machine}\nsort-key   debian\n"
            f"options    root=PARTUUID=placeholder ro quiet\n"
            f"linux      /{machine}/{version}/linux\ninitrd     /{machine}/{version}/initrd\n"
        )
    if loader_conf is not None:
        files["/loader/loader.conf"] = loader_conf
    esp = vfat(tmp_path / "esp.img", 64, make_tree(tmp_path / "esp", files), "-F", "32")
    root = ext4(tmp_path / "root.img", 16, make_tree(tmp_path / "root", {"/etc/fstab": ""}))
    disk = Disk(
        tmp_path / "disk.img",
        100,
        "label: gpt\nsize=65MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
        "type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n",
    )
    disk.put(1, esp)
    disk.put(2, root)
    return disk.path


def test_bls_on_the_esp_boots_the_newest_version(tmp_path: Path) -> None:
    entry = _find(_bls_esp(tmp_path, loader_conf="timeout 3\n"))
    assert entry.method == "bls"
    assert entry.kernel.path.endswith(f"/{NEW}/linux") and entry.kernel.volume.name == "p1"
    assert entry._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]
    assert entry.cmdline == "root=PARTUUID=placeholder ro quiet"
    assert entry.title == "Debian GNU/Linux 12 (bookworm)"


def test_bls_loader_conf_default_picks_its_entry(tmp_path: Path) -> None:
    entry = _find(_bls_esp(tmp_path, loader_conf=f"timeout 3\ndefault *-{OLD}.conf\n"))
    assert entry._kernel_bytes == KERNEL_OLD  # type: ignore[attr-defined]
    assert entry._initrd_bytes[: len(INITRD_OLD)] == INITRD_OLD  # type: ignore[attr-defined]


def test_fedora_blscfg_honours_grubenv_saved_entry_and_kernelopts(tmp_path: Path) -> None:
    machine = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
    versions = ("6.5.6-300.fc39.x86_64", "6.5.10-300.fc39.x86_64", "6.5.6-200.fc39.x86_64")
    files: dict[str, bytes | str | Link | None] = {"/etc/fstab": ""}
    for v in versions:
        files[f"/boot/vmlinuz-{v}"] = v.encode() * 100
        files[f"/boot/initramfs-{v}.img"] = b"initrd " + v.encode()
        files[f"/boot/loader/entries/{machine}-{v}.conf"] = (
            f"title Fedora Linux ({v}) 39 (Thirty Nine)\nversion {v}\nlinux /boot/vmlinuz-{v}\n"
            f"initrd /boot/initramfs-{v}.img\noptions $kernelopts\n"
            "grub_users $grub_users\ngrub_class fedora\n"
        )
    files["/boot/grub2/grub.cfg"] = (
        "set pager=1\nif [ -f ${config_directory}/grubenv ]; then\n"
        "  load_env -f ${config_directory}/grubenv\n"
        'elif [ -s $prefix/grubenv ]; then\n  load_env\nfi\nif [ "${next_entry}" ] ; then\n'
        '   set default="${next_entry}"\nelse\n   set default="${saved_entry}"\nfi\n'
        "insmod blscfg\nblscfg\n"
    )
    files["/boot/grub2/grubenv"] = grubenv(
        saved_entry=f"{machine}-{versions[0]}", kernelopts="root=UUID=abc ro rhgb quiet"
    )
    root = ext4(tmp_path / "root.img", 16, make_tree(tmp_path / "root", files))
    disk = Disk(tmp_path / "disk.img", 20, "label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    disk.put(1, root)
    entry = _find(disk.path)
    assert entry.method == "bls"
    assert entry.kernel.path == f"/boot/vmlinuz-{versions[0]}"  # saved, not the newest
    assert entry.cmdline == "root=UUID=abc ro rhgb quiet"


def test_mbr_with_a_logical_root_partition(tmp_path: Path) -> None:
    disk = Disk(
        tmp_path / "disk.img",
        120,
        "label: dos\nsize=20MiB, type=83\nsize=10MiB, type=82\ntype=5\nsize=20MiB, type=83\ntype=83\n",
    )
    root_tree = make_tree(
        tmp_path / "root",
        {
            **_boot_files(),
            "/boot/vmlinuz": Link(f"vmlinuz-{NEW}"),
            "/boot/initrd.img": Link(f"initrd.img-{NEW}"),
            "/etc/fstab": f"# static\nPARTUUID={disk.id.removeprefix('0x')}-06 / ext4 defaults 0 1\n",
        },
    )
    disk.put(6, ext4(tmp_path / "root.img", 40, root_tree))
    entry = _find(disk.path)
    assert entry.method == "links"
    assert str(entry.kernel) == f"/boot/vmlinuz-{NEW} on p6"
    assert entry.cmdline == f"root=PARTUUID={disk.id.removeprefix('0x')}-06 ro"
    assert entry._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]


def test_a_whole_disk_file_system_without_a_table(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "root",
        {**_boot_files(), "/vmlinuz": Link(f"boot/vmlinuz-{OLD}"), "/etc/fstab": "/dev/vda / ext4 rw 0 1\n"},
    )
    image = ext4(tmp_path / "disk.img", 32, tree)
    entry = _find(image)
    assert (entry.method, entry.kernel.volume.name, entry.cmdline) == ("links", "disk", "root=/dev/vda ro")
    assert entry.initrds == []


def test_luks_root_is_refused_naming_it(tmp_path: Path) -> None:
    disk = Disk(tmp_path / "disk.img", 40, GPT_BIOS_ROOT)
    disk.put(2, luks(tmp_path / "root.img", 30))
    with pytest.raises(BootEntryError) as caught:
        _find(disk.path)
    message = str(caught.value)
    assert message.startswith("no bootable Linux found: no file system on the disk can be read")
    assert "p2 is encrypted (LUKS)" in message
    assert "p1 is BIOS boot, no file system" in message


def test_btrfs_root_is_refused_as_unsupported(tmp_path: Path) -> None:
    disk = Disk(tmp_path / "disk.img", 140, GPT_BIOS_ROOT)
    disk.put(2, btrfs(tmp_path / "root.img", 120))
    with pytest.raises(BootEntryError, match=r"p2 is btrfs, which is not supported"):
        _find(disk.path)


def test_nothing_bootable_names_every_place_searched(tmp_path: Path) -> None:
    esp = vfat(tmp_path / "esp.img", 16, make_tree(tmp_path / "esp", {"/EFI/BOOT/BOOTX64.EFI": b"MZ"}))
    root = ext4(tmp_path / "root.img", 16, make_tree(tmp_path / "root", {"/etc/fstab": "", "/boot": None}))
    disk = Disk(
        tmp_path / "disk.img",
        40,
        "label: gpt\nsize=17MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
        "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    )
    disk.put(1, esp)
    disk.put(2, root)
    with pytest.raises(BootEntryError) as caught:
        _find(disk.path)
    message = str(caught.value)
    for searched in (
        "/loader/entries on p1 (vfat): not found",
        "/boot/loader/entries on p2 (ext4): not found",
        "/boot/grub/grub.cfg, /grub/grub.cfg, /boot/grub2/grub.cfg, /grub2/grub.cfg, /EFI/*/grub.cfg "
        "on p2 (ext4): not found",
        "/vmlinuz on p2 (ext4): missing",
        "/boot/vmlinuz on p2 (ext4): missing",
        "/etc/fstab on p1 (vfat): not found",
    ):
        assert searched in message
    assert caught.value.unreadable == []


def test_overrides_replace_what_was_found(tmp_path: Path) -> None:
    path, uuid = _debian_disk(tmp_path)
    entry = _find(path, kernel=f"/boot/vmlinuz-{OLD}", initrd="", cmdline="console=ttyS0 root=/dev/vda2")
    assert entry.method == "grub"  # found, then overridden
    assert entry._kernel_bytes == KERNEL_OLD  # type: ignore[attr-defined]
    assert entry.initrds == [] and entry._initrd_bytes == b""  # type: ignore[attr-defined]
    assert entry.cmdline == "console=ttyS0 root=/dev/vda2"
    assert entry.overridden == [f"kernel /boot/vmlinuz-{OLD} on p2", "initrd none", "cmdline"]
    only_initrd = _find(path, initrd=f"p2:/boot/initrd.img-{OLD}")
    assert only_initrd._kernel_bytes == KERNEL_NEW  # type: ignore[attr-defined]
    assert only_initrd._initrd_bytes[: len(INITRD_OLD)] == INITRD_OLD  # type: ignore[attr-defined]


def test_a_kernel_override_boots_an_image_with_no_boot_loader(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "root", {"/opt/k": KERNEL_OLD, "/etc/fstab": "LABEL=r / ext4 rw 0 1\n"})
    disk = Disk(tmp_path / "disk.img", 20, "label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    disk.put(1, ext4(tmp_path / "root.img", 16, tree))
    entry = _find(disk.path, kernel="/opt/k")
    assert (entry.method, entry.cmdline) == ("override", "root=LABEL=r ro")
    assert entry._kernel_bytes == KERNEL_OLD  # type: ignore[attr-defined]
    with pytest.raises(BootEntryError, match="override '/nope': no volume has it"):
        _find(disk.path, kernel="/nope")


# Pure functions: no images needed.
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("6.1.0-18-amd64", "6.1.0-17-amd64", 1),
        ("6.5.10-300.fc39", "6.5.6-300.fc39", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0", "1.0.1", -1),
        ("123-9", "123.1-1", -1),
        ("00123", "123", 0),
        ("1.0a", "1.0", 1),
        ("a", "1", -1),
        ("1.0^p1", "1.0", 1),
    ],
)
def test_version_compare_follows_the_uapi_rules(a: str, b: str, expected: int) -> None:
    assert bls.version_compare(a, b) == expected
    assert bls.version_compare(b, a) == -expected


def test_bls_sort_puts_sort_keys_first_and_used_up_entries_last() -> None:
    ref = bootentry.FileRef(bootentry.DiskVolume("p1", None, None, None), "/x")

    def entry(name: str, text: str) -> bls.BlsEntry:
        return bls.parse_bls(text + "linux /k\n", name, ref)

    entries = [
        entry("a-5.conf", "version 5\n"),
        entry("a-10.conf", "version 10\n"),
        entry("z+0-3.conf", "sort-key aaa\nversion 99\n"),
        entry("c.conf", "sort-key xx\nversion 5\n"),
        entry("cx.conf", "sort-key xx\nversion 10\n"),
        entry("d.conf", "sort-key kk\nversion 100\n"),
    ]
    assert [e.id for e in bls.sort_bls(entries)] == ["d", "cx", "c", "a-10", "a-5", "z"]


class _Files(grubcfg.GrubHost):
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, device: str, path: str) -> bytes | None:
        text = self.files.get(f"{device}:{path}")
        return None if text is None else text.encode()

    def size(self, device: str, path: str) -> int | None:
        data = self.read(device, path)
        return None if data is None else len(data)

    def search(self, kind: str, value: str) -> str | None:
        return "hd0,gpt9" if (kind, value) == ("fs_uuid", "1234") else None


def test_grub_variables_ifs_and_quoting() -> None:
    cfg = r"""
set params="quiet splash"
opt='$notexpanded'
menuentry "Linux" --id lin {
    search --fs-uuid --set=root 1234
    linux ($root)/vmlinuz root=/dev/sda1 $params ${extra} $opt
    initrd /initrd.img /microcode.img
}
if [ "$grub_platform" = "efi" ]; then set params=efi; menuentry 'Firmware' { fwsetup; }; fi
if [ -z "$nothing" -a -n x ]; then set params=unknown; fi
if true; then set extra="a\"b"; fi
"""
    host = _Files({"hd0,gpt1:/boot/grub/grub.cfg": cfg})
    choice = grubcfg.default_entry(host, "hd0,gpt1", "/boot/grub/grub.cfg")
    assert choice.title == "Linux"
    assert choice.kernel == ("hd0,gpt9", "/vmlinuz")
    assert choice.initrds == [("hd0,gpt9", "/initrd.img"), ("hd0,gpt9", "/microcode.img")]
    assert choice.cmdline == 'BOOT_IMAGE=(hd0,gpt9)/vmlinuz root=/dev/sda1 quiet splash a"b $notexpanded'
    # Entry 1 is the firmware's (defined under an if on $grub_platform): counted, and not Linux.
    with pytest.raises(grubcfg.GrubError, match="'Firmware' .* loads no Linux kernel"):
        grubcfg.default_entry(
            _Files({"hd0,gpt1:/boot/grub/grub.cfg": cfg + "set default=1\n"}),
            "hd0,gpt1",
            "/boot/grub/grub.cfg",
        )


@pytest.mark.parametrize(
    ("cfg", "error"),
    [
        ("menuentry 'x' {\n linux /k\n", "body is not closed"),
        ("if [ a ]; then\n", "if without"),
        ("set default=0\n", "no menu entries"),
        ("menuentry 'Windows' {\n chainloader +1\n}\n", "runs chainloader, not a Linux kernel"),
        ("menuentry 'x' {\n echo nothing\n}\n", "loads no Linux kernel"),
        ("configfile /other.cfg\n", "/other.cfg on hd0,gpt1 is missing"),
        ("source /a.cfg\n" * 3 + "menuentry 'x' { linux /k; }\n", None),
    ],
)
def test_grub_configs_that_boot_nothing_say_why(cfg: str, error: str | None) -> None:
    host = _Files({"hd0,gpt1:/grub.cfg": cfg, "hd0,gpt1:/a.cfg": "set a=1\n"})
    if error is None:
        assert grubcfg.default_entry(host, "hd0,gpt1", "/grub.cfg").kernel == ("hd0,gpt1", "/k")
        return
    with pytest.raises(grubcfg.GrubError, match=error):
        grubcfg.default_entry(host, "hd0,gpt1", "/grub.cfg")


def test_a_configfile_loop_ends_with_an_error() -> None:
    host = _Files({"hd0,gpt1:/grub.cfg": "configfile /grub.cfg\n"})
    with pytest.raises(grubcfg.GrubError, match="nested more than"):
        grubcfg.default_entry(host, "hd0,gpt1", "/grub.cfg")
