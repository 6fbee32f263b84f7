"""The one newc cpio writer of rhaas (standard library only).

The kernel unpacks an initramfs from newc ("070701") cpio archives, and unpacks archives laid end to
end one after the other. The agent writes them inside the FPBL (the return payload, see
`rhaas.agent.kexec`), streaming files of tens of MB; the image builders (`rhaas.imaging`) write theirs
with this same class, so the FPBL and what it appends agree byte for byte. Archives are reproducible:
mtime 0, uid/gid 0, inodes numbered from 1.

It must stay standard library only and small: it ships inside the FPBL.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

_COPY_CHUNK = 1 << 20


class CpioWriter:
    """A newc cpio archive written to ``out`` as it goes; `close` writes its trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.written = 0

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _header(self, name: str, mode: int, size: int, rdev: tuple[int, int] = (0, 0)) -> None:
        raw = name.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, 0, size, 0, 0, *rdev, len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._emit(header + raw + b"\0" * (-(len(header) + len(raw)) % 4))
        self.ino += 1

    def entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        """Any member: ``mode`` has the file type bits; ``data`` is a symlink's target for a symlink,
        ``rdev`` a device's (major, minor)."""
        self._header(name, mode, len(data), rdev)
        self._emit(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._header(name, stat.S_IFDIR | 0o755, 0)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self.entry(name, stat.S_IFREG | perm, data)

    def copy(self, name: str, path: str, perm: int | None = None) -> None:
        """Add the file at ``path`` as ``name``, streamed; ``perm`` defaults to the file's own."""
        info = os.stat(path)
        mode = stat.S_IMODE(info.st_mode) if perm is None else perm
        self._header(name, stat.S_IFREG | mode, info.st_size)
        with open(path, "rb") as f:
            copied = 0
            while chunk := f.read(_COPY_CHUNK):
                self._emit(chunk)
                copied += len(chunk)
        if copied != info.st_size:
            raise OSError(f"{path} changed size while being archived")
        self._emit(b"\0" * (-copied % 4))

    def close(self) -> None:
        self._header("TRAILER!!!", 0, 0)


def pad4(out: BinaryIO, length: int) -> int:
    """Zero-pad ``out`` (``length`` bytes so far) so that the next archive starts 4-byte aligned, as the
    kernel requires of an uncompressed cpio in a concatenated initrd."""
    pad = -length % 4
    out.write(b"\0" * pad)
    return length + pad
