"""The cloud-init seed the agent writes after a disk image: a CIDATA VFAT volume in a new partition at the
disk's end. Checked with the tools a Linux system reads them with: sfdisk, sgdisk and fdisk for the
partition tables, fsck.vfat, blkid and mtools for the file system. Disks are sparse files: a 64 MiB image
(an EFI partition and a root partition filling the image, as cloud images are laid out) at the start of a
256 MiB disk, in 512- and 4096-byte sectors (sfdisk and sgdisk read files as 512-byte-sector disks, so
4096-byte-sector disks are made and read with ``fdisk -b 4096``, and as root also on a loop device).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rhaas.agent import cidata, partedit, vfat

MIB = 1 << 20
IMAGE = 64 * MIB
DISK = 256 * MIB
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk1rG8Jm2zZ0l4hS2n8bqf0Y0dQ8mYk5m0o7wqBqJ6a alice@example"
SEED = cidata.Seed(
    instance_id="job-42",
    hostname="node-7",
    user_data=b"#cloud-config\nruncmd:\n  - [touch, /run/seeded]\n",
    ssh_keys=(KEY,),
    network_config=b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
)


def _run(*args: str, stdin: str | None = None, stderr: bool = False) -> str:
    """A tool's output (and its warnings on stderr if `stderr`); a tool that fails fails the test."""
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=True)
    return done.stdout + (done.stderr if stderr else "")


def _bytes(*args: str) -> bytes:
    return subprocess.run(args, capture_output=True, check=True).stdout


