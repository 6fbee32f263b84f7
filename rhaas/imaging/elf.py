"""The shared libraries a program needs, found in Debian packages.

A dynamically linked program (Debian's ``kexec``, ``python3.11``) runs in an initramfs only with its
libraries beside it. Their sonames come from the ELF files' DT_NEEDED entries, read here without any
tool; a soname not in the packages fetched so far is looked for in the dependencies of the package that
needs it, recursively (libxen*, libc).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from rhaas.imaging import ImageBuildError
from rhaas.imaging.debs import Package, apt_show, depends, fetch_unpacked

LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")
LOADER = "ld-linux-x86-64.so.2"


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF file (read from its dynamic segment)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageBuildError(f"{path} is not a 64-bit little-endian ELF file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + off) for off in range(0, dynamic[1], 16)]
    strtab_vaddr = next(v for t, v in entries if t == 5)  # DT_STRTAB
    strtab = next(off + strtab_vaddr - va for va, off, size in loads if va <= strtab_vaddr < va + size)
    needed = []
    for tag, value in entries:
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            end = data.index(b"\0", strtab + value)
            needed.append(data[strtab + value : end].decode())
    return needed


class LibraryResolver:
    """Finds the shared libraries of ELF files in Debian packages: a soname not in the packages fetched so
    far is looked for in the dependencies of the package that needs it, recursively."""

    def __init__(self, cache: Path, fields: dict[str, dict[str, str]]) -> None:
        self.cache = cache
        self.fields = dict(fields)
        self.roots: dict[str, Path] = {}
        self.expanded: set[str] = set()

    def add(self, name: str) -> Path:
        if name not in self.roots:
            if name not in self.fields:
                self.fields.update(apt_show(name))
            self.roots[name] = fetch_unpacked(Package(name, self.fields[name]["Version"]), self.cache)
        return self.roots[name]

    def find(self, soname: str) -> tuple[str, Path] | None:
        for name, root in sorted(self.roots.items()):
            for d in LIB_DIRS:
                candidate = root / d / soname
                if candidate.is_file():
                    real = Path(os.path.realpath(candidate))
                    if not real.is_relative_to(root):  # an absolute symlink: resolve inside the package
                        real = root / os.readlink(candidate).lstrip("/")
                    return name, real
        return None

    def _expand(self, name: str) -> bool:
        if name in self.expanded:
            return False
        self.expanded.add(name)
        deps = [d for d in depends(self.fields[name]) if d not in self.roots]
        for dep in deps:
            try:
                self.add(dep)
            except ImageBuildError:
                continue  # a virtual package or a non-library dependency apt cannot show alone
        return True

    def resolve(self, package: str, files: Sequence[Path]) -> dict[str, tuple[str, Path]]:
        """soname -> (package, file) for everything ``files`` (of ``package``) need, transitively."""
        found: dict[str, tuple[str, Path]] = {}
        queue = [(package, f) for f in files]
        while queue:
            owner, path = queue.pop(0)
            for soname in elf_needed(path):
                if soname in found:
                    continue
                hit = self.find(soname)
                chain = [owner]
                while hit is None and chain:
                    if self._expand(chain[0]):
                        hit = self.find(soname)
                    else:
                        chain.pop(0)
                if hit is None:
                    raise ImageBuildError(f"no package among {owner}'s dependencies holds {soname}")
                found[soname] = hit
                queue.append(hit)
        return found
