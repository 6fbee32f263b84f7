"""Whole-disk image files read as their logical content, chunk by chunk: raw, qcow2, and raw compressed
with gzip, xz or zstd.

`open_disk_image` detects the format from the file's first bytes and returns a `DiskSource`, whose
`windows` yields the logical content in `CHUNK_SIZE` windows (the last one shorter), each either its bytes
or None where the format says the window is zeros without reading it: a hole of a sparse raw file, or
qcow2 clusters that are unallocated or marked zero. Nothing reads more than a window (plus a qcow2 L2
table) into memory, whatever the image's size.

The qcow2 reader is written from the format's specification (versions 2 and 3: the header, the L1 and L2
tables, deflate- or zstd-compressed clusters, zero clusters). It refuses what it cannot read alone: a
backing file (the image is only a difference), encryption, an external data file, extended L2 entries
and any incompatible feature it does not know. A truncated or corrupt file is refused wherever the
damage shows; `DiskImageError` (a `BadArgumentError`) says what and where.

Standard library only, but for zstd: the `zstandard` package, imported when a zstd image is read.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from rhaas.errors import BadArgumentError

#: The window the content is cut into; the server's chunk size (rhaas.core.chunks.CHUNK_SIZE).
CHUNK_SIZE = 4 * 2**20

QCOW2_MAGIC = b"QFI\xfb"
#: Magic bytes → format. Anything else is read as raw.
MAGICS = {
    QCOW2_MAGIC: "qcow2",
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
#: Formats recognised only to be refused with advice (read as raw they would be registered as garbage).
UNSUPPORTED = {
    b"KDMV": "VMDK",
    b"vhdxfile": "VHDX",
    b"conectix": "VHD",
    b"<<< Oracle VM VirtualBox Disk Image >>>": "VDI",
}


class DiskImageError(BadArgumentError):
    """The file is not a disk image this client can read: the message says why."""


def detect_format(head: bytes) -> str:
    """The format of a file that starts with ``head`` (its first 64 bytes or more): ``qcow2``, ``gzip``,
    ``xz``, ``zstd`` or ``raw``. Raises DiskImageError for a known format it cannot read."""
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    for magic, what in UNSUPPORTED.items():
        if head.startswith(magic):
            raise DiskImageError(
                f"The file is a {what} image, which is not supported: convert it first "
                "(qemu-img convert -O qcow2 IN OUT.qcow2)."
            )
    return "raw"


class DiskSource:
    """A disk image file's logical content, read once, in order, by `windows`.

    ``virtual_size`` is known before reading for raw and qcow2, and once `windows` is exhausted for the
    compressed formats. ``consumed`` is how many bytes of the file have been read so far (for progress;
    the file's size is ``file_size``)."""

    format = "raw"

    def __init__(self, path: Path, file: io.BufferedReader) -> None:
        self.path = path
        self.file = file
        self.file_size = os.fstat(file.fileno()).st_size
        self.virtual_size: int | None = None
        self.consumed = 0

    def windows(self) -> Iterator[bytes | None]:
        """Each `CHUNK_SIZE` window of the content in order (the last one shorter): its bytes, or None
        when it is known to be zeros without reading."""
        raise NotImplementedError

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> DiskSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, what: str) -> DiskImageError:
        return DiskImageError(f"{self.path}: {what}")


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The (start, end) ranges of a file that hold data (SEEK_DATA/SEEK_HOLE); None if the filesystem
    cannot tell, in which case every range counts as data."""
    ranges: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == 6:  # ENXIO: no data after offset
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            offset = end
    except (OSError, AttributeError):
        return None
    return ranges


class RawSource(DiskSource):
    """A raw file: its bytes are the content. Holes of a sparse file are not read."""

    format = "raw"

    def __init__(self, path: Path, file: io.BufferedReader) -> None:
        super().__init__(path, file)
        self.virtual_size = self.file_size

    def windows(self) -> Iterator[bytes | None]:
        fd, size = self.file.fileno(), self.file_size
        ranges = _data_ranges(fd, size)
        index = 0
        for offset in range(0, size, CHUNK_SIZE):
            end = min(offset + CHUNK_SIZE, size)
            if ranges is not None:
                while index < len(ranges) and ranges[index][1] <= offset:
                    index += 1
                if index == len(ranges) or ranges[index][0] >= end:
                    self.consumed = end
                    yield None
                    continue
            data = os.pread(fd, end - offset, offset)
            if len(data) != end - offset:
                raise self._error(f"the file shrank while it was read (at offset {offset}).")
            self.consumed = end
            yield data


class _Counting(io.RawIOBase):
    """A read-only file that counts what was read through it (the compressed bytes consumed)."""

    def __init__(self, source: DiskSource) -> None:
        super().__init__()
        self.source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.source.file.readinto(buffer)
        self.source.consumed += count
        return count


def _zstandard() -> Any:
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DiskImageError(
            "Reading zstd needs the Python package 'zstandard' (pip install zstandard), which is missing."
        ) from None
    return zstandard


class CompressedSource(DiskSource):
    """A raw image compressed whole with gzip, xz or zstd: decompressed as a stream, read once."""

    def __init__(self, path: Path, file: io.BufferedReader, format: str) -> None:
        super().__init__(path, file)
        self.format = format
        self._errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
        if format == "zstd":
            zstandard = _zstandard()
            self._errors += (zstandard.ZstdError,)

    def _stream(self) -> Iterator[bytes]:
        """The decompressed bytes, in pieces; raises on a corrupt or truncated stream."""
        raw = _Counting(self)
        if self.format == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield from _pieces(stream)
        elif self.format == "xz":
            with lzma.LZMAFile(cast(IO[bytes], raw)) as stream:
                yield from _pieces(stream)
        else:
            yield from self._zstd(raw)

    def _zstd(self, raw: _Counting) -> Iterator[bytes]:
        """zstd frames one after the other, each checked to end (a cut file must not pass as shorter)."""
        zstandard = _zstandard()
        pending = b""
        while True:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            data = pending
            while not decompressor.eof:
                if not data:
                    data = raw.read(1 << 20)
                    if not data:
                        raise EOFError("the zstd stream ends in the middle of a frame")
                out = decompressor.decompress(data)
                data = b""
                if out:
                    yield out
            pending = decompressor.unused_data
            if not pending:
                pending = raw.read(1 << 20)
                if not pending:
                    return

    def windows(self) -> Iterator[bytes | None]:
        buffer = bytearray()
        total = 0
        first = True
        try:
            for piece in self._stream():
                buffer += piece
                if first and len(buffer) >= 4:
                    first = False
                    if bytes(buffer[:4]) == QCOW2_MAGIC:
                        raise self._error(
                            f"a qcow2 image compressed with {self.format}: decompress it first (qcow2 is "
                            "read by random access)."
                        )
                while len(buffer) >= CHUNK_SIZE:
                    with memoryview(buffer) as view:
                        window = bytes(view[:CHUNK_SIZE])
                    del buffer[:CHUNK_SIZE]
                    total += CHUNK_SIZE
                    yield window
        except self._errors as exc:
            raise self._error(
                f"the {self.format} stream is corrupt or truncated after {total + len(buffer)} bytes of "
                f"content ({exc or type(exc).__name__})."
            ) from exc
        if buffer:
            total += len(buffer)
            yield bytes(buffer)
        if total == 0:
            raise self._error(f"the {self.format} stream holds no content: an empty image.")
        self.virtual_size = total


def _pieces(stream: io.BufferedIOBase) -> Iterator[bytes]:
    while piece := stream.read(1 << 20):
        yield piece


# -- qcow2 ------------------------------------------------------------------------------------------------
_V2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # magic … snapshots_offset: 72 bytes
_V3_EXTRA = struct.Struct(">QQQII")  # incompatible, compatible, autoclear features, refcount_order, length
_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62
_ZERO = 1
#: Incompatible feature bits: dirty (refcounts only: the data is fine), corrupt, external data file,
#: compression type, extended L2 entries.
_DIRTY, _CORRUPT, _EXTERNAL_DATA, _COMPRESSION_TYPE, _EXTENDED_L2 = (1 << i for i in range(5))
_KNOWN_INCOMPATIBLE = _DIRTY | _CORRUPT | _EXTERNAL_DATA | _COMPRESSION_TYPE | _EXTENDED_L2


class Qcow2Source(DiskSource):
    """A qcow2 (version 2 or 3) image without a backing file, read through its L1 and L2 tables."""

    format = "qcow2"

    def __init__(self, path: Path, file: io.BufferedReader) -> None:
        super().__init__(path, file)
        self._l2_cache: dict[int, tuple[int, ...]] = {}
        self._decompress: Callable[[bytes], bytes] = self._inflate
        self._decompress_errors: tuple[type[BaseException], ...] = (zlib.error,)
        self._read_header()

    def _pread(self, offset: int, length: int, what: str, *, short_ok: bool = False) -> bytes:
        if offset + length > self.file_size and not short_ok:
            raise self._error(
                f"truncated or corrupt: the {what} at offset {offset} ({length} bytes) is past the end "
                f"of the file ({self.file_size} bytes)."
            )
        data = os.pread(self.file.fileno(), length, offset)
        self.consumed = min(self.file_size, self.consumed + len(data))
        if len(data) != length and not short_ok:
            raise self._error(f"truncated: the {what} at offset {offset} could not be read whole.")
        return data

    def _read_header(self) -> None:
        head = self._pread(0, _V2_HEADER.size, "header")
        (
            _magic,
            version,
            backing_offset,
            backing_size,
            cluster_bits,
            size,
            crypt_method,
            l1_size,
            l1_offset,
            _refcount_table_offset,
            _refcount_table_clusters,
            _nb_snapshots,
            _snapshots_offset,
        ) = _V2_HEADER.unpack(head)
        if version not in (2, 3):
            raise self._error(f"qcow version {version} is not supported (qcow2: versions 2 and 3 are).")
        incompatible, compression_type = 0, 0
        if version == 3:
            extra = self._pread(_V2_HEADER.size, _V3_EXTRA.size, "version 3 header")
            incompatible, _compatible, _autoclear, _refcount_order, header_length = _V3_EXTRA.unpack(extra)
            if header_length < _V2_HEADER.size + _V3_EXTRA.size:
                raise self._error(f"corrupt: a version 3 header of {header_length} bytes is too short.")
            if header_length > 104:
                compression_type = self._pread(104, 1, "compression type")[0]
        if backing_offset:
            name = self._pread(backing_offset, min(backing_size, 1023), "backing file name", short_ok=True)
            shown = name.decode("utf-8", "replace")
            raise self._error(
                f"the qcow2 image has a backing file ({shown}): it holds only the differences. Make it "
                "whole first (qemu-img convert -O qcow2 IN OUT.qcow2)."
            )
        if crypt_method:
            kind = {1: "AES", 2: "LUKS"}.get(crypt_method, f"method {crypt_method}")
            raise self._error(f"the qcow2 image is encrypted ({kind}): decrypt it first.")
        unknown = incompatible & ~_KNOWN_INCOMPATIBLE
        if unknown:
            raise self._error(f"the qcow2 image uses incompatible features unknown here ({unknown:#x}).")
        if incompatible & _CORRUPT:
            raise self._error("qemu marked the qcow2 image corrupt: repair it (qemu-img check -r all).")
        if incompatible & _EXTERNAL_DATA:
            raise self._error("the qcow2 image keeps its data in an external data file: not supported.")
        if incompatible & _EXTENDED_L2:
            raise self._error("the qcow2 image has extended L2 entries (subclusters): not supported.")
        if incompatible & _COMPRESSION_TYPE and compression_type == 1:
            zstandard = _zstandard()
            self._decompress_errors += (zstandard.ZstdError,)
            self._decompress = self._unzstd
        elif incompatible & _COMPRESSION_TYPE and compression_type != 0:
            raise self._error(f"the qcow2 image's compression type {compression_type} is unknown.")
        if not 9 <= cluster_bits <= 21:
            raise self._error(f"corrupt: cluster_bits {cluster_bits} is outside 9 to 21.")
        if size == 0:
            raise self._error("the qcow2 image's virtual size is 0: an empty image.")
        self.version = version
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.l2_entries = self.cluster_size // 8
        self.virtual_size = size
        needed = -(-size // (self.cluster_size * self.l2_entries))
        if l1_size < needed:
            raise self._error(f"corrupt: the L1 table has {l1_size} entries; {size} bytes need {needed}.")
        if l1_offset % self.cluster_size:
            raise self._error(f"corrupt: the L1 table's offset {l1_offset} is not cluster-aligned.")
        table = self._pread(l1_offset, 8 * needed, "L1 table")
        self.l1 = struct.unpack(f">{needed}Q", table)
        self._csize_shift = 62 - (cluster_bits - 8)
        self._csize_mask = (1 << (cluster_bits - 8)) - 1
        self.consumed = 0

    def _l2(self, index: int) -> tuple[int, ...] | None:
        """The L2 table of L1 entry ``index``; None if it is unallocated (its clusters read as zeros)."""
        offset = self.l1[index] & _OFFSET_MASK
        if offset == 0:
            return None
        if offset % self.cluster_size:
            raise self._error(f"corrupt: L2 table offset {offset} is not cluster-aligned.")
        if index not in self._l2_cache:
            if len(self._l2_cache) >= 4:
                self._l2_cache.pop(next(iter(self._l2_cache)))
            table = self._pread(offset, self.cluster_size, "L2 table")
            self._l2_cache[index] = struct.unpack(f">{self.l2_entries}Q", table)
        return self._l2_cache[index]

    def _entry(self, cluster: int) -> int:
        table = self._l2(cluster // self.l2_entries)
        return 0 if table is None else table[cluster % self.l2_entries]

    def _inflate(self, data: bytes) -> bytes:
        inflater = zlib.decompressobj(-15)
        return inflater.decompress(data, self.cluster_size)

    def _unzstd(self, data: bytes) -> bytes:
        zstandard = _zstandard()
        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return out[: self.cluster_size]

    def _compressed(self, entry: int, cluster: int) -> bytes:
        offset = entry & ((1 << self._csize_shift) - 1)
        sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
        length = sectors * 512 - (offset & 511)
        # The last compressed cluster's sectors may reach past the end of the file: read what is there.
        data = self._pread(offset, length, "compressed cluster", short_ok=True)
        try:
            out = self._decompress(data)
        except self._decompress_errors as exc:
            raise self._error(f"corrupt: compressed cluster {cluster} does not decompress ({exc}).") from exc
        if len(out) != self.cluster_size:
            raise self._error(
                f"truncated or corrupt: compressed cluster {cluster} holds {len(out)} bytes, not "
                f"{self.cluster_size}."
            )
        return out

    def windows(self) -> Iterator[bytes | None]:
        size, cs = self.virtual_size or 0, self.cluster_size
        for offset in range(0, size, CHUNK_SIZE):
            end = min(offset + CHUNK_SIZE, size)
            first, last = offset // cs, (end - 1) // cs
            tables = range(first // self.l2_entries, last // self.l2_entries + 1)
            if not any(self.l1[t] & _OFFSET_MASK for t in tables):
                yield None  # no L2 table at all there: a hole, known from the L1 table alone
                continue
            entries = [(c, self._entry(c)) for c in range(first, last + 1)]
            data = [(c, e) for c, e in entries if not self._reads_as_zero(e)]
            if not data:
                yield None
                continue
            window = bytearray(end - offset)
            run: list[tuple[int, int]] = []  # (cluster, host offset) of contiguous standard clusters
            for cluster, entry in data:
                if entry & _COMPRESSED:
                    self._place(window, offset, cluster, self._compressed(entry, cluster))
                    continue
                host = entry & _OFFSET_MASK
                if host % cs:
                    raise self._error(f"corrupt: cluster {cluster}'s offset {host} is not cluster-aligned.")
                if run and (cluster != run[-1][0] + 1 or host != run[-1][1] + cs):
                    self._read_run(window, offset, run)
                    run = []
                run.append((cluster, host))
            if run:
                self._read_run(window, offset, run)
            yield bytes(window)

    def _reads_as_zero(self, entry: int) -> bool:
        if entry & _COMPRESSED:
            return False
        if self.version >= 3 and entry & _ZERO:
            return True
        return entry & _OFFSET_MASK == 0  # unallocated, and there is no backing file

    def _read_run(self, window: bytearray, offset: int, run: list[tuple[int, int]]) -> None:
        cs = self.cluster_size
        data = self._pread(run[0][1], cs * len(run), f"data of clusters {run[0][0]}-{run[-1][0]}")
        for i, (cluster, _host) in enumerate(run):
            self._place(window, offset, cluster, data[i * cs : (i + 1) * cs])

    def _place(self, window: bytearray, offset: int, cluster: int, data: bytes) -> None:
        """Copy a cluster's bytes into the window starting at logical ``offset`` (clipped to it)."""
        start = cluster * self.cluster_size - offset
        begin, stop = max(start, 0), min(start + len(data), len(window))
        window[begin:stop] = data[begin - start : stop - start]


def open_disk_image(path: str | Path) -> DiskSource:
    """The disk image at ``path``, its format detected from its first bytes. Raises DiskImageError for a
    file that is not a disk image this client reads, and for an empty file."""
    path = Path(path)
    try:
        file = open(path, "rb")  # noqa: SIM115 (the DiskSource owns and closes it)
    except OSError as exc:
        raise DiskImageError(f"{path}: {exc.strerror or exc}") from exc
    try:
        head = os.pread(file.fileno(), 64, 0)
        if not head:
            raise DiskImageError(f"{path}: the file is empty.")
        fmt = detect_format(head)
        if fmt == "qcow2":
            return Qcow2Source(path, file)
        if fmt == "raw":
            return RawSource(path, file)
        return CompressedSource(path, file, fmt)
    except BaseException:
        file.close()
        raise
