"""The node's disks: find them, write an image to one, wipe them and prove the wipe (standard library only).

Writing is streamed in 1 MiB chunks and sparse-aware in the one safe way: an all-zero chunk of the image
is skipped only where the disk already reads as zero there (read back first), otherwise written. The agent
cannot know that a disk is zeroed (the previous tenant's wipe may have been metadata-only, the disk may be
new or not), and a skipped chunk over old data would leave that data inside the customer's file systems.
Reading is much cheaper than writing on thin-provisioned or fresh disks, and skipping keeps them thin.

Wipe policies: ``full`` (the default) zeroes every block, by the device where it can (BLKZEROOUT: a
write-zeroes command, or the kernel's zero-page writes where the device has none), else by writing
zeros; ``discard`` tells the device that every block is unused (BLKDISCARD: an SSD or thin volume frees
them, nothing is written), then zeroes whatever still reads non-zero (a device without discard, or one
whose discarded blocks keep their data, gets the writes of ``full``); ``metadata`` zeroes only the first
and last MiB of each disk and of each partition (partition tables, GPT backups, file system, LVM and RAID
signatures live there) and leaves the data between them readable: an explicit opt-in for sites whose
customers trust each other.

Verification reads back what was wiped: ``full`` reads every wiped byte; ``sample`` (the default) reads
the metadata regions plus random samples spread over the whole disk, so a wipe that skipped or lost a
range is caught on every return at a small fraction of a full read's cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from typing import NamedTuple

CHUNK = 1 << 20
MIB = 1 << 20
_ZERO = bytes(CHUNK)
#: What `wipe` can do (the agent refuses work naming anything else).
WIPE_POLICIES = ("full", "discard", "metadata")
#: How much of a wipe is read back.
VERIFY_MODES = ("sample", "full")
#: Random samples a ``sample`` verification reads, and each one's size.
SAMPLES = 64
SAMPLE_BYTES = 256 << 10
BLKZEROOUT = 0x127F
BLKDISCARD = 0x1277
#: The most one BLKZEROOUT or BLKDISCARD asks of the device. A call per step lets the wipe report its
#: progress (one call over a whole disk says nothing for as long as the device takes), and a device that
#: fails part way has the rest written by the agent rather than the whole disk again.
DEVICE_STEP = 64 * MIB
BLKRRPART = 0x125F
BLKFLSBUF = 0x1261
_SKIP_PREFIXES = ("loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md")

Progress = Callable[[int, int], None]


class DiskError(RuntimeError):
    """An image does not fit, a write failed, or a wiped range did not read back as zero."""


class Disk(NamedTuple):
    name: str
    path: str
    size: int
    #: (start, size) in bytes of each partition the kernel knows of.
    partitions: tuple[tuple[int, int], ...] = ()


def list_disks(sys_dir: str = "/sys", dev_dir: str = "/dev") -> list[Disk]:
    """The node's physical disks (not loop, ram, optical, ...), by name."""
    base = os.path.join(sys_dir, "block")
    disks = []
    for name in sorted(os.listdir(base)):
        here = os.path.join(base, name)
        if name.startswith(_SKIP_PREFIXES) or not os.path.exists(os.path.join(here, "device")):
            continue
        parts = []
        for sub in sorted(os.listdir(here)):
            if sub.startswith(name) and os.path.exists(os.path.join(here, sub, "partition")):
                parts.append((_sectors(here, sub, "start"), _sectors(here, sub, "size")))
        disks.append(Disk(name, os.path.join(dev_dir, name), _sectors(here, "", "size"), tuple(parts)))
    return disks


def _sectors(here: str, sub: str, field: str) -> int:
    with open(os.path.join(here, sub, field)) as f:
        return int(f.read().strip()) * 512


def _is_zero(data: bytes | memoryview) -> bool:
    return data == _ZERO[: len(data)]


# --- writing an image ---------------------------------------------------------------------------------


