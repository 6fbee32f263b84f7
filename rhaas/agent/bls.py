"""Boot Loader Specification type #1 entries: parsing, and the order a boot loader shows them in
(standard library only).

The order is the specification's (UAPI.1, as systemd-boot implements it): entries whose boot counter
says no tries are left go last; entries with a ``sort-key`` come first, by sort-key, then machine-id,
then version newest first; the others by file name, newest first. Versions compare as the UAPI version
format says (`version_compare`). The first entry in that order is the default when nothing else is set.
"""

from __future__ import annotations

import functools


class BlsEntry:
    """One ``*.conf`` entry. ``id`` is the file name without ``.conf`` and without a boot counter
    (``+LEFT-DONE``); ``where`` is the caller's reference to the file (for messages and paths)."""

    def __init__(self, id: str, where: object, tries_left: int | None = None) -> None:
        self.id = id
        self.where = where
        self.tries_left = tries_left
        self.title = ""
        self.version = ""
        self.machine_id = ""
        self.sort_key = ""
        self.linux = ""
        self.initrds: list[str] = []
        self.options: list[str] = []

    def __repr__(self) -> str:
        return f"BlsEntry({self.id!r} version={self.version!r} sort_key={self.sort_key!r})"


def parse_bls(text: str, filename: str, where: object) -> BlsEntry:
    """One entry file: ``key value`` lines; ``initrd`` and ``options`` may repeat."""
    stem = filename[: -len(".conf")] if filename.endswith(".conf") else filename
    tries_left = None
    if "+" in stem:
        base, counter = stem.rsplit("+", 1)
        left = counter.split("-", 1)[0]
        if left.isdigit():
            stem, tries_left = base, int(left)
    entry = BlsEntry(stem, where, tries_left=tries_left)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.strip(), value.strip()
        if key == "title":
            entry.title = value
        elif key == "version":
            entry.version = value
        elif key == "machine-id":
            entry.machine_id = value
        elif key == "sort-key":
            entry.sort_key = value
        elif key == "linux":
            entry.linux = value
        elif key == "initrd":
            entry.initrds.extend(value.split())
        elif key == "options":
            entry.options.append(value)
    return entry


def version_compare(a: str, b: str) -> int:
    """The UAPI version comparison (systemd's ``strverscmp_improved``): <0, 0 or >0.

    Separators are ``~`` (sorts before everything, pre-releases), ``-``, ``^`` and ``.``; digit runs
    compare as numbers and are newer than letters; other characters are ignored."""
    i = j = 0
    valid = "~-^."

    def ok(c: str) -> bool:
        return c.isascii() and (c.isalnum() or c in valid)

    while True:
        while i < len(a) and not ok(a[i]):
            i += 1
        while j < len(b) and not ok(b[j]):
            j += 1
        ca, cb = a[i : i + 1], b[j : j + 1]
        for sep in "~":
            if ca == sep or cb == sep:
                if ca != cb:
                    return -1 if ca == sep else 1
                i, j = i + 1, j + 1
                ca, cb = a[i : i + 1], b[j : j + 1]
        if not ca or not cb:
            return (ca > cb) - (ca < cb) if (ca or cb) else 0
        for sep in "-^.":
            if ca == sep or cb == sep:
                if ca != cb:
                    return -1 if ca == sep else 1
                i, j = i + 1, j + 1
                ca, cb = a[i : i + 1], b[j : j + 1]
        if ca.isdigit() or cb.isdigit():
            ea, eb = i, j
            while ea < len(a) and a[ea].isdigit():
                ea += 1
            while eb < len(b) and b[eb].isdigit():
                eb += 1
            if (ea > i) != (eb > j):
                return 1 if ea > i else -1
            na, nb = a[i:ea].lstrip("0"), b[j:eb].lstrip("0")
            if len(na) != len(nb):
                return 1 if len(na) > len(nb) else -1
            if na != nb:
                return 1 if na > nb else -1
        else:
            ea, eb = i, j
            while ea < len(a) and a[ea].isascii() and a[ea].isalpha():
                ea += 1
            while eb < len(b) and b[eb].isascii() and b[eb].isalpha():
                eb += 1
            sa, sb = a[i:ea], b[j:eb]
            common = min(len(sa), len(sb))
            if sa[:common] != sb[:common]:
                return 1 if sa[:common] > sb[:common] else -1
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
            if ea == i and eb == j:  # neither advanced (cannot happen with valid characters): stop
                return 0
        i, j = ea, eb


def _bls_order(x: BlsEntry, y: BlsEntry) -> int:
    """The specification's order: entries out of tries last; with sort-key first, by sort-key, machine-id,
    then version newest first; the rest by id, newest first."""
    bad = (x.tries_left == 0) - (y.tries_left == 0)
    if bad:
        return bad
    if bool(x.sort_key) != bool(y.sort_key):
        return -1 if x.sort_key else 1
    if x.sort_key:
        for p, q in ((x.sort_key, y.sort_key), (x.machine_id, y.machine_id)):
            if p != q:
                return -1 if p < q else 1
        by_version = -version_compare(x.version, y.version)
        if by_version:
            return by_version
    return -version_compare(x.id, y.id)


def sort_bls(entries: list[BlsEntry]) -> list[BlsEntry]:
    return sorted(entries, key=functools.cmp_to_key(_bls_order))
