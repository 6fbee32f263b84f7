"""Reading a disk's partition table (GPT or MBR) without the kernel (standard library only).

The agent reads the table of the image it has just written, on the disk itself (the kernel's view may be
stale until a re-read, and the image file in tests has no kernel view at all). GPT: the primary header and
its entries, both CRC-checked (zlib.crc32, as the specification's CRC-32 is), with the backup at the
disk's last sector used when the primary is damaged; 512- and 4096-byte sectors are tried (a 4Kn disk's
GPT is at byte 4096). MBR: four primary entries and the chain of logical partitions in an extended one,
numbered from 5 as Linux does. PARTUUIDs are formatted as Linux shows them (``root=PARTUUID=``): the GPT
unique GUID, or the MBR disk signature and the partition number (``1a2b3c4d-05``).

A disk may hold no table at all but a file system directly; `read_table` then answers None.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, NamedTuple

from rhaas.agent.fs.base import FsError, Volume, format_guid, utf16le
from rhaas.agent.fs.vfat import looks_like_fat

GPT_SIGNATURE = b"EFI PART"
#: Well-known GPT partition types (lower case, as `format_guid` prints them).
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
XBOOTLDR = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
GPT_TYPES = {
    ESP: "EFI system",
    XBOOTLDR: "extended boot loader",
    BIOS_BOOT: "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux file system",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
}
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_ESP, MBR_XBOOTLDR = 0xEF, 0xEA
MBR_TYPES = {0x82: "Linux swap", 0x83: "Linux", 0x8E: "Linux LVM", 0xFD: "Linux RAID", 0xEF: "EFI system",
             0xEA: "extended boot loader", 0x0B: "FAT32", 0x0C: "FAT32 (LBA)", 0x06: "FAT16", 0x07: "NTFS",
             0x05: "extended", 0x0F: "extended", 0x85: "extended"}  # fmt: skip
#: Logical partitions followed before the chain is taken as a loop.
MAX_LOGICAL = 256


class PartitionError(RuntimeError):
    """A partition table is there but cannot be read (bad CRCs on both GPT copies, a looping MBR chain)."""


class Partition:
    """One partition: ``index`` is the number Linux gives it (sda1, vda5, nvme0n1p2: the GPT entry's
    number, MBR 1-4 and logical ones from 5); ``type`` the GPT type GUID (lower case) or the MBR type byte
    as ``0x83``; ``name`` the GPT partition name (MBR: empty); offsets in bytes."""

    __slots__ = ("index", "start", "size", "type", "name", "partuuid")

    def __init__(self, index: int, start: int, size: int, type: str, name: str, partuuid: str) -> None:
        self.index = index
        self.start = start
        self.size = size
        self.type = type
        self.name = name
        self.partuuid = partuuid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partition) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Partition({fields})"

    @property
    def kind(self) -> str:
        """The type as a person reads it (``EFI system``, ``Linux``), or the raw type."""
        if self.type.startswith("0x"):
            return MBR_TYPES.get(int(self.type, 16), self.type)
        return GPT_TYPES.get(self.type, self.type)

    @property
    def is_esp(self) -> bool:
        return self.type in (ESP, f"0x{MBR_ESP:02x}")

    @property
    def is_xbootldr(self) -> bool:
        return self.type in (XBOOTLDR, f"0x{MBR_XBOOTLDR:02x}")


class PartitionTable(NamedTuple):
    scheme: str  # "gpt" or "mbr"
    #: GPT disk GUID, or the MBR disk signature as 8 hex digits.
    disk_id: str
    sector_size: int
    partitions: list[Partition]


def read_table(dev: BinaryIO | Volume, sector_size: int | None = None) -> PartitionTable | None:
    """The disk's partition table, or None if it has none (it may hold a file system directly).

    ``sector_size``: the disk's logical sector size if known (BLKSSZGET); otherwise 512 and 4096 are
    tried for GPT, and MBR assumes 512. PartitionError if a table is there but unreadable."""
    disk = dev if isinstance(dev, Volume) else Volume(dev)
    sizes = (sector_size,) if sector_size else (512, 4096)
    protective = False
    mbr = _read(disk, 0, 512)
    if len(mbr) == 512 and mbr[510:512] == b"\x55\xaa":
        protective = any(mbr[446 + i * 16 + 4] == 0xEE for i in range(4))
    errors = []
    for size in sizes:
        try:
            table = _gpt(disk, size)
        except PartitionError as exc:
            errors.append(str(exc))
            continue
        if table is not None:
            return table
    if errors:
        raise PartitionError("; ".join(errors))
    if protective:
        raise PartitionError("a protective MBR but no GPT header")
    return _mbr(disk, mbr, sector_size or 512)


def _read(disk: Volume, pos: int, length: int) -> bytes:
    if pos < 0 or pos + length > disk.size:
        return b""
    try:
        return disk.read(pos, length)
    except FsError:
        return b""


def _gpt(disk: Volume, sector: int) -> PartitionTable | None:
    """The GPT for this sector size: None if no header is there; PartitionError if no copy is sound."""
    primary = _read(disk, sector, sector)
    if primary[:8] != GPT_SIGNATURE:
        return None
    last_lba = disk.size // sector - 1
    problems = []
    for lba in (1, last_lba):
        header = primary if lba == 1 else _read(disk, lba * sector, sector)
        try:
            return _gpt_copy(disk, header, sector)
        except PartitionError as exc:
            problems.append(f"{'primary' if lba == 1 else 'backup'} GPT: {exc}")
    raise PartitionError("; ".join(problems))


def _gpt_copy(disk: Volume, header: bytes, sector: int) -> PartitionTable:
    if header[:8] != GPT_SIGNATURE:
        raise PartitionError("no header")
    header_size = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= header_size <= sector:
        raise PartitionError(f"header size {header_size} is invalid")
    crc = struct.unpack_from("<I", header, 16)[0]
    if zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:header_size]) != crc:
        raise PartitionError("header CRC mismatch")
    disk_guid = format_guid(header[56:72])
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if entry_size < 128 or entry_size % 8 or count > 65536:
        raise PartitionError(f"{count} entries of {entry_size} bytes is invalid")
    raw = _read(disk, entries_lba * sector, count * entry_size)
    if len(raw) != count * entry_size:
        raise PartitionError("the entries lie outside the disk")
    if zlib.crc32(raw) != entries_crc:
        raise PartitionError("entries CRC mismatch")
    parts = []
    for i in range(count):
        entry = raw[i * entry_size : (i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first:
            raise PartitionError(f"entry {i + 1} ends before it starts")
        name = utf16le(entry[56:128])
        parts.append(
            Partition(
                index=i + 1,
                start=first * sector,
                size=(last - first + 1) * sector,
                type=format_guid(entry[0:16]),
                name=name,
                partuuid=format_guid(entry[16:32]),
            )
        )
    return PartitionTable("gpt", disk_guid, sector, parts)


def _mbr(disk: Volume, mbr: bytes, sector: int) -> PartitionTable | None:
    if len(mbr) != 512 or mbr[510:512] != b"\x55\xaa" or looks_like_fat(mbr):
        return None  # no signature, or the first sector of a FAT file system on the whole disk
    entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + i * 16) for i in range(4)]
    if any(status not in (0, 0x80) for status, *_ in entries):
        return None
    if not any(kind for _, kind, _, _ in entries):
        return None
    signature = struct.unpack_from("<I", mbr, 440)[0]
    disk_id = f"{signature:08x}"
    parts = []
    extended = None
    for i, (_, kind, start, count) in enumerate(entries):
        if not kind or not count:
            continue
        if kind in MBR_EXTENDED:
            extended = start
        parts.append(
            Partition(i + 1, start * sector, count * sector, f"0x{kind:02x}", "", f"{disk_id}-{i + 1:02x}")
        )
    if extended is not None:
        parts.extend(_logical(disk, extended, sector, disk_id))
    return PartitionTable("mbr", disk_id, sector, parts)


def _logical(disk: Volume, extended: int, sector: int, disk_id: str) -> list[Partition]:
    """The logical partitions: a chain of EBRs, each giving one partition (relative to itself) and the
    next EBR (relative to the extended partition's start)."""
    parts: list[Partition] = []
    ebr = extended
    seen = set()
    while ebr and len(parts) < MAX_LOGICAL:
        if ebr in seen:
            raise PartitionError("the logical partitions' chain loops")
        seen.add(ebr)
        raw = _read(disk, ebr * sector, 512)
        if len(raw) != 512 or raw[510:512] != b"\x55\xaa":
            break
        _, kind, start, count = struct.unpack_from("<B3xB3xII", raw, 446)
        _, next_kind, next_start, _ = struct.unpack_from("<B3xB3xII", raw, 462)
        if kind and count:
            index = 5 + len(parts)
            parts.append(
                Partition(
                    index,
                    (ebr + start) * sector,
                    count * sector,
                    f"0x{kind:02x}",
                    "",
                    f"{disk_id}-{index:02x}",
                )
            )
        ebr = extended + next_start if next_kind in MBR_EXTENDED and next_start else 0
    return parts
