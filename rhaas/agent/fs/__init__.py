"""Read-only file system readers for the disk the agent has just written (standard library only).

`identify` names what a volume holds by its signature, including what the agent cannot read (btrfs, LUKS,
LVM, RAID members, swap), so that a refusal can say why; `open_fs` opens what it can read (ext2/3/4, XFS,
FAT) as a `FileSystem`: ``read``, ``readlink``, ``listdir``, ``exists`` over paths, links followed within
that file system. Nothing is mounted and nothing is written: the FPBL needs no file system modules, and a
customer's image is never changed by looking at it.
"""

from __future__ import annotations

from typing import BinaryIO

from rhaas.agent.fs.base import MAX_READ, FileSystem, FsError, NotFoundError, Volume
from rhaas.agent.fs.ext4 import Ext4
from rhaas.agent.fs.vfat import Vfat, looks_like_fat
from rhaas.agent.fs.xfs import Xfs

__all__ = ["MAX_READ", "FileSystem", "FsError", "NotFoundError", "Volume", "identify", "open_fs", "READABLE"]

#: What `open_fs` reads; every other name `identify` gives is known but not readable.
READABLE = ("ext4", "xfs", "vfat")
#: Names of what cannot be read, as a refusal tells them.
DESCRIPTIONS = {
    "crypto_LUKS": "encrypted (LUKS)",
    "lvm2": "an LVM physical volume",
    "linux_raid_member": "a RAID member",
    "btrfs": "btrfs, which is not supported",
    "swap": "swap space",
    "ntfs": "NTFS, which is not supported",
}


def _at(volume: Volume, pos: int, length: int) -> bytes:
    if pos + length > volume.size:
        return b""
    return volume.read(pos, length)


def identify(dev: BinaryIO | Volume, offset: int = 0, size: int | None = None) -> str | None:
    """What the volume at ``offset`` holds, named as blkid names it, or None if nothing is recognised."""
    volume = dev if isinstance(dev, Volume) else Volume(dev, offset, size)
    first = _at(volume, 0, 4096)
    if first[:6] == b"LUKS\xba\xbe":
        return "crypto_LUKS"
    if first[:4] == b"XFSB":
        return "xfs"
    if first[1024 + 56 : 1024 + 58] == b"\x53\xef":
        incompat = int.from_bytes(first[1024 + 96 : 1024 + 100], "little")
        if not incompat & 0x8:  # an external journal is not a file system
            return "ext4"
    if _at(volume, 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    for sector in range(4):
        label = first[sector * 512 : sector * 512 + 32]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            return "lvm2"
    if first[4096 - 10 : 4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    for raid_at in (0, 4096):  # md superblock 1.1 at the start, 1.2 at 4 KiB (0.90/1.0 at the end)
        if _at(volume, raid_at, 4) == b"\xfcN+\xa9":
            return "linux_raid_member"
    if first[3:11] == b"NTFS    ":
        return "ntfs"
    if looks_like_fat(first[:512]):
        return "vfat"
    return None


def open_fs(dev: BinaryIO | Volume, offset: int = 0, size: int | None = None) -> FileSystem | None:
    """A reader for the volume at ``offset`` if it holds ext2/3/4, XFS or FAT, else None.

    FsError if the signature is there but the file system cannot be read (a corrupt superblock)."""
    volume = dev if isinstance(dev, Volume) else Volume(dev, offset, size)
    kind = identify(volume)
    if kind == "ext4":
        return Ext4(volume)
    if kind == "xfs":
        return Xfs(volume)
    if kind == "vfat":
        return Vfat(volume)
    return None