class ImageWriter:
    """Streams an image of ``image_size`` bytes onto ``path`` (a disk of ``disk_size`` bytes)."""

    def __init__(self, path: str, disk_size: int, image_size: int) -> None:
        if image_size > disk_size:
            raise DiskError(f"the image ({image_size} bytes) does not fit {path} ({disk_size} bytes)")
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.offset = 0
        self.buffer = bytearray()
        self.written = 0
        self.skipped = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self._flush(memoryview(self.buffer)[:CHUNK])
            del self.buffer[:CHUNK]

    def _flush(self, chunk: memoryview) -> None:
        n = len(chunk)
        if _is_zero(chunk) and _is_zero(os.pread(self.fd, n, self.offset)):
            self.skipped += n
        else:
            done = os.pwrite(self.fd, chunk, self.offset)
            if done != n:
                raise DiskError(f"short write to {self.path} at {self.offset}: {done} of {n} bytes")
            self.written += n
        self.offset += n

    def finish(self) -> None:
        """Write what is buffered and make it durable."""
        if self.buffer:
            self._flush(memoryview(self.buffer))
            self.buffer.clear()
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- wiping ------------------------------------------------------------------------------------------


def metadata_regions(size: int, partitions: tuple[tuple[int, int], ...] = ()) -> list[tuple[int, int]]:
    """The (offset, length) ranges a metadata wipe zeroes, merged and sorted."""
    spans = []
    for start, length in ((0, size), *partitions):
        head = min(MIB, length)
        spans.append((start, start + head))
        spans.append((start + max(0, length - MIB), start + length))
    return _merge([(max(0, a), min(size, b) - max(0, a)) for a, b in spans if min(size, b) > max(0, a)])


class Wiped(NamedTuple):
    """What a wipe did: the ranges it zeroed (to be read back), and how."""

    regions: list[tuple[int, int]]
    how: str


def regions_to_verify(disk: Disk, wiped: Wiped, mode: str, rand: Callable[[int], bytes] = os.urandom
                      ) -> list[tuple[int, int]]:  # fmt: skip
    """What to read back after ``wiped``: all of it (``full``), or for ``sample`` its metadata regions plus
    `SAMPLES` random ranges of `SAMPLE_BYTES`, 4 KiB aligned, that lie inside what was wiped."""
    if mode not in VERIFY_MODES:
        raise DiskError(f"unknown verify mode {mode!r}")
    wiped_bytes = sum(length for _, length in wiped.regions)
    if mode == "full" or wiped_bytes <= SAMPLES * SAMPLE_BYTES:
        return list(wiped.regions)
    picks = list(metadata_regions(disk.size, disk.partitions))
    for _ in range(SAMPLES):
        # A uniform point in the wiped bytes, mapped back to the disk, then clamped into its region.
        point = int.from_bytes(rand(8), "little") % wiped_bytes
        for offset, length in wiped.regions:
            if point < length:
                start = min(offset + point, offset + length - SAMPLE_BYTES) & ~4095
                picks.append((max(start, offset), min(SAMPLE_BYTES, length)))
                break
            point -= length
    inside = [(a, n) for a, n in picks if any(o <= a and a + n <= o + ln for o, ln in wiped.regions)]
    return _merge(inside)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for a, n in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + n)
        else:
            merged.append([a, a + n])
    return [(a, b - a) for a, b in merged]


def wipe(disk: Disk, policy: str, progress: Progress | None = None) -> Wiped:
    """Zero ``disk`` per ``policy`` ('full' | 'discard' | 'metadata')."""
    if policy not in WIPE_POLICIES:
        raise DiskError(f"unknown wipe policy {policy!r}")
    regions = metadata_regions(disk.size, disk.partitions) if policy == "metadata" else [(0, disk.size)]
    total = sum(length for _, length in regions)
    fd = os.open(disk.path, os.O_RDWR)
    try:
        block = stat.S_ISBLK(os.fstat(fd).st_mode)
        if policy == "discard" and block and _by_device(fd, BLKDISCARD, 0, disk.size) == disk.size:
            _drop_cache(fd)
            rewritten = _zero_what_is_not(fd, disk, progress)
            how = f"discarded; {rewritten} bytes still held data and were written with zeros"
        else:
            zeroed_by_device = _zero(fd, disk.path, regions, block, total, progress)
            how = "zeroed by the device (BLKZEROOUT)" if zeroed_by_device else "written with zeros"
            if policy == "discard":
                how = "no discard on this device: " + how
        os.fsync(fd)
        if block:
            _drop_cache(fd)
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, BLKRRPART)  # forget the partitions just erased
    finally:
        os.close(fd)
    if progress:
        progress(total, total)
    return Wiped(regions, how)


