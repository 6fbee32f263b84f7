"""Initramfs members, and archives of them: written with the agent's cpio writer, read back for checks.

An image builder collects `CpioEntry` members (the helpers below make the usual ones) and writes them
with `write_cpio`, which drives `rhaas.agent.cpio.CpioWriter`: rhaas has one cpio writer, the one that
ships inside the FPBL. `read_cpio` is its inverse, for tests and checks; nothing here boots anything.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rhaas.agent.cpio import CpioWriter


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive. ``data`` is a symlink's target for a symlink."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def dir_entry(name: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | 0o755)


def file_entry(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def symlink_entry(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev_entry(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def with_parents(entries: dict[str, CpioEntry]) -> list[CpioEntry]:
    """``entries`` plus a directory entry for every parent, sorted by name (parents first)."""
    out = dict(entries)
    for name in list(entries):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.setdefault("/".join(parts[:i]), dir_entry("/".join(parts[:i])))
    return [out[n] for n in sorted(out)]


def write_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive, as the kernel unpacks an initramfs. Reproducible: mtime 0."""
    out = io.BytesIO()
    cpio = CpioWriter(out)
    for entry in entries:
        cpio.entry(entry.name, entry.mode, entry.data, entry.rdev)
    cpio.close()
    return out.getvalue()


def gzip_archive(archive: bytes) -> bytes:
    """An archive compressed as an initrd, reproducibly (no timestamp in the gzip header)."""
    return gzip.compress(archive, compresslevel=9, mtime=0)


def read_cpio(archive: bytes) -> dict[str, CpioEntry]:
    """The members of a newc cpio archive by name (the inverse of `write_cpio`, for tests and checks)."""
    members: dict[str, CpioEntry] = {}
    pos = 0
    while pos < len(archive):
        if archive[pos : pos + 6] != b"070701":
            raise ValueError(f"not a newc cpio header at offset {pos}")
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        rdev = (fields[9], fields[10])
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            break
        members[name] = CpioEntry(name, mode, data, rdev)
    return members


def read_initrd(path: Path) -> dict[str, CpioEntry]:
    """The members of a gzip-compressed newc initrd."""
    return read_cpio(gzip.decompress(path.read_bytes()))
