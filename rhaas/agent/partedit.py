"""Add one partition at the end of a disk that a whole-disk image was just written to (standard library only).

A customer's cloud image is usually smaller than the node's disk. The agent writes it, then adds a small
partition in the free space at the disk's end (the cloud-init seed, see `rhaas.agent.cidata`):

- **GPT** (a protective MBR, type 0xEE): the primary header at LBA 1 and its entries are read and checked
  (signature, both CRC32s). If the backup GPT is not at the disk's last LBA (the image ends before the
  disk), it moves there as ``sgdisk -e`` moves it: backup entries and header at the end, the primary
  header's alternate and last usable LBA updated, the old backup header zeroed so that no tool finds a
  stale one. The new entry takes the first free slot; its unique GUID is derived from the disk's GUID and
  a caller's seed (the same inputs give the same bytes). The protective MBR's size grows to the disk's.
- **MBR**: a primary partition in the first free slot of the four; partitions end below 2 TiB of
  512-byte sectors (32-bit LBAs), so on a larger disk the new one ends there.

The new partition is 1 MiB aligned and as close to the disk's end as that allows; it must lie after every
existing partition, or nothing is written and `PartitionError` says why. Its contents are written first,
then the backup table, then the primary: until the primary table is written the disk reads as before. The
running kernel is not told (the agent boots another one next, which reads the new table). Sector sizes
512 and 4096 are supported; the caller gives the disk's logical sector size.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import Any, NamedTuple

from rhaas.agent.vfat import utf16le

MIB = 1 << 20
SECTOR_SIZES = (512, 4096)
#: Microsoft basic data: what a FAT file system's GPT partition is typed.
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
#: A FAT32-with-LBA MBR partition, which every reader of FAT volumes on MBR disks accepts.
MBR_FAT_LBA = 0x0C
_MBR_PROTECTIVE = 0xEE
_MBR_EXTENDED = (0x05, 0x0F, 0x85)
_GPT_SIGNATURE = b"EFI PART"
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_MAX_ENTRIES_BYTES = 1 << 20


class PartitionError(RuntimeError):
    """The disk has no partition table this can edit, no room or slot for the partition, or a bad table."""


class Added(NamedTuple):
    """The partition `add_partition` wrote."""

    table: str  # "gpt" or "mbr"
    number: int  # 1-based: /dev/vdaN
    start: int  # bytes from the disk's start
    size: int  # bytes
    guid: str  # GPT: the partition's unique GUID; MBR: ""
    backup_moved: bool  # GPT: the backup table moved to the disk's end


class _Gpt(NamedTuple):
    header: bytes  # the primary header's header_size bytes
    fields: tuple[Any, ...]  # _GPT_HEADER's fields
    entries: bytearray


def add_partition(
    path: str,
    disk_size: int,
    sector_size: int,
    content: bytes,
    name: str = "cidata",
    seed: bytes = b"",
) -> Added:
    """Write `content` into a new partition at the end of the disk at `path` and add it to the table.

    `disk_size` is the disk's size in bytes, `sector_size` its logical sector size; `content`'s length
    is the partition's size (a multiple of the sector size). `name` is the GPT partition name; `seed`
    goes into the derivation of its unique GUID. Raises `PartitionError` (and writes nothing) if the disk
    has no partition table, no room after its last partition, or no free slot in its table.
    """
    if sector_size not in SECTOR_SIZES:
        raise PartitionError(f"unsupported sector size {sector_size} (supported: {SECTOR_SIZES})")
    if not content or len(content) % sector_size:
        raise PartitionError(f"a partition of {len(content)} bytes is not a whole number of sectors")
    sectors = disk_size // sector_size
    fd = os.open(path, os.O_RDWR)
    try:
        mbr = _read(fd, 0, 512)
        if mbr[510:512] == b"\x55\xaa" and any(entry[2] == _MBR_PROTECTIVE for entry in _mbr_entries(mbr)):
            added = _add_gpt(fd, sectors, sector_size, content, name, seed, mbr)
        else:
            if _read(fd, 512, 8) == _GPT_SIGNATURE or _read(fd, 4096, 8) == _GPT_SIGNATURE:
                raise PartitionError("the disk has a GPT header but no protective MBR: not editing it")
            added = _add_mbr(fd, sectors, sector_size, content, mbr)
        os.fsync(fd)
        return added
    finally:
        os.close(fd)


def guid_bytes(text: str) -> bytes:
    """A GUID's text form in GPT's byte order (the first three fields little-endian)."""
    raw = bytes.fromhex(text.replace("-", ""))
    if len(raw) != 16:
        raise ValueError(f"not a GUID: {text!r}")
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


def guid_text(raw: bytes) -> str:
    """The text form (upper case, as sgdisk and sfdisk show it) of a GUID in GPT's byte order."""
    b = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = b.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _add_gpt(fd: int, sectors: int, ss: int, content: bytes, name: str, seed: bytes, mbr: bytes) -> Added:
    gpt = _read_gpt(fd, ss, sectors)
    (sig, rev, hsize, _crc, res, my_lba, alt_lba, first, last_usable, disk_guid,
     entries_lba, count, esize, _ecrc) = gpt.fields  # fmt: skip
    last_lba = sectors - 1
    entry_sectors = -(-count * esize // ss)
    moved = alt_lba != last_lba
    if moved:
        last_usable = last_lba - entry_sectors - 1
    used = []
    free_slot = None
    for n in range(count):
        type_guid, unique, start, end, _attrs, _name = _GPT_ENTRY.unpack_from(gpt.entries, n * esize)
        if type_guid == bytes(16):
            if free_slot is None:
                free_slot = n
            continue
        if end > last_usable or start < first or end < start:
            raise PartitionError(f"GPT partition {n + 1} ({start}-{end}) lies outside the usable sectors")
        used.append((start, end, unique))
    if free_slot is None:
        raise PartitionError(f"the GPT has no free entry (all {count} are used)")
    start, end = _place(ss, len(content), last_usable + 1, max([first - 1] + [e for _, e, _ in used]) + 1)
    unique = _unique_guid(disk_guid, seed, {u for _, _, u in used})
    name_field = utf16le(name)
    if len(name_field) > 72:
        raise PartitionError(f"GPT partition name {name!r} is longer than 36 UTF-16 units")
    entry = _GPT_ENTRY.pack(guid_bytes(BASIC_DATA), unique, start, end, 0, name_field.ljust(72, b"\0"))
    at = free_slot * esize
    gpt.entries[at : at + esize] = entry.ljust(esize, b"\0")
    entries_crc = zlib.crc32(gpt.entries)
    backup_entries_lba = last_lba - entry_sectors

    def header(me: int, other: int, table: int) -> bytes:
        fields = (sig, rev, hsize, 0, res, me, other, first, last_usable, disk_guid, table, count, esize,
                  entries_crc)  # fmt: skip
        raw = bytearray(gpt.header)
        raw[: _GPT_HEADER.size] = _GPT_HEADER.pack(*fields)
        raw[16:20] = struct.pack("<I", zlib.crc32(raw))
        return bytes(raw).ljust(ss, b"\0")

    if moved and alt_lba < start:  # the old backup header, now in free space: no tool should find it
        _write(fd, alt_lba * ss, bytes(ss))
    _write(fd, start * ss, content)
    _write(fd, backup_entries_lba * ss, bytes(gpt.entries))
    _write(fd, last_lba * ss, header(last_lba, 1, backup_entries_lba))
    _write(fd, entries_lba * ss, bytes(gpt.entries))
    _write(fd, ss, header(1, last_lba, entries_lba))
    _grow_protective(fd, mbr, sectors)
    return Added("gpt", free_slot + 1, start * ss, len(content), guid_text(unique), moved)


def _read_gpt(fd: int, ss: int, sectors: int) -> _Gpt:
    raw = _read(fd, ss, ss)
    if raw[:8] != _GPT_SIGNATURE:
        other = 4096 if ss == 512 else 512
        if _read(fd, other, 8) == _GPT_SIGNATURE:
            raise PartitionError(f"the GPT was written for {other}-byte sectors; this disk's are {ss} bytes")
        raise PartitionError("the protective MBR has no GPT header behind it")
    hsize = struct.unpack_from("<I", raw, 12)[0]
    if not _GPT_HEADER.size <= hsize <= ss:
        raise PartitionError(f"GPT header size {hsize} is not valid")
    header = raw[:hsize]
    fields = _GPT_HEADER.unpack_from(header)
    check = bytearray(header)
    check[16:20] = bytes(4)
    if zlib.crc32(check) != fields[3]:
        raise PartitionError("the primary GPT header's CRC32 does not match")
    my_lba, alt_lba, first, last_usable = fields[5:9]
    entries_lba, count, esize, entries_crc = fields[10:14]
    if my_lba != 1:
        raise PartitionError(f"the primary GPT header says it is at LBA {my_lba}, not 1")
    if esize < _GPT_ENTRY.size or esize % 8 or not 0 < count * esize <= _MAX_ENTRIES_BYTES:
        raise PartitionError(f"GPT entry array of {count} entries of {esize} bytes is not valid")
    entry_sectors = -(-count * esize // ss)
    if entries_lba < 2 or entries_lba + entry_sectors > first or not first <= last_usable < alt_lba:
        raise PartitionError("the GPT header's LBAs are not consistent")
    if alt_lba >= sectors:
        raise PartitionError(
            f"the GPT's backup header is at LBA {alt_lba}, past the disk's end ({sectors} sectors)"
        )
    entries = bytearray(_read(fd, entries_lba * ss, count * esize))
    if zlib.crc32(entries) != entries_crc:
        raise PartitionError("the GPT partition entries' CRC32 does not match")
    return _Gpt(header, fields, entries)


def _grow_protective(fd: int, mbr: bytes, sectors: int) -> None:
    """Make the protective MBR's 0xEE partition cover the whole disk, if it covered the image only."""
    out = bytearray(mbr)
    for n, (status, _chs, kind, _end, start, size) in enumerate(_mbr_entries(mbr)):
        want = min(sectors - 1, 0xFFFFFFFF)
        if kind == _MBR_PROTECTIVE and start == 1 and size < want:
            out[446 + 16 * n : 462 + 16 * n] = _MBR_ENTRY.pack(status, _chs, kind, _chs_of(want), 1, want)
    if out != mbr:
        _write(fd, 0, bytes(out))


def _add_mbr(fd: int, sectors: int, ss: int, content: bytes, mbr: bytes) -> Added:
    if mbr[510:512] != b"\x55\xaa":
        raise PartitionError("the disk has no partition table (no MBR signature, no GPT)")
    entries = _mbr_entries(mbr)
    used = [(start, start + size - 1) for status, _, kind, _, start, size in entries if kind]
    if not used or any(e[0] not in (0, 0x80) for e in entries) or any(s == 0 for s, _ in used):
        raise PartitionError("the disk has no partition table (its first sector holds no valid MBR entries)")
    limit = min(sectors, 0xFFFFFFFF)
    for start, end in used:
        if end >= sectors:
            raise PartitionError(f"MBR partition {start}-{end} ends past the disk's end ({sectors} sectors)")
    slot = next((n for n, e in enumerate(entries) if e[2] == 0), None)
    if slot is None:
        raise PartitionError("the MBR has no free primary slot (all four are used)")
    start, end = _place(ss, len(content), limit, max(end for _, end in used) + 1)
    size = end - start + 1
    out = bytearray(mbr)
    out[446 + 16 * slot : 462 + 16 * slot] = _MBR_ENTRY.pack(
        0, _chs_of(start), MBR_FAT_LBA, _chs_of(end), start, size
    )
    _write(fd, start * ss, content)
    _write(fd, 0, bytes(out))
    return Added("mbr", slot + 1, start * ss, len(content), "", False)


def _place(ss: int, length: int, limit: int, after: int) -> tuple[int, int]:
    """First and last sector of `length` bytes, 1 MiB aligned, ending before sector `limit`, from `after`."""
    start_byte = (limit * ss - length) // MIB * MIB
    start = start_byte // ss
    if start_byte < 0 or start < after:
        free = max(0, limit - after) * ss
        raise PartitionError(
            f"no room for a {length // 1024} KiB partition after the last one: {free // 1024} KiB free at "
            "the disk's end"
        )
    return start, start + length // ss - 1


def _unique_guid(disk_guid: bytes, seed: bytes, taken: set[bytes]) -> bytes:
    """A random-looking (version 4) GUID derived from the disk's GUID and `seed`, not one in `taken`."""
    digest = hashlib.sha256(b"rhaas partition\0" + disk_guid + seed).digest()
    while True:
        raw = bytearray(digest[:16])
        raw[7] = (raw[7] & 0x0F) | 0x40  # the version nibble: the third field is little-endian
        raw[8] = (raw[8] & 0x3F) | 0x80
        if bytes(raw) not in taken:
            return bytes(raw)
        digest = hashlib.sha256(digest).digest()  # pragma: no cover - a collision of 122 bits


def _mbr_entries(mbr: bytes) -> list[tuple[int, bytes, int, bytes, int, int]]:
    return [_MBR_ENTRY.unpack_from(mbr, 446 + 16 * n) for n in range(4)]


def _chs_of(lba: int) -> bytes:
    """`lba` as CHS for 255 heads and 63 sectors a track; the largest CHS past 1024 cylinders."""
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 62
    return bytes([head, ((sector + 1) & 0x3F) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def _read(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise PartitionError(f"the disk ends before byte {offset + length}")
    return data


def _write(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done