def zero_regions(fd: int, path: str, regions: list[tuple[int, int]]) -> bool:
    """Zero ``regions`` of the open disk ``fd``: True if the device did it all (BLKZEROOUT)."""
    block = stat.S_ISBLK(os.fstat(fd).st_mode)
    return _zero(fd, path, regions, block, sum(length for _, length in regions), None)


def _zero(fd: int, path: str, regions: list[tuple[int, int]], block: bool, total: int,
          progress: Progress | None) -> bool:  # fmt: skip
    """Zero ``regions``: True if the device did it all (BLKZEROOUT), False if any was written."""
    done, by_device = 0, True
    for offset, length in regions:
        end = offset + length
        if block:  # the device zeroes what it can; whatever it could not is written below
            zeroed = _by_device(fd, BLKZEROOUT, offset, length, progress, done, total)
            done += zeroed
            offset += zeroed
            if offset == end:
                continue
        by_device = False
        while offset < end:
            n = min(CHUNK, end - offset)
            if os.pwrite(fd, _ZERO[:n], offset) != n:
                raise DiskError(f"short write to {path} at {offset}")
            offset += n
            done += n
            if progress and done % (64 * MIB) == 0:
                progress(done, total)
    return by_device


def _zero_what_is_not(fd: int, disk: Disk, progress: Progress | None) -> int:
    """Read the whole disk and write zeros over each chunk that is not zero; the bytes written."""
    written = offset = 0
    while offset < disk.size:
        data = os.pread(fd, min(CHUNK, disk.size - offset), offset)
        if not data:
            raise DiskError(f"{disk.path} ended at {offset}, before its size")
        if not _is_zero(data):
            if os.pwrite(fd, _ZERO[: len(data)], offset) != len(data):
                raise DiskError(f"short write to {disk.path} at {offset}")
            written += len(data)
        offset += len(data)
        if progress and offset % (64 * MIB) == 0:
            progress(offset, disk.size)
    return written


def _drop_cache(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, BLKFLSBUF)  # read from the device, not from the page cache


def _by_device(
    fd: int, request: int, offset: int, length: int,
    progress: Progress | None = None, before: int = 0, total: int = 0,
) -> int:  # fmt: skip
    """BLKZEROOUT or BLKDISCARD over ``length`` bytes from ``offset``, `DEVICE_STEP` at a time; the bytes
    done before the first step the device could not do (``length`` if it did them all). ``progress`` is
    told ``before`` + the bytes done so far, of ``total``, after each step."""
    done = 0
    while done < length:
        step = min(DEVICE_STEP, length - done)
        if not _ioctl_range(fd, request, offset + done, step):
            break
        done += step
        if progress:
            progress(before + done, total)
    return done


def _ioctl_range(fd: int, request: int, offset: int, length: int) -> bool:
    """BLKZEROOUT or BLKDISCARD over a byte range (the device does the work, no data crosses the bus);
    False if the device cannot."""
    try:
        fcntl.ioctl(fd, request, struct.pack("=QQ", offset, length))
    except OSError:
        return False
    return True


def verify_zero(path: str, regions: list[tuple[int, int]], progress: Progress | None = None) -> int:
    """Read ``regions`` of ``path`` back; raise `DiskError` at the first non-zero byte. Bytes read."""
    total = sum(length for _, length in regions)
    done = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in regions:
            end = offset + length
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    raise DiskError(f"{path} ended at {offset}, inside a wiped range")
                if not _is_zero(data):
                    first = next(i for i, b in enumerate(data) if b)
                    raise DiskError(f"{path} is not zero at byte {offset + first} after the wipe")
                offset += len(data)
                done += len(data)
                if progress and done % (64 * MIB) == 0:
                    progress(done, total)
    finally:
        os.close(fd)
    return done
