"""A small VFAT file system built in memory: a volume label and a few files in its root (stdlib only).

The agent hands cloud-init its seed on such a volume (see `rhaas.agent.cidata`): cloud-init's NoCloud data
source looks for a vfat or iso9660 file system labelled ``cidata`` or ``CIDATA``, and no ``mkfs`` ships in
the FPBL. The layout is FAT12, which covers volumes up to about 127 MiB, far more than a seed needs:

- one boot sector (BIOS parameter block, label, serial), in the disk's logical sector size: Linux mounts a
  FAT only if its sectors are at least as large as the device's, so a 4096-byte-sector disk gets a
  4096-byte-sector FAT;
- two copies of the FAT, then a fixed root directory of 512 entries, then the files, each in consecutive
  clusters in the order given;
- every name gets VFAT long-name entries (``meta-data`` and ``network-config`` are not 8.3 names; the
  short names are ``META-D~1`` and the like) with the checksum of their short entry.

The output depends only on the arguments: fixed timestamps (2000-01-01 00:00) and a serial number taken
from a hash of the contents, so the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

#: Logical sector sizes the volume can be built for.
SECTOR_SIZES = (512, 4096)
#: Root directory entries (a fixed area in FAT12): a label and a few files need far fewer.
ROOT_ENTRIES = 512
#: Largest cluster count of a FAT12 volume, kept well below 4085 where readers switch to FAT16.
MAX_CLUSTERS = 4000
_MAX_CLUSTER_BYTES = 32 << 10
_RESERVED_SECTORS = 1
_FATS = 2
_MEDIA = 0xF8  # a fixed disk
_ATTR_ARCHIVE = 0x20
_ATTR_VOLUME_ID = 0x08
_ATTR_LONG_NAME = 0x0F
_END_OF_CHAIN = 0xFFF
_DATE = ((2000 - 1980) << 9) | (1 << 5) | 1  # 2000-01-01, in FAT's date format
_TIME = 0
_LFN_UNITS = 13  # UTF-16 units of a name held by one long-name entry
_SHORT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")
_LONG_FORBIDDEN = frozenset('\\/:*?"<>|')
_BOOT = struct.Struct("<3s8sHBHBHHBHHHIIBBBI11s8s")
_DIRENT = struct.Struct("<11sBBBHHHHHHHI")
# The boot code after the parameter block: int 0x18 (no bootable volume here), then halt in a loop.
_BOOT_CODE = b"\xcd\x18\xf4\xeb\xfd"


class VfatError(ValueError):
    """The volume cannot hold what it was asked to: a bad label or name, or contents too large."""


class Layout:
    """Where everything of a volume of `size` bytes lies, in sectors (`build` computes it)."""

    def __init__(self, size: int, sector_size: int) -> None:
        if sector_size not in SECTOR_SIZES:
            raise VfatError(f"unsupported sector size {sector_size} (supported: {SECTOR_SIZES})")
        if size % sector_size or size < 64 * sector_size:
            raise VfatError(
                f"a volume of {size} bytes is not a multiple of 64 sectors of {sector_size} bytes"
            )
        if size // sector_size > 0xFFFFFFFF:
            raise VfatError(f"a volume of {size} bytes is too large")
        self.sector_size = sector_size
        self.total = size // sector_size
        self.root_sectors = ROOT_ENTRIES * 32 // sector_size
        per_cluster = 1
        while True:
            fat_sectors = 1
            while True:  # the FAT must describe the clusters left beside it: grows to a fixed point
                data = self.total - _RESERVED_SECTORS - _FATS * fat_sectors - self.root_sectors
                clusters = data // per_cluster
                needed = -(-((clusters + 2) * 3 // 2 + 1) // sector_size)
                if needed <= fat_sectors:
                    break
                fat_sectors = needed
            if clusters <= MAX_CLUSTERS:
                break
            per_cluster *= 2
            if per_cluster * sector_size > _MAX_CLUSTER_BYTES:
                raise VfatError(f"a volume of {size} bytes is too large for FAT12")
        self.per_cluster = per_cluster
        self.fat_sectors = fat_sectors
        self.clusters = clusters
        self.cluster_bytes = per_cluster * sector_size
        self.root_start = _RESERVED_SECTORS + _FATS * fat_sectors
        self.data_start = self.root_start + self.root_sectors

    def clusters_for(self, length: int) -> int:
        """Clusters a file of `length` bytes takes (an empty file takes none)."""
        return -(-length // self.cluster_bytes)


def build(
    size: int,
    label: str,
    files: Sequence[tuple[str, bytes]],
    sector_size: int = 512,
    hidden_sectors: int = 0,
) -> bytes:
    """The bytes of a FAT12 volume of `size` bytes labelled `label`, holding `files` (name, contents).

    `hidden_sectors` is the volume's first sector on its disk (in `sector_size` units), recorded in the
    parameter block as on a partitioned disk. Raises `VfatError` if a name or the label is not valid, two
    names are equal but for case, or the files do not fit.
    """
    layout = Layout(size, sector_size)
    label_field = _label_field(label)
    _check_names([name for name, _ in files])
    needed = sum(layout.clusters_for(len(data)) for _, data in files)
    if needed > layout.clusters:
        raise VfatError(
            f"the files need {needed} clusters of {layout.cluster_bytes} bytes; a volume of {size} bytes "
            f"has {layout.clusters}"
        )
    image = bytearray(size)
    image[0:sector_size] = _boot_sector(
        layout, label_field, _serial(size, sector_size, label, files), hidden_sectors
    )
    fat = _FatTable(layout.clusters)
    root = bytearray()
    root += _DIRENT.pack(label_field, _ATTR_VOLUME_ID, 0, 0, _TIME, _DATE, _DATE, 0, _TIME, _DATE, 0, 0)
    taken: set[bytes] = set()
    cluster = 2
    for name, data in files:
        count = layout.clusters_for(len(data))
        first = cluster if count else 0
        for n in range(cluster, cluster + count):
            fat.set(n, n + 1 if n + 1 < cluster + count else _END_OF_CHAIN)
        offset = (layout.data_start + (cluster - 2) * layout.per_cluster) * sector_size
        image[offset : offset + len(data)] = data
        cluster += count
        short = _short_name(name, taken)
        taken.add(short)
        root += _long_entries(name, _checksum(short))
        root += _DIRENT.pack(
            short, _ATTR_ARCHIVE, 0, 0, _TIME, _DATE, _DATE, 0, _TIME, _DATE, first, len(data)
        )
    if len(root) > ROOT_ENTRIES * 32:
        raise VfatError(f"the names need {len(root) // 32} directory entries; the root holds {ROOT_ENTRIES}")
    table = fat.bytes(layout.fat_sectors * sector_size)
    for copy in range(_FATS):
        start = (_RESERVED_SECTORS + copy * layout.fat_sectors) * sector_size
        image[start : start + len(table)] = table
    image[layout.root_start * sector_size : layout.root_start * sector_size + len(root)] = root
    return bytes(image)


def _boot_sector(layout: Layout, label: bytes, serial: int, hidden: int) -> bytes:
    total16, total32 = (layout.total, 0) if layout.total < 0x10000 else (0, layout.total)
    # OEM name: the one the FAT specification recommends for compatibility with every reader.
    head = _BOOT.pack(
        b"\xeb\x3c\x90", b"MSWIN4.1", layout.sector_size, layout.per_cluster, _RESERVED_SECTORS, _FATS,
        ROOT_ENTRIES, total16, _MEDIA, layout.fat_sectors, 63, 255, hidden, total32,
        0x80, 0, 0x29, serial, label, b"FAT12   ",
    )  # fmt: skip
    sector = bytearray(layout.sector_size)
    sector[: len(head)] = head
    sector[len(head) : len(head) + len(_BOOT_CODE)] = _BOOT_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


class _FatTable:
    """FAT12 entries: 12 bits each, two entries in three bytes."""

    def __init__(self, clusters: int) -> None:
        self.entries = [0] * (clusters + 2)
        self.entries[0] = 0xF00 | _MEDIA
        self.entries[1] = _END_OF_CHAIN

    def set(self, cluster: int, value: int) -> None:
        self.entries[cluster] = value

    def bytes(self, length: int) -> bytes:
        out = bytearray(length)
        for n, value in enumerate(self.entries):
            at = n + n // 2
            if n % 2 == 0:
                out[at] = value & 0xFF
                out[at + 1] = (out[at + 1] & 0xF0) | (value >> 8)
            else:
                out[at] = (out[at] & 0x0F) | ((value & 0x0F) << 4)
                out[at + 1] = value >> 4
        return bytes(out)


def _label_field(label: str) -> bytes:
    if not label or len(label) > 11 or label != label.strip() or any(c not in _SHORT_CHARS for c in label):
        raise VfatError(f"volume label {label!r}: 1 to 11 characters of A-Z, 0-9 and !#$%&'()-@^_`{{}}~")
    return label.encode("ascii").ljust(11, b" ")


def _check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        units = len(utf16le(name)) // 2
        bad = [c for c in name if c in _LONG_FORBIDDEN or ord(c) < 0x20]
        if not name or units > 255 or bad or name in (".", "..") or name.endswith((" ", ".")):
            raise VfatError(f"file name {name!r} is not a valid VFAT name")
        if name.lower() in seen:
            raise VfatError(f"file name {name!r} is given twice (VFAT names ignore case)")
        seen.add(name.lower())


def _short_name(name: str, taken: set[bytes]) -> bytes:
    """An 8.3 name for `name` with a numeric tail (``META-D~1``): the long-name entries carry the name."""
    stem, dot, ext = name.upper().rpartition(".")
    if not dot or not stem:
        stem, ext = name.upper(), ""
    stem = "".join(c for c in stem if c in _SHORT_CHARS) or "FILE"
    ext = "".join(c for c in ext if c in _SHORT_CHARS)[:3]
    for n in range(1, 1000000):
        tail = f"~{n}"
        short = (stem[: 8 - len(tail)] + tail).ljust(8).encode("ascii") + ext.ljust(3).encode("ascii")
        if short not in taken:
            return short
    raise VfatError(f"no short name is left for {name!r}")  # pragma: no cover - a million files


def _checksum(short: bytes) -> int:
    """The checksum of an 11-byte short name that each of its long-name entries carries."""
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _long_entries(name: str, checksum: int) -> bytes:
    """The long-name entries of `name`, in directory order (the last part first)."""
    units = utf16le(name)
    count = -(-len(units) // (2 * _LFN_UNITS))
    if len(units) % (2 * _LFN_UNITS):
        units += b"\x00\x00"  # a terminator, then 0xFFFF fill
    units = units.ljust(count * 2 * _LFN_UNITS, b"\xff")
    entries = []
    for n in range(count):
        part = units[n * 26 : (n + 1) * 26]
        order = (n + 1) | (0x40 if n == count - 1 else 0)
        entries.append(
            bytes([order]) + part[0:10] + bytes([_ATTR_LONG_NAME, 0, checksum]) + part[10:22] + b"\0\0"
            + part[22:26]
        )  # fmt: skip
    return b"".join(reversed(entries))


def utf16le(text: str) -> bytes:
    """`text` in UTF-16LE, by hand: the FPBL ships only the UTF-8, ASCII and Latin-1 codecs."""
    out = bytearray()
    for char in text:
        code = ord(char)
        if code >= 0x10000:
            code -= 0x10000
            out += struct.pack("<HH", 0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))
        else:
            out += struct.pack("<H", code)
    return bytes(out)


def _serial(size: int, sector_size: int, label: str, files: Sequence[tuple[str, bytes]]) -> int:
    digest = hashlib.sha256(f"{size}\0{sector_size}\0{label}\0".encode())
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return int.from_bytes(digest.digest()[:4], "little")