def _sha(path: Path) -> str:
    """A hash of the file's allocated ranges and their bytes: any write shows, and holes cost nothing."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        end, at = os.fstat(fd).st_size, 0
        while at < end:
            try:
                at = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:  # no data after `at`
                break
            stop = os.lseek(fd, at, os.SEEK_HOLE)
            digest.update(f"{at}-{stop}:".encode())
            while at < stop:
                chunk = os.pread(fd, min(stop - at, MIB), at)
                digest.update(chunk)
                at += len(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _gpt_disk(tmp_path: Path, sector_size: int, name: str = "disk") -> Path:
    """A 64 MiB GPT image (8 MiB EFI, root to the image's end) at the start of a 256 MiB disk."""
    disk = tmp_path / name
    with open(disk, "wb") as f:
        f.truncate(IMAGE)
    if sector_size == 512:
        _run(
            "sfdisk",
            "-q",
            str(disk),
            stdin=f"label: gpt\nstart=2048, size=16384, type={ESP}\nstart=18432, type=L\n",
        )
    else:
        _run("fdisk", "-b", "4096", str(disk), stdin="g\nn\n1\n\n+8M\nt\n1\nn\n2\n\n\nw\n")
    os.truncate(disk, DISK)
    return disk


def _mbr_disk(tmp_path: Path, sector_size: int, partitions: int = 2, size: int = DISK) -> Path:
    """A 64 MiB MBR image with `partitions` primaries (the last to the image's end) on a disk of `size`."""
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(IMAGE)
    if sector_size == 512:
        lines = ["label: dos"] + [",8M,c"] * (partitions - 1) + [",,L"]
        _run("sfdisk", "-q", str(disk), stdin="\n".join(lines) + "\n")
    else:
        script = "o\n" + "n\np\n\n\n+8M\n" * (partitions - 1) + "n\np\n\n\n\n" + "w\n"
        _run("fdisk", "-b", "4096", str(disk), stdin=script)
    os.truncate(disk, size)
    return disk


def _partitions(disk: Path, sector_size: int) -> list[dict[str, object]]:
    """The partitions as sfdisk (512-byte sectors) or fdisk -b 4096 lists them: start, size, type, name."""
    if sector_size == 512:
        table = json.loads(_run("sfdisk", "--json", str(disk)))["partitiontable"]
        return [
            {"start": p["start"], "size": p["size"], "type": p["type"], "name": p.get("name", "")}
            for p in table["partitions"]
        ]
    gpt = "Disklabel type: gpt" in _run("fdisk", "-b", "4096", "-l", str(disk))
    columns = "Device,Start,Sectors," + ("Type-UUID,Name" if gpt else "Id")
    out: list[dict[str, object]] = []
    for line in _run("fdisk", "-b", "4096", "-l", "-o", columns, str(disk)).splitlines():
        if line.startswith(str(disk)):
            fields = line.split(None, 4)
            name = fields[4] if len(fields) > 4 else ""
            out.append({"start": int(fields[1]), "size": int(fields[2]), "type": fields[3], "name": name})
    return out


def _verified(disk: Path, sector_size: int) -> str:
    """What the partition-table checkers say (sgdisk -v and sfdisk --verify; fdisk's v for 4096 bytes)."""
    if sector_size == 512:
        return _run("sgdisk", "-v", str(disk), stderr=True) + _run(
            "sfdisk", "--verify", str(disk), stderr=True
        )
    return _run("fdisk", "-b", "4096", str(disk), stdin="v\nq\n", stderr=True)


def _volume(disk: Path, start: int, size: int, tmp_path: Path) -> Path:
    """The partition's bytes, copied out to a file the file-system tools read."""
    out = tmp_path / "cidata.img"
    with open(disk, "rb") as f:
        f.seek(start)
        out.write_bytes(f.read(size))
    return out


def _blkid(path: Path) -> dict[str, str]:
    lines = _run("blkid", "-p", "-o", "export", str(path)).splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _check_volume(volume: Path, files: dict[str, bytes]) -> None:
    probe = _blkid(volume)
    assert (probe["LABEL"], probe["TYPE"]) == ("CIDATA", "vfat"), probe
    done = subprocess.run(["fsck.vfat", "-n", str(volume)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listing = _run("mdir", "-i", str(volume), "::")
    assert "CIDATA" in listing
    for name, data in files.items():
        assert name in listing
        assert _bytes("mtype", "-i", str(volume), f"::{name}") == data, name


# --- the file system -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_a_volume_passes_fsck_and_reads_back_with_mtools_and_blkid(tmp_path: Path, sector_size: int) -> None:
    files = {
        "meta-data": b'{"instance-id": "i-1"}\n',
        "user-data": b"#cloud-config\n" + b"# filler\n" * 3000,  # many clusters, a chain in the FAT
        "network-config": b"",  # an empty file has no cluster
        "a-name-longer-than-26-chars.cfg": b"three long-name entries\n",
        "vendor-data": bytes(range(256)) * 40,
    }
    volume = tmp_path / "fs"
    volume.write_bytes(vfat.build(2 * MIB, "CIDATA", list(files.items()), sector_size=sector_size))
    assert _blkid(volume)["BLOCK_SIZE"] == str(sector_size)
    assert _blkid(volume)["VERSION"] == "FAT12"
    _check_volume(volume, files)


@pytest.mark.parametrize("mib", [1, 4, 16, 64])
def test_every_size_stays_a_valid_fat12(tmp_path: Path, mib: int) -> None:
    volume = tmp_path / "fs"
    volume.write_bytes(vfat.build(mib * MIB, "CIDATA", [("user-data", b"x" * 100000)]))
    layout = vfat.Layout(mib * MIB, 512)
    assert layout.clusters <= vfat.MAX_CLUSTERS
    _check_volume(volume, {"user-data": b"x" * 100000})


def test_the_same_files_give_the_same_bytes_and_other_files_another_serial() -> None:
    files = [("meta-data", b"a"), ("user-data", b"b")]
    first = vfat.build(MIB, "CIDATA", files)
    assert vfat.build(MIB, "CIDATA", files) == first
    other = vfat.build(MIB, "CIDATA", [("meta-data", b"a"), ("user-data", b"c")])
    assert other[39:43] != first[39:43]  # the volume serial number


def test_long_name_entries_carry_their_short_entrys_checksum() -> None:
    """fsck.vfat drops long names whose checksum is wrong; this pins the checksum to a known value."""
    image = vfat.build(MIB, "CIDATA", [("meta-data", b"x")])
    root = image[vfat.Layout(MIB, 512).root_start * 512 :]
    lfn, short = root[32:64], root[64:96]
    assert short[:11] == b"META-D~1   "
    assert lfn[0] == 0x41 and lfn[11] == 0x0F and lfn[13] == vfat._checksum(short[:11])
    assert lfn[1:11] + lfn[14:26] + lfn[28:32] == vfat.utf16le("meta-data") + b"\0\0" + b"\xff" * 6


@pytest.mark.parametrize(
    ("label", "files", "message"),
    [
        ("cidata", [], "volume label"),
        ("TOO-LONG-LABEL", [], "volume label"),
        ("CIDATA", [("a/b", b"")], "not a valid VFAT name"),
        ("CIDATA", [("", b"")], "not a valid VFAT name"),
        ("CIDATA", [("bad\x01", b"")], "not a valid VFAT name"),
        ("CIDATA", [("User-Data", b""), ("user-data", b"")], "given twice"),
        ("CIDATA", [("user-data", bytes(2 * MIB))], "clusters"),
    ],
)
def test_bad_labels_names_and_too_much_data_are_refused(
    label: str, files: list[tuple[str, bytes]], message: str
) -> None:
    with pytest.raises(vfat.VfatError, match=message):
        vfat.build(MIB, label, files)


def test_utf16le_by_hand_matches_the_codec() -> None:
    for text in ("meta-data", "é€", "\U0001f600x"):
        assert vfat.utf16le(text) == text.encode("utf-16-le")


# --- the seed on a disk --------------------------------------------------------------------------------


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_a_seed_on_a_gpt_image_smaller_than_the_disk(tmp_path: Path, sector_size: int) -> None:
    disk = _gpt_disk(tmp_path, sector_size)
    before = _partitions(disk, sector_size)
    if sector_size == 512:  # the checker sees the misplaced backup GPT: the test below means something
        assert "doesn't reside\nat the end of the disk" in _verified(disk, sector_size)
    done = cidata.write_seed(str(disk), DISK, sector_size, SEED)
    sectors = DISK // sector_size

    checked = _verified(disk, sector_size)
    if sector_size == 512:
        assert "No problems found" in checked and "No errors detected" in checked, checked
    else:
        assert "No errors detected" in checked and "Using 3 out of 128 partitions" in checked, checked
    after = _partitions(disk, sector_size)
    assert after[:2] == before  # the image's partitions are untouched
    new = after[2]
    assert (new["type"], new["name"]) == (partedit.BASIC_DATA, "cidata")
    assert new["start"] * sector_size == done["start"] and new["size"] * sector_size == done["size"] == MIB
    assert done["start"] % MIB == 0
    entries = -(-128 * 128 // sector_size)
    last_usable = sectors - 1 - entries - 1
    end = int(new["start"]) + int(new["size"]) - 1  # type: ignore[call-overload]
    assert end <= last_usable and (last_usable - end) * sector_size < MIB  # at the end, 1 MiB aligned
    assert (done["table"], done["partition"], done["backup_moved"]) == ("gpt", 3, True)

    backup = _read(disk, (sectors - 1) * sector_size, sector_size)
    assert backup[:8] == b"EFI PART"
    assert int.from_bytes(backup[24:32], "little") == sectors - 1  # its own LBA: the disk's last
    assert _read(disk, IMAGE - sector_size, sector_size) == bytes(sector_size)  # no stale backup there
    mbr = _read(disk, 0, 512)
    assert int.from_bytes(mbr[446 + 12 : 446 + 16], "little") == sectors - 1  # protective MBR: whole disk

    volume = _volume(disk, done["start"], done["size"], tmp_path)  # type: ignore[arg-type]
    _check_volume(
        volume,
        {
            "meta-data": cidata.meta_data(SEED),
            "user-data": SEED.user_data or b"",
            "network-config": SEED.network_config or b"",
        },
    )
    sizes = {"meta-data": len(cidata.meta_data(SEED)), "user-data": 47, "network-config": 46}
    assert done["files"] == sizes


def test_a_gpt_whose_backup_is_already_at_the_disks_end_stays_there(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(DISK)
    _run("sfdisk", "-q", str(disk), stdin="label: gpt\n,8M,U\n,56M,L\n")
    first_usable_before = json.loads(_run("sfdisk", "--json", str(disk)))["partitiontable"]["lastlba"]
    done = cidata.write_seed(str(disk), DISK, 512, SEED)
    assert done["backup_moved"] is False
    assert "No problems found" in _run("sgdisk", "-v", str(disk))
    table = json.loads(_run("sfdisk", "--json", str(disk)))["partitiontable"]
    assert table["lastlba"] == first_usable_before
    assert table["partitions"][2]["start"] * 512 == done["start"]


@pytest.mark.parametrize("table", ["gpt", "dos"])
def test_on_a_disk_past_2_tib_the_tables_32_bit_fields_are_capped(tmp_path: Path, table: str) -> None:
    """An MBR partition must end below 2^32 sectors; the protective MBR's size stops at 0xFFFFFFFF."""
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(IMAGE)
    _run("sfdisk", "-q", str(disk), stdin=f"label: {table}\n,8M\n,\n")
    size = 3 << 40  # sparse
    os.truncate(disk, size)
    done = cidata.write_seed(str(disk), size, 512, SEED)
    raw = _read(disk, 0, 512)
    if table == "gpt":
        assert "No problems found" in _run("sgdisk", "-v", str(disk))
        assert int.from_bytes(raw[446 + 12 : 446 + 16], "little") == 0xFFFFFFFF
        assert size - done["start"] <= 2 * MIB  # type: ignore[operator]
    else:
        assert "No errors detected" in _run("sfdisk", "--verify", str(disk))
        end = done["start"] + done["size"]  # type: ignore[operator]
        assert (1 << 32) * 512 - 2 * MIB < end <= 0xFFFFFFFF * 512
    volume = _volume(disk, done["start"], done["size"], tmp_path)  # type: ignore[arg-type]
    assert _blkid(volume)["LABEL"] == "CIDATA"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_a_4096_byte_sector_seed_passes_sgdisk_and_blkid_on_a_loop_device(tmp_path: Path) -> None:
    """sgdisk reads a file as a 512-byte-sector disk; a loop device with 4096-byte sectors is a real one."""
    disk = _gpt_disk(tmp_path, 4096)
    done = cidata.write_seed(str(disk), DISK, 4096, SEED)
    loop = _run("losetup", "--find", "--show", "--sector-size", "4096", str(disk)).strip()
    try:
        assert _run("blockdev", "--getss", loop).strip() == "4096"
        assert "No problems found" in _run("sgdisk", "-v", loop)
        table = json.loads(_run("sfdisk", "--json", loop))["partitiontable"]
        assert table["sectorsize"] == 4096
        assert table["partitions"][2]["start"] * 4096 == done["start"]
        assert table["partitions"][2]["name"] == "cidata"
        probe = _run("blkid", "-p", "-o", "export", "--offset", str(done["start"]), loop)
        assert "LABEL=CIDATA" in probe and "TYPE=vfat" in probe and "BLOCK_SIZE=4096" in probe
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_a_seed_on_an_mbr_image(tmp_path: Path, sector_size: int) -> None:
    disk = _mbr_disk(tmp_path, sector_size)
    before = _partitions(disk, sector_size)
    done = cidata.write_seed(str(disk), DISK, sector_size, SEED)
    if sector_size == 512:
        assert "No errors detected" in _run("sfdisk", "--verify", str(disk))
    after = _partitions(disk, sector_size)
    assert after[:2] == before
    new = after[2]
    assert new["type"] == "c"
    assert new["start"] * sector_size == done["start"] and done["start"] % MIB == 0
    end_byte = (int(new["start"]) + int(new["size"])) * sector_size  # type: ignore[call-overload]
    assert DISK - MIB <= end_byte <= DISK
    assert (done["table"], done["partition"], done["guid"]) == ("mbr", 3, "")
    volume = _volume(disk, done["start"], done["size"], tmp_path)  # type: ignore[arg-type]
    _check_volume(volume, {"meta-data": cidata.meta_data(SEED), "user-data": SEED.user_data or b""})


def test_the_same_seed_on_the_same_image_gives_the_same_disk(tmp_path: Path) -> None:
    first = _gpt_disk(tmp_path, 512, "one")
    second, third = tmp_path / "two", tmp_path / "three"
    for copy in (second, third):
        _run("cp", "--sparse=always", str(first), str(copy))
    a = cidata.write_seed(str(first), DISK, 512, SEED)
    b = cidata.write_seed(str(second), DISK, 512, SEED)
    c = cidata.write_seed(str(third), DISK, 512, SEED._replace(instance_id="job-43"))
    assert subprocess.run(["cmp", str(first), str(second)]).returncode == 0 and a == b
    assert subprocess.run(["cmp", "-s", str(first), str(third)]).returncode == 1
    assert c["guid"] != a["guid"]


def test_without_user_data_the_keys_and_an_empty_seed_still_make_a_valid_volume(tmp_path: Path) -> None:
    disk = _gpt_disk(tmp_path, 512)
    seed = cidata.Seed(instance_id="job-1", hostname="n1", ssh_keys=(KEY,))
    done = cidata.write_seed(str(disk), DISK, 512, seed)
    assert sorted(done["files"]) == ["meta-data", "user-data"]  # type: ignore[call-overload]
    volume = _volume(disk, done["start"], done["size"], tmp_path)  # type: ignore[arg-type]
    _check_volume(volume, {"user-data": cidata.user_data_for([KEY], None)})


# --- what cloud-init reads -----------------------------------------------------------------------------


def test_meta_data_is_yaml_with_the_instance_id_hostname_and_keys() -> None:
    yaml = pytest.importorskip("yaml")
    tricky = cidata.Seed(instance_id='id: "x" # y', hostname="nœud-1", ssh_keys=(KEY, "ssh-rsa AAA= b: c #d"))
    assert yaml.safe_load(cidata.meta_data(tricky)) == {
        "instance-id": 'id: "x" # y',
        "local-hostname": "nœud-1",
        "public-keys": [KEY, "ssh-rsa AAA= b: c #d"],
    }
    assert "public-keys" not in yaml.safe_load(cidata.meta_data(cidata.Seed("i", "h")))


def test_user_data_is_the_customers_else_a_cloud_config_with_the_keys() -> None:
    yaml = pytest.importorskip("yaml")
    given = b"#!/bin/sh\necho hi\n"
    assert cidata.user_data_for([KEY], given) == given
    assert cidata.user_data_for([KEY], b"") == b""
    made = cidata.user_data_for([KEY, "ssh-rsa B: #c"], None)
    assert made.startswith(b"#cloud-config\n")
    assert yaml.safe_load(made) == {"ssh_authorized_keys": [KEY, "ssh-rsa B: #c"]}
    assert cidata.user_data_for([], None) == b"#cloud-config\n"


# --- refusals: a clear error, and the disk unchanged ---------------------------------------------------


def _refused(disk: Path, message: str, sector_size: int = 512, seed: cidata.Seed = SEED) -> None:
    before = _sha(disk)
    with pytest.raises(cidata.SeedError, match=message):
        cidata.write_seed(str(disk), os.path.getsize(disk), sector_size, seed)
    assert _sha(disk) == before


def test_a_disk_without_a_partition_table_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(DISK)
    _refused(disk, "no partition table")
    with open(disk, "r+b") as f:  # a boot sector's signature, but no partition entries behind it
        f.seek(446)
        f.write(b"\x07" * 64 + b"\x55\xaa")
    _refused(disk, "no partition table")


def test_a_gpt_image_that_fills_the_disk_leaves_no_room(tmp_path: Path) -> None:
    disk = _gpt_disk(tmp_path, 512)
    os.truncate(disk, IMAGE)  # the disk is the image's size: the root partition reaches the end
    _refused(disk, "no room")


def test_an_mbr_image_that_fills_the_disk_leaves_no_room(tmp_path: Path) -> None:
    _refused(_mbr_disk(tmp_path, 512, size=IMAGE), "no room")


def test_an_mbr_with_four_primaries_has_no_free_slot(tmp_path: Path) -> None:
    _refused(_mbr_disk(tmp_path, 512, partitions=4), "no free primary slot")


def test_a_gpt_with_every_entry_used_has_no_free_slot(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(IMAGE)
    _run("sfdisk", "-q", str(disk), stdin="label: gpt\ntable-length: 4\n,8M\n,8M\n,8M\n,\n")
    os.truncate(disk, DISK)
    _refused(disk, "no free entry")


def test_a_gpt_read_with_the_wrong_sector_size_is_refused(tmp_path: Path) -> None:
    _refused(_gpt_disk(tmp_path, 512), "written for 512-byte sectors", sector_size=4096)


def test_a_gpt_with_a_bad_crc_is_refused(tmp_path: Path) -> None:
    disk = _gpt_disk(tmp_path, 512)
    with open(disk, "r+b") as f:
        f.seek(512 + 40)  # first usable LBA, covered by the header's CRC
        f.write(b"\x01")
    _refused(disk, "CRC32")


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (cidata.Seed("", "n"), "instance-id"),
        (cidata.Seed("i", " n"), "hostname"),
        (cidata.Seed("i", "n\n"), "hostname"),
        (cidata.Seed("i", "n", ssh_keys=("a\nb",)), "one non-empty line"),
        (cidata.Seed("i", "n", user_data=bytes(cidata.MAX_SEED_BYTES + 1)), "at most"),
    ],
)
def test_bad_seeds_are_refused(tmp_path: Path, seed: cidata.Seed, message: str) -> None:
    _refused(_gpt_disk(tmp_path, 512), message, seed=seed)


# --- what it takes inside the FPBL ---------------------------------------------------------------------


def test_writing_a_seed_loads_no_module_the_agent_does_not_already_load(tmp_path: Path) -> None:
    """The FPBL ships the standard-library modules the agent loads (and zlib, built into Debian's
    interpreter); a codec or module the seed code pulled in on top would be missing there."""
    disk = _gpt_disk(tmp_path, 512)
    code = (
        "import sys, rhaas.agent.agent; before = set(sys.modules)\n"
        "print('loaded' if 'rhaas.agent.cidata' in before else 'not-loaded')\n"
        "from rhaas.agent import cidata\n"
        "seed = cidata.Seed('i', 'n\u00e9', b'u', ('k',), b'n', b'v')\n"
        f"cidata.write_seed({str(disk)!r}, {DISK}, 512, seed)\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": ".", "PYTHONHASHSEED": "0"})  # fmt: skip
    loaded, *added = done.stdout.split()
    assert loaded == "loaded", "the agent (its deploy) imports the seed writer, so the FPBL's build loads it"
    assert set(added) <= {"zlib"}, sorted(added)
