"""What every read-only file system reader shares: bounded reads from a device, and path walking.

A reader (ext4, xfs, vfat) answers four questions about its own nodes (what a name in a directory is,
what a directory lists, what a file holds, where a link points); `FileSystem` turns them into paths:
components are looked up one by one, symbolic links are followed (an absolute target is taken from this
file system's root: the agent reads an image, not the FPBL's own tree), ``..`` stops at the root, and a
loop ends after `MAX_LINKS` links as in Linux. Nothing here writes: the device is opened read-only and
every read is bounded by the volume's size, so a corrupt pointer is an `FsError`, not a read of another
partition's bytes.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from typing import BinaryIO, TypeVar

#: Largest file `FileSystem.read` returns unless told otherwise: a distribution's kernel and initrd fit.
MAX_READ = 512 << 20
#: Symbolic links followed in one path walk (Linux's limit).
MAX_LINKS = 40
#: Reads of this size or less are cached (metadata: superblocks, inodes, directory and extent blocks).
_CACHED_READ = 64 << 10
_CACHE_ENTRIES = 4096


#: What parsing corrupt metadata can raise besides FsError: turned into FsError at the public methods, so
#: a damaged image is reported as such rather than as a crash of the agent.
_CORRUPT = (struct.error, IndexError, ValueError, KeyError, OverflowError, RecursionError)


class FsError(RuntimeError):
    """A file system cannot be read as it should: corrupt, unsupported, or the path is not there."""


class NotFoundError(FsError):
    """A path names nothing (a component is missing, or a file is used as a directory)."""


_T = TypeVar("_T")


def guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """Make a public method raise FsError, naming the path, for whatever corrupt metadata causes."""

    def call(self: FileSystem, path: str, *args: object, **kwargs: object) -> _T:
        try:
            return method(self, path, *args, **kwargs)
        except _CORRUPT as exc:
            raise FsError(f"{path}: {self.fstype} metadata is corrupt ({type(exc).__name__}: {exc})") from exc

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class Volume:
    """A byte range of a device (a partition, or the whole disk), read by absolute offsets within it.

    Reads use ``os.pread`` where the file has a descriptor (a block device or an image file), so readers
    never share a file position; small reads are cached because metadata blocks are read again and again.
    """

    def __init__(self, dev: BinaryIO, offset: int = 0, size: int | None = None) -> None:
        self.dev = dev
        self.offset = offset
        if size is None:
            size = _device_size(dev) - offset
        self.size = size
        try:
            self._fd: int | None = dev.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._cache: dict[tuple[int, int], bytes] = {}

    def read(self, pos: int, length: int) -> bytes:
        """``length`` bytes at ``pos`` of the volume; FsError past its end or on a short read."""
        if pos < 0 or length < 0 or pos + length > self.size:
            raise FsError(f"read of {length} bytes at {pos} is outside the volume ({self.size} bytes)")
        if length == 0:
            return b""
        key = (pos, length)
        if length <= _CACHED_READ:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        data = self._raw(self.offset + pos, length)
        if len(data) != length:
            raise FsError(f"short read: {len(data)} of {length} bytes at {pos}")
        if length <= _CACHED_READ:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = data
        return data

    def read_into(self, pos: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``pos`` (large file data: no cache, no extra copy where possible)."""
        length = len(buf)
        if pos < 0 or pos + length > self.size:
            raise FsError(f"read of {length} bytes at {pos} is outside the volume ({self.size} bytes)")
        done = 0
        while done < length:
            if self._fd is not None:
                n = os.preadv(self._fd, [buf[done:]], self.offset + pos + done)
            else:
                chunk = self._raw(self.offset + pos + done, length - done)
                n = len(chunk)
                buf[done : done + n] = chunk
            if n <= 0:
                raise FsError(f"short read: {done} of {length} bytes at {pos}")
            done += n

    def read_runs(self, size: int, block_size: int, runs: list[tuple[int, int, int, bool]]) -> bytes:
        """A file of ``size`` bytes from its runs (first logical block, byte offset on the volume, block
        count, unwritten): what no written run covers reads as zeroes, as a hole does."""
        out = bytearray(size)
        view = memoryview(out)
        for logical, offset, count, unwritten in runs:
            start = logical * block_size
            if unwritten or start >= size:
                continue
            self.read_into(offset, view[start : min(size, start + count * block_size)])
        return bytes(out)

    def _raw(self, pos: int, length: int) -> bytes:
        if self._fd is not None:
            parts = []
            while length > 0:
                chunk = os.pread(self._fd, length, pos)
                if not chunk:
                    break
                parts.append(chunk)
                pos += len(chunk)
                length -= len(chunk)
            return b"".join(parts)
        self.dev.seek(pos)
        return self.dev.read(length)


def _device_size(dev: BinaryIO) -> int:
    """The size of an image file or a block device (seeking to the end works for both)."""
    here = dev.tell()
    try:
        return dev.seek(0, os.SEEK_END)
    finally:
        dev.seek(here)


