"""Scrubbing the previous customer's memory on a return (standard library only).

In the return FPBL (the crash kernel), the node's RAM outside the crash region is not this kernel's: it is
not "System RAM" in /proc/iomem, so /dev/mem reaches it (``STRICT_DEVMEM`` refuses only a kernel's own
RAM), and the agent maps it window by window, writes zeros and reads them back. That is every byte the
customer's kernel could have left behind, except the first MiB (firmware's, below any kernel's reach
through /dev/mem) and the crash region, where the FPBL that deployed the customer ran: its free pages are
scrubbed as a full FPBL's are (below).

In a full FPBL (after a power cycle, or a node that never left the FPBL) every page is this kernel's and
/dev/mem refuses RAM; the kernel zeroes each page before it hands it to a process, so the agent asks for
all the memory the kernel can spare, touches it, and lets it go.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import NamedTuple

MIB = 1 << 20
PAGE = 4096
#: /dev/mem is mapped this much at a time.
WINDOW = 64 * MIB
#: What a full FPBL's scrub leaves to the kernel and the agent.
SPARE = 32 * MIB
#: Pages /dev/mem may refuse before a scrub gives up (or a quarter of the memory to scrub, if more).
MAX_REFUSED = 16 * MIB
#: Below this, memory belongs to the firmware (and /dev/mem shows RAM there as zeros).
FLOOR = MIB

Progress = Callable[[int, int], None]


class ScrubError(RuntimeError):
    """Memory could not be reached, or did not read back as zero."""


class Range(NamedTuple):
    """Physical addresses ``[start, end)``."""

    start: int
    end: int


def iomem_entries(iomem: str) -> list[tuple[Range, str, bool]]:
    """Each line of /proc/iomem (read as root): its range, its name, whether it is top-level."""
    found = []
    for line in iomem.splitlines():
        span, sep, name = line.partition(" : ")
        if not sep:
            continue
        first, _, last = span.strip().partition("-")
        found.append((Range(int(first, 16), int(last, 16) + 1), name.strip(), not line.startswith(" ")))
    return found


def system_ram(iomem: str) -> list[Range]:
    """This kernel's own RAM: the top-level "System RAM" lines of /proc/iomem."""
    return sorted(r for r, name, top in iomem_entries(iomem) if top and name == "System RAM")


def format_ranges(ranges: list[Range]) -> str:
    """``0x1000-0x9fc00, 0x1000000-0x1800000``: ranges as the agent reports them."""
    return ", ".join(f"{r.start:#x}-{r.end:#x}" for r in ranges)


def names_of(iomem: str, ranges: list[Range]) -> str:
    """``ranges`` as text, each with the /proc/iomem names that overlap it (what the kernel keeps there)."""
    entries = iomem_entries(iomem)
    described = []
    for r in ranges:
        names = sorted({name for e, name, _ in entries if e.start < r.end and r.start < e.end})
        described.append(format_ranges([r]) + (f" ({', '.join(names)})" if names else ""))
    return ", ".join(described)


def foreign_ranges(usable: list[Range], own: list[Range], floor: int = FLOOR) -> list[Range]:
    """The usable ranges of the node's memory map less this kernel's own RAM and what lies below
    ``floor``, cut to whole pages: what the previous kernel owned."""
    result = []
    for start, end in usable:
        pieces = [Range(max(start, floor), end)]
        for o_start, o_end in own:
            pieces = [
                part
                for p in pieces
                for part in (Range(p.start, min(p.end, o_start)), Range(max(p.start, o_end), p.end))
            ]
        for p in pieces:
            first, last = -(-p.start // PAGE) * PAGE, p.end // PAGE * PAGE
            if last > first:
                result.append(Range(first, last))
    return sorted(result)


class Scrubbed(NamedTuple):
    """What `scrub_physical` zeroed (bytes), and the pages the kernel would not map (its own reserved
    memory inside the crash region: the ELF core header, the backup of the first 640 KiB)."""

    zeroed: int
    refused: list[Range]


def scrub_physical(ranges: list[Range], path: str = "/dev/mem", progress: Progress | None = None) -> Scrubbed:
    """Write zeros over ``ranges`` of physical memory through ``path`` and read them back. Pages the kernel
    refuses to map are skipped and listed, up to `MAX_REFUSED` bytes; raises `ScrubError` beyond that,
    if ``path`` cannot be used, or if memory does not read back as zero."""
    total = sum(end - start for start, end in ranges)
    done, refused = 0, list[Range]()
    zero = bytes(WINDOW)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise ScrubError(f"cannot open {path}: {exc}") from exc
    try:
        for start, end in ranges:
            for offset in range(start, end, WINDOW):
                size = min(WINDOW, end - offset)
                try:
                    _zero(fd, offset, zero if size == WINDOW else bytes(size), path)
                except PermissionError:  # some of it is the kernel's: page by page
                    for page in range(offset, offset + size, PAGE):
                        try:
                            _zero(fd, page, bytes(PAGE), path)
                        except PermissionError:
                            _extend(refused, Range(page, page + PAGE))
                            size -= PAGE
                done += size
                if sum(r.end - r.start for r in refused) > max(MAX_REFUSED, total // 4):
                    raise ScrubError(f"{path} refuses too much memory: {format_ranges(refused[:8])}")
                if progress:
                    progress(done, total)
    finally:
        os.close(fd)
    return Scrubbed(done, refused)


def _zero(fd: int, offset: int, zero: bytes, path: str) -> None:
    """Zero ``len(zero)`` bytes of ``path`` at ``offset`` through a shared mapping and read them back.
    PermissionError: the kernel will not map them."""
    size = len(zero)
    try:
        window = mmap.mmap(fd, size, offset=offset)  # shared, read and write
    except PermissionError:
        raise
    except OSError as exc:
        raise ScrubError(f"cannot map {size} bytes at {offset:#x} of {path}: {exc}") from exc
    with window:
        window[:] = zero
        if window[:] != zero:
            raise ScrubError(f"memory at {offset:#x} is not zero after the scrub")


def _extend(ranges: list[Range], page: Range) -> None:
    if ranges and ranges[-1].end == page.start:
        ranges[-1] = Range(ranges[-1].start, page.end)
    else:
        ranges.append(page)


def scrub_free(available: int, progress: Progress | None = None) -> int:
    """Have the kernel zero the memory it can spare: take ``available`` less `SPARE` bytes, touch every
    page (the kernel zeroes each page it maps for a process), let them go; the bytes taken."""
    want = max(0, available - SPARE)
    held: list[bytearray] = []
    taken = 0
    try:
        while taken < want:
            size = min(WINDOW, want - taken)
            held.append(bytearray(size))  # zero-filled: each page is faulted in, zeroed by the kernel
            taken += size
            if progress:
                progress(taken, want)
    except MemoryError:
        pass  # the kernel found less than MemAvailable said: what was taken is scrubbed
    finally:
        held.clear()
    return taken
