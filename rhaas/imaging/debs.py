"""Debian binary packages at exact versions: what apt would install, downloaded and unpacked once.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no root, nothing
installed on this machine), under the cache, once per version. This module knows nothing of what the
packages are for.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rhaas.imaging import ImageBuildError, cache, run

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: A versioned kernel in a Depends field, and its version if pinned: ``linux-image-6.1.0-56-… (= 6.1…)``.
_KERNEL_DEP_RE = re.compile(r"\s*(linux-image-\d[\w.+-]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*")


@dataclass(frozen=True)
class Package:
    """A Debian binary package at one exact version."""

    name: str
    version: str


def parse_show(out: str) -> dict[str, dict[str, str]]:
    """Package name -> control fields of the first stanza naming it in ``apt-cache show``'s output."""
    found: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", out):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def apt_show(*names: str) -> dict[str, dict[str, str]]:
    """The candidate version's control fields of each package, in one ``apt-cache show`` run.

    One run, because ``apt-cache`` can take a second where apt keeps no binary package cache.
    """
    found = parse_show(run(["apt-cache", "show", "--no-all-versions", *names]))
    missing = [n for n in names if n not in found]
    if missing:
        names_text = ", ".join(missing)
        raise ImageBuildError(f"apt knows no installable version of {names_text}: run 'apt-get update'")
    return found


def candidate(name: str) -> Package:
    """The version apt would install of ``name``, without downloading anything."""
    return Package(name, apt_show(name)[name]["Version"])


def resolve_kernel_package(meta: str = KERNEL_META_PACKAGE, fields: dict[str, str] | None = None) -> Package:
    """The versioned kernel package (``linux-image-6.x-cloud-amd64``) that ``meta`` depends on.

    ``fields`` are ``meta``'s control fields if the caller already has them (`apt_show`).
    """
    depends = (fields or apt_show(meta)[meta]).get("Depends", "")
    for clause in depends.split(","):
        for alternative in clause.split("|"):
            found = _KERNEL_DEP_RE.fullmatch(alternative)
            if found:
                name, version = found.groups()
                return Package(name, version) if version else candidate(name)
    raise ImageBuildError(f"{meta} depends on no versioned linux-image package: {depends!r}")


def depends(fields: dict[str, str]) -> list[str]:
    """The package names of a Depends/Pre-Depends field (first alternative of each clause)."""
    names = []
    for key in ("Pre-Depends", "Depends"):
        for clause in fields.get(key, "").split(","):
            first = clause.split("|")[0].strip()
            if first:
                names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return names


def fetch_package(pkg: Package, dest: Path) -> Path:
    """Download ``pkg`` with ``apt-get download`` and unpack it into ``dest`` (made atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        work = Path(tmp)
        run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise ImageBuildError(f"apt-get download {pkg.name} left {len(debs)} .deb files")
        root = work / "root"
        run(["dpkg-deb", "-x", str(debs[0]), str(root)])
        if dest.exists():
            shutil.rmtree(dest)
        root.rename(dest)
    return dest


def fetch_unpacked(pkg: Package, cache_root: Path) -> Path:
    """``pkg`` unpacked under the cache, once per version."""
    base = cache_root / "debs" / f"{pkg.name}_{cache.safe_version(pkg.version)}"
    root = base / "root"
    done = base / "manifest.json"
    with cache.locked(base):
        if not done.is_file():
            fetch_package(pkg, root)
            done.write_text(json.dumps({"package": pkg.name, "version": pkg.version}) + "\n")
    return root


def fetch_busybox(
    cache_root: Path | str | None = None, package: Package | None = None
) -> tuple[Package, Path]:
    """The static busybox binary of ``busybox-static``, downloaded once per package version."""
    pkg = package or candidate(BUSYBOX_PACKAGE)
    base = cache.cache_dir(cache_root) / "busybox" / cache.safe_version(pkg.version)
    binary = base / "root" / "bin" / "busybox"
    with cache.locked(base):
        if not binary.is_file():
            fetch_package(pkg, base / "root")
            if not binary.is_file():
                raise ImageBuildError(f"{pkg.name} {pkg.version} holds no bin/busybox")
            cache.write_manifest(base / "manifest.json", {"package": pkg.name, "version": pkg.version})
    return pkg, binary