class Node:
    """A file system object: what it is (``S_IFMT`` bits of its mode) and its size in bytes.

    Readers subclass it with what they need to find its data (an inode, a first cluster)."""

    def __init__(self, mode: int, size: int) -> None:
        self.mode = mode
        self.size = size

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class FileSystem:
    """A read-only file system. Readers implement the ``_`` methods; paths are handled here.

    ``fstype`` is the name blkid would give (``ext4``, ``xfs``, ``vfat``); ``uuid`` and ``label`` are
    formatted as blkid shows them, because that is what ``root=UUID=…`` and ``search --fs-uuid`` name.
    """

    fstype = ""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.uuid = ""
        self.label = ""

    # What a reader implements.
    def _root(self) -> Node:
        raise NotImplementedError

    def _names(self, directory: Node) -> list[str]:
        """The names in a directory but ``.`` and ``..``."""
        raise NotImplementedError

    def _lookup(self, directory: Node, name: str) -> Node | None:
        """The node ``name`` names in ``directory`` (never ``.`` or ``..``), None if there is none."""
        raise NotImplementedError

    def _read(self, node: Node, limit: int) -> bytes:
        raise NotImplementedError

    def _readlink(self, node: Node) -> str:
        raise FsError(f"{self.fstype} has no symbolic links")

    # Paths.
    @guarded
    def resolve(self, path: str, follow: bool = True) -> Node:
        """The node ``path`` names, following links (the last one too unless ``follow`` is false)."""
        root = self._root()
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        stack: list[Node] = []  # the directories walked into, for ".."
        node = root
        links = 0
        while todo:
            name = todo.pop()
            if name == "..":
                node = stack.pop() if stack else root
                continue
            if not node.is_dir:
                raise NotFoundError(f"{path}: not a directory")
            found = self._lookup(node, name)
            if found is None:
                raise NotFoundError(f"{path}: no such file or directory")
            if found.is_link and (todo or follow):
                links += 1
                if links > MAX_LINKS:
                    raise FsError(f"{path}: too many levels of symbolic links")
                target = self._readlink(found)
                parts = [c for c in target.split("/") if c and c != "."]
                if target.startswith("/"):
                    stack, node = [], root
                todo.extend(reversed(parts))
                continue
            stack.append(node)
            node = found
        return node

    @guarded
    def read(self, path: str, limit: int = MAX_READ) -> bytes:
        """A regular file's bytes; FsError if it is larger than ``limit`` or not a regular file."""
        node = self.resolve(path)
        if not node.is_file:
            raise FsError(f"{path}: not a regular file")
        if node.size > limit:
            raise FsError(f"{path}: {node.size} bytes, more than the {limit} allowed")
        return self._read(node, limit)

    @guarded
    def readlink(self, path: str) -> str:
        """Where a symbolic link points (as written in the link)."""
        node = self.resolve(path, follow=False)
        if not node.is_link:
            raise FsError(f"{path}: not a symbolic link")
        return self._readlink(node)

    @guarded
    def listdir(self, path: str) -> list[str]:
        """The names in a directory, sorted, without ``.`` and ``..``."""
        node = self.resolve(path)
        if not node.is_dir:
            raise FsError(f"{path}: not a directory")
        return sorted(self._names(node))

    def exists(self, path: str) -> bool:
        """Whether ``path`` names something (following links; a dangling link does not exist)."""
        try:
            self.resolve(path)
        except FsError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        try:
            return self.resolve(path).is_dir
        except FsError:
            return False

    def is_link(self, path: str) -> bool:
        try:
            return self.resolve(path, follow=False).is_link
        except FsError:
            return False

    def size(self, path: str) -> int:
        return self.resolve(path).size

    def __repr__(self) -> str:
        return f"<{self.fstype} uuid={self.uuid!r} label={self.label!r}>"


def utf16le(raw: bytes) -> str:
    """UTF-16LE text (GPT partition names, vfat long names), up to the first NUL.

    Decoded by hand: ``bytes.decode("utf-16-le")`` loads a codec module the FPBL does not ship (only
    UTF-8, Latin-1 and ASCII are built into the interpreter). Unpaired surrogates become U+FFFD."""
    units = struct.unpack(f"<{len(raw) // 2}H", raw[: len(raw) // 2 * 2])
    out = []
    i = 0
    while i < len(units):
        unit = units[i]
        if unit == 0:
            break
        if 0xD800 <= unit < 0xDC00 and i + 1 < len(units) and 0xDC00 <= units[i + 1] < 0xE000:
            out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (units[i + 1] - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit))
        i += 1
    return "".join(out)


def format_guid(raw: bytes) -> str:
    """A GUID as Linux prints it: the first three fields are little-endian (GPT, vfat does not use it)."""
    return (
        f"{int.from_bytes(raw[0:4], 'little'):08x}-{int.from_bytes(raw[4:6], 'little'):04x}-"
        f"{int.from_bytes(raw[6:8], 'little'):04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"
    )


def format_uuid(raw: bytes) -> str:
    """A UUID stored big-endian (ext4, xfs, btrfs, LUKS) as blkid prints it."""
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
