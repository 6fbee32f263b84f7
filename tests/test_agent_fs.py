"""The agent's read-only partition table and file system readers, on images the real tools made."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
from disk_images import Disk, Link, blkid, btrfs, ext4, luks, make_tree, require_tools, run, sparse, vfat, xfs

from rhaas.agent import fs
from rhaas.agent.fs import ext4 as ext4_reader
from rhaas.agent.fs import xfs as xfs_reader
from rhaas.agent.partitions import PartitionError, read_table

BIG = os.urandom(5 * 1024 * 1024 + 4321)  # larger than a few blocks, fragment-free or not
MANY = 1500  # entries of one directory: an ext4 htree, an xfs node directory


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    require_tools()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files: dict[str, bytes | str | Link | None] = {
        "/etc/hostname": "node\n",
        "/boot/vmlinuz-6.1.0-18-amd64": BIG,
        "/vmlinuz": Link("boot/vmlinuz-6.1.0-18-amd64"),
        "/abs": Link("/etc/hostname"),
        "/loop": Link("loop"),
        "/dangling": Link("/nowhere"),
        "/up": Link("../../etc/hostname"),  # ".." stops at the root
        "/slowlink": Link("/" + "d" * 30 + "/" + "e" * 40 + "/target"),  # > 60 bytes: not inline
        "/" + "d" * 30 + "/" + "e" * 40 + "/target": b"slow link target\n",
        "/deep/a/b/c/d/e/f/g/h/i/j/file": b"deep\n",
        "/empty": b"",
        "/tiny": b"t",
        "/emptydir": None,
    }
    for i in range(MANY):
        files[f"/many/entry-number-{i:05d}"] = f"{i}\n"
    return make_tree(tmp_path_factory.mktemp("tree") / "src", files)


def _check_tree(f: fs.FileSystem) -> None:
    """What every reader must see of `tree`."""
    assert f.read("/etc/hostname") == b"node\n"
    assert f.read("/vmlinuz") == BIG
    assert f.readlink("/vmlinuz") == "boot/vmlinuz-6.1.0-18-amd64"
    assert f.read("/abs") == b"node\n"
    assert f.read("/up") == b"node\n"
    assert f.read("/slowlink") == b"slow link target\n"
    assert f.readlink("/slowlink").endswith("/target")
    assert f.read("/deep/a/b/c/d/e/f/g/h/i/j/file") == b"deep\n"
    assert f.read("/deep/a/b/../b/./c/d/e/f/g/h/i/j/file") == b"deep\n"
    assert (f.read("/empty"), f.read("/tiny")) == (b"", b"t")
    assert f.listdir("/emptydir") == []
    names = f.listdir("/many")
    assert (
        len(names) == MANY
        and names[0] == "entry-number-00000"
        and names[-1] == f"entry-number-{MANY - 1:05d}"
    )
    assert f.read("/many/entry-number-01234") == b"1234\n"
    assert {"etc", "boot", "vmlinuz", "many", "deep"} <= set(f.listdir("/"))
    assert f.exists("/boot") and f.is_dir("/boot") and f.is_link("/vmlinuz")
    assert not f.exists("/dangling") and f.is_link("/dangling")
    assert not f.exists("/many/entry-number-99999") and not f.exists("/etc/hostname/x")
    with pytest.raises(fs.FsError, match="too many levels"):
        f.read("/loop")
    with pytest.raises(fs.NotFoundError):
        f.read("/nope")
    with pytest.raises(fs.FsError, match="not a regular file"):
        f.read("/boot")
    with pytest.raises(fs.FsError, match="more than the 1000 allowed"):
        f.read("/vmlinuz", limit=1000)


EXT4_SHAPES = {
    "ext4": (),
    "ext4-1k-blocks": ("-b", "1024"),
    "ext4-32bit": ("-O", "^64bit"),
    "ext4-inline-data": ("-O", "inline_data"),
    "ext4-meta-bg": ("-O", "meta_bg,^resize_inode"),
    "ext3-block-maps": ("-t", "ext3"),
    "ext2-block-maps-1k": ("-t", "ext2", "-b", "1024"),
}


@pytest.mark.parametrize("shape", EXT4_SHAPES)
def test_ext4_reads_files_links_and_directories(tmp_path: Path, tree: Path, shape: str) -> None:
    image = ext4(tmp_path / "fs.img", 64, tree, *EXT4_SHAPES[shape], label="ROOTFS")
    # mkfs -d writes linear directories; e2fsck -D rebuilds large ones as htrees, as a kernel would grow them.
    done = subprocess.run(["e2fsck", "-fyD", str(image)], capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: "file system was modified"
    with open(image, "rb") as dev:
        f = fs.open_fs(dev)
        assert isinstance(f, ext4_reader.Ext4)
        _check_tree(f)
        assert (f.uuid, f.label) == (blkid(image)["UUID"], "ROOTFS")
        many = f.resolve("/many")
        assert isinstance(many, ext4_reader.Inode)
        assert many.flags & 0x1000, "the large directory is an htree (indexed), read as linear"
        if "block-maps" in shape:
            assert not f.resolve("/vmlinuz").flags & ext4_reader.FLAG_EXTENTS  # type: ignore[attr-defined]
        if "inline" in shape:
            assert f.resolve("/tiny").flags & ext4_reader.FLAG_INLINE_DATA  # type: ignore[attr-defined]


XFS_SHAPES = {
    # v5: the large directory's data fork is a list of extents.
    "v5": ((), xfs_reader.FMT_EXTENTS),
    # v4 with 256-byte inodes: the same directory needs more extents than fit, so a btree fork.
    "v4": (("-m", "crc=0", "-n", "ftype=0", "-i", "size=256"), xfs_reader.FMT_BTREE),
}


@pytest.mark.parametrize("shape", XFS_SHAPES)
def test_xfs_reads_files_links_and_directories(tmp_path: Path, tree: Path, shape: str) -> None:
    options, big_dir_format = XFS_SHAPES[shape]
    image = xfs(tmp_path / "fs.img", 300, tree, *options, label="XROOT")
    with open(image, "rb") as dev:
        f = fs.open_fs(dev)
        assert isinstance(f, xfs_reader.Xfs)
        _check_tree(f)
        assert (f.uuid, f.label) == (blkid(image)["UUID"], "XROOT")
        formats = [f.resolve(p).format for p in ("/etc", "/many")]  # type: ignore[attr-defined]
        assert formats == [xfs_reader.FMT_LOCAL, big_dir_format], "a short-form and a node directory"


@pytest.mark.parametrize("fat", ["12", "16", "32"])
def test_vfat_reads_long_names_in_any_case(tmp_path: Path, fat: str) -> None:
    src = make_tree(
        tmp_path / "src",
        {
            "/EFI/debian/grubx64.efi": BIG,
            "/loader/entries/6a9857a393724b7a981ebb5b8495b9ea-6.1.0-18-amd64.conf": "title Debian\n",
            "/loader/loader.conf": "timeout 3\n",
            "/Mixed Case Name.txt": "mixed\n",
            "/short.cfg": "short\n",
            "/a/b/c/d/e/deep.txt": "deep\n",
        },
    )
    size = 100 if fat == "32" else 16
    image = vfat(tmp_path / "esp.img", size, src, "-F", fat, label="ESPLABEL")
    with open(image, "rb") as dev:
        f = fs.open_fs(dev)
        assert f is not None and f.fstype == "vfat"
        assert f.bits == int(fat)  # type: ignore[attr-defined]
        assert f.read("/EFI/debian/grubx64.efi") == BIG
        assert f.read("/efi/DEBIAN/GRUBX64.EFI") == BIG, "FAT names are case-insensitive"
        assert f.listdir("/loader/entries") == ["6a9857a393724b7a981ebb5b8495b9ea-6.1.0-18-amd64.conf"]
        assert f.read("/Mixed Case Name.txt") == b"mixed\n"
        assert f.read("/short.cfg") == b"short\n"
        assert f.read("/a/b/c/d/e/deep.txt") == b"deep\n"
        assert sorted(f.listdir("/")) == ["EFI", "Mixed Case Name.txt", "a", "loader", "short.cfg"]
        info = blkid(image)
        assert (f.uuid, f.label) == (info["UUID"], info["LABEL"]) == (info["UUID"], "ESPLABEL")


def test_identify_names_what_cannot_be_read(tmp_path: Path) -> None:
    swap = sparse(tmp_path / "swap.img", 8)
    run("mkswap", swap)
    images = {
        "crypto_LUKS": luks(tmp_path / "luks.img", 20),
        "btrfs": btrfs(tmp_path / "btrfs.img"),
        "swap": swap,
        None: sparse(tmp_path / "zero.img", 1),
    }
    for kind, image in images.items():
        with open(image, "rb") as dev:
            assert fs.identify(dev) == kind
            assert fs.open_fs(dev) is None


@pytest.mark.parametrize(
    "sector",
    [
        512,
        pytest.param(
            4096,
            marks=[
                pytest.mark.root,
                pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a loop device)"),
            ],
        ),
    ],
)
def test_gpt_partitions_match_sfdisk(tmp_path: Path, sector: int) -> None:
    disk = Disk(
        tmp_path / "gpt.img",
        64,
        "label: gpt\n"
        'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"\n'
        'size=20MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"\n'
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n',
        sector=sector,
    )
    with open(disk.path, "rb") as dev:
        table = read_table(dev)
    assert table is not None
    assert (table.scheme, table.sector_size, table.disk_id) == ("gpt", sector, disk.id.lower())
    assert [p.index for p in table.partitions] == [1, 2, 3]
    for part in table.partitions:
        want = disk.parts[part.index]
        assert (part.start, part.size, part.partuuid) == (want.start, want.size, want.uuid.lower())
    assert table.partitions[1].is_esp and table.partitions[1].name == "EFI system partition"
    assert table.partitions[0].kind == "BIOS boot"


def test_mbr_logical_partitions_are_numbered_from_5(tmp_path: Path) -> None:
    disk = Disk(
        tmp_path / "mbr.img",
        100,
        "label: dos\nsize=10MiB, type=83, bootable\nsize=10MiB, type=ef\ntype=5\n"
        "size=10MiB, type=83\nsize=10MiB, type=82\ntype=83\n",
    )
    with open(disk.path, "rb") as dev:
        table = read_table(dev)
    assert table is not None and table.scheme == "mbr"
    assert [p.index for p in table.partitions] == sorted(disk.parts) == [1, 2, 3, 5, 6, 7]
    signature = disk.id.removeprefix("0x")
    for part in table.partitions:
        want = disk.parts[part.index]
        assert (part.start, part.size) == (want.start, want.size)
        assert part.partuuid == f"{signature}-{part.index:02x}"  # as Linux shows it (sfdisk shows none)
    assert table.partitions[1].is_esp and table.partitions[3].kind == "Linux"


def test_a_damaged_primary_gpt_falls_back_to_the_backup(tmp_path: Path) -> None:
    disk = Disk(
        tmp_path / "gpt.img", 16, "label: gpt\nsize=4MiB\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
    )
    with open(disk.path, "rb") as dev:
        good = read_table(dev)
    _flip(disk.path, 512 + 60)  # the disk GUID, inside the header's CRC-covered 92 bytes
    with open(disk.path, "rb") as dev:
        again = read_table(dev)
    assert good is not None and again is not None
    # The primary's disk GUID is damaged: the same GUID back means the backup header was read.
    assert (again.partitions, again.disk_id) == (good.partitions, good.disk_id)
    _flip(disk.path, 16 * 1024 * 1024 - 512 + 60)  # and the backup's: nothing sound is left
    with open(disk.path, "rb") as dev, pytest.raises(PartitionError, match="CRC mismatch"):
        read_table(dev)


def _flip(path: Path, offset: int) -> None:
    """Change one byte (whatever it was)."""
    with open(path, "r+b") as dev:
        dev.seek(offset)
        byte = dev.read(1)[0]
        dev.seek(offset)
        dev.write(bytes([byte ^ 0xFF]))


def test_damaged_gpt_entries_are_refused_by_their_crc(tmp_path: Path) -> None:
    disk = Disk(tmp_path / "gpt.img", 16, "label: gpt\nsize=4MiB\n")
    with open(disk.path, "rb") as dev:
        entries_lba = struct.unpack_from("<Q", dev.read(1024), 512 + 72)[0]
    for offset in (entries_lba * 512 + 1, 16 * 1024 * 1024 - 33 * 512 + 1):  # primary entries, backup ones
        _flip(disk.path, offset)
    with open(disk.path, "rb") as dev, pytest.raises(PartitionError, match="entries CRC mismatch"):
        read_table(dev)


def test_a_disk_without_a_table_may_hold_a_file_system(tmp_path: Path) -> None:
    for image in (
        vfat(tmp_path / "fat.img", 16, None, label="WHOLE"),
        ext4(tmp_path / "ext.img", 16, None),
        sparse(tmp_path / "zero.img", 1),
    ):
        with open(image, "rb") as dev:
            assert read_table(dev) is None, image.name


def test_readers_stay_inside_their_partition(tmp_path: Path, tree: Path) -> None:
    """A file system truncated by its partition fails with FsError rather than reading past it."""
    image = ext4(tmp_path / "fs.img", 64, tree)
    with open(image, "rb") as dev:
        whole = fs.open_fs(dev)
        assert whole is not None
        inode = whole.resolve("/vmlinuz")
        last_block = max(p + n for _, p, n, _ in whole._runs(inode))  # type: ignore[attr-defined]
        cut = fs.open_fs(dev, 0, (last_block - 1) * whole.block_size)  # type: ignore[attr-defined]
        assert cut is not None
        with pytest.raises(fs.FsError, match="outside the volume"):
            cut.read("/vmlinuz")


def test_corrupt_metadata_is_an_error_not_a_crash(tmp_path: Path, tree: Path) -> None:
    image = ext4(tmp_path / "fs.img", 64, tree)
    with open(image, "rb") as dev:
        f = fs.open_fs(dev)
        assert isinstance(f, ext4_reader.Ext4)
        inode = f.resolve("/vmlinuz")
        assert isinstance(inode, ext4_reader.Inode)
        pos = f._inode_table((inode.ino - 1) // f.inodes_per_group) * f.block_size
        pos += ((inode.ino - 1) % f.inodes_per_group) * f.inode_size + 0x28
    with open(image, "r+b") as dev:
        dev.seek(pos)
        dev.write(b"\x00\x00")  # the extent header's magic
    with open(image, "rb") as dev:
        f2 = fs.open_fs(dev)
        assert f2 is not None
        with pytest.raises(fs.FsError, match="corrupt extent tree"):
            f2.read("/vmlinuz")


def test_a_64_mib_file_reads_back_exactly(tmp_path: Path) -> None:
    """The size of a distribution's initrd: read in a few large reads, bytes identical."""
    data = os.urandom(1 << 20) * 64
    src = make_tree(tmp_path / "src", {"/boot/initrd.img": data})
    digest = hashlib.sha256(data).hexdigest()
    for image in (ext4(tmp_path / "e.img", 80, src), xfs(tmp_path / "x.img", 300, src)):
        with open(image, "rb") as dev:
            f = fs.open_fs(dev)
            assert f is not None
            assert hashlib.sha256(f.read("/boot/initrd.img")).hexdigest() == digest


def test_whatever_corrupt_metadata_raises_is_reported_as_fs_error(tmp_path: Path) -> None:
    """Parsing errors deep in a reader (a short struct, an index past a table) reach the caller as FsError
    naming the path, never as a crash of the agent."""

    class Broken(fs.FileSystem):
        fstype = "broken"

        def _root(self) -> fs.base.Node:
            raise struct.error("unpack requires a buffer of 4 bytes")

    with open(sparse(tmp_path / "x.img", 1), "rb") as dev:
        broken = Broken(fs.Volume(dev))
        with pytest.raises(fs.FsError, match=r"/boot/x: broken metadata is corrupt \(error: unpack requires"):
            broken.read("/boot/x")
