"""A Debian kernel, its modules, the order to load them in, and what ``modinfo`` says of them.

The kernel is the versioned package that a meta package (``linux-image-cloud-amd64`` by default, or
``linux-image-amd64``) depends on, unpacked once per version. The modules an image needs are loaded
in an order derived from the kernel's own ``modinfo`` data: the dependencies between them change
between kernel builds (in 6.1.0-47 ``virtio`` needs nothing, in 6.1.0-56 it needs ``virtio_ring``), and
a fixed list silently leaves a node without disk or network.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from rhaas.imaging import ImageBuildError, cache, run
from rhaas.imaging.debs import KERNEL_META_PACKAGE, Package, fetch_package, resolve_kernel_package


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package."""

    package: str
    version: str
    #: ``uname -r`` of this kernel, e.g. ``6.1.0-56-cloud-amd64``.
    release: str
    vmlinuz: Path
    modules_dir: Path
    manifest: Path


def fetch_kernel(cache_root: Path | str | None = None, package: Package | None = None) -> Kernel:
    """The cloud kernel, downloaded and unpacked once per package version."""
    pkg = package or resolve_kernel_package()
    base = cache.cache_dir(cache_root) / "kernel" / f"{pkg.name}_{cache.safe_version(pkg.version)}"
    manifest = base / "manifest.json"
    with cache.locked(base):
        data = cache.read_manifest(manifest)
        if data is None or data.get("version") != pkg.version:
            root = fetch_package(pkg, base / "root")
            vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
            if len(vmlinuz) != 1:
                raise ImageBuildError(f"{pkg.name} holds {len(vmlinuz)} boot/vmlinuz-* files")
            release = vmlinuz[0].name.removeprefix("vmlinuz-")
            modules = root / "lib" / "modules" / release
            if not modules.is_dir():
                raise ImageBuildError(f"{pkg.name} has no lib/modules/{release}")
            data = {
                "meta_package": KERNEL_META_PACKAGE,
                "package": pkg.name,
                "version": pkg.version,
                "release": release,
                "vmlinuz": str(vmlinuz[0].relative_to(base)),
                "modules_dir": str(modules.relative_to(base)),
            }
            cache.write_manifest(manifest, data)
    return Kernel(
        package=pkg.name,
        version=pkg.version,
        release=str(data["release"]),
        vmlinuz=base / str(data["vmlinuz"]),
        modules_dir=base / str(data["modules_dir"]),
        manifest=manifest,
    )


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Every loadable module under ``modules_dir``, by its normalized name (``-`` read as ``_``)."""
    return {_module_name(p): p for p in sorted(modules_dir.rglob("*.ko*")) if ".ko" in p.name}


def module_depends(path: Path) -> list[str]:
    """The modules ``path`` needs loaded first, as the kernel build recorded them (``modinfo``)."""
    out = run(["modinfo", "-F", "depends", str(path)]).strip()
    return [name.replace("-", "_") for name in out.split(",") if name]


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """``wanted`` plus their dependencies, each after everything it depends on.

    Raises `ImageBuildError` if a module is missing (perhaps built into this kernel: then the caller's
    list is wrong for it) or the dependencies form a cycle.
    """
    index = module_index(modules_dir)
    order: list[tuple[str, Path]] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ImageBuildError(f"module dependency cycle: {' -> '.join([*visiting, name])}")
        if name not in index:
            raise ImageBuildError(f"module {name} is not in {modules_dir}")
        visiting.append(name)
        for dep in module_depends(index[name]):
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append((name, index[name]))

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def module_bytes(path: Path) -> bytes:
    """The module as busybox's insmod can load it (uncompressed)."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    raise ImageBuildError(f"cannot decompress module {path.name}")


@dataclass(frozen=True)
class ModInfo:
    """What a module's ``modinfo`` data says about loading it."""

    name: str
    path: Path
    #: Device aliases (``pci:v00008086d000010D3sv*sd*bc*sc*i*``): fnmatch patterns over a modalias.
    aliases: tuple[str, ...]
    #: Modules this one needs loaded first.
    depends: tuple[str, ...]
    #: Firmware files it may ask for, relative to /lib/firmware.
    firmware: tuple[str, ...]
    #: What ``softdep: pre:`` asks to load first: names or aliases (``libcrc32c`` asks for ``crc32c``).
    pre: tuple[str, ...] = ()


def parse_modinfo(name: str, path: Path, text: str) -> ModInfo:
    """`ModInfo` from ``modinfo``'s output for one module (``field: value`` lines)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("alias", "depends", "firmware", "softdep"):
            fields.setdefault(key, []).append(value.strip())
    deps = [d.replace("-", "_") for v in fields.get("depends", []) for d in v.split(",") if d]
    pre: list[str] = []
    for value in fields.get("softdep", []):
        words = value.split()
        section = ""
        for word in words:
            if word.endswith(":"):
                section = word[:-1]
            elif section == "pre":
                pre.append(word.replace("-", "_"))
    return ModInfo(
        name=name,
        path=path,
        aliases=tuple(fields.get("alias", [])),
        depends=tuple(deps),
        firmware=tuple(fields.get("firmware", [])),
        pre=tuple(pre),
    )


def module_info(name: str, path: Path) -> ModInfo:
    """The `ModInfo` of the module file ``path`` (runs ``modinfo``)."""
    return parse_modinfo(name, path, run(["modinfo", str(path)]))


def select_modules(modules_dir: Path, selectors: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """The modules ``selectors`` name, sorted: a selector ending in ``/`` is a directory under
    ``modules_dir`` (``kernel/drivers/net/ethernet/intel/``: every module below it), any other a module
    name; ``exclude`` names modules a directory selector should not bring. Raises `ImageBuildError` for a
    selector that names nothing (a typo, or built into this kernel).
    """
    index = module_index(modules_dir)
    excluded = {name.replace("-", "_") for name in exclude}
    chosen: set[str] = set()
    for selector in selectors:
        if selector.endswith("/"):
            base = modules_dir / selector
            found = {n for n, p in index.items() if p.is_relative_to(base) and n not in excluded}
        else:
            found = {selector.replace("-", "_")} & index.keys()
        if not found:
            raise ImageBuildError(f"no module in {modules_dir} matches {selector!r}")
        chosen |= found
    return sorted(chosen)


def coldplug_closure(modules_dir: Path, wanted: Iterable[str]) -> dict[str, ModInfo]:
    """The `ModInfo` of ``wanted`` that a device can match (they have a device alias), of those that
    extend one of them (``mlx4_en`` depends on ``mlx4_core`` and no device matches it: the kernel would
    ask modprobe for it), and of everything they depend on, by name. Other wanted modules no device
    matches are left out unless another needs them."""
    index = module_index(modules_dir)
    infos: dict[str, ModInfo] = {}

    def info_of(name: str) -> ModInfo:
        if name not in index:
            raise ImageBuildError(f"module {name} is not in {modules_dir}")
        info = module_info(name, index[name])
        # A soft dependency, loaded first too. Its name may be a crypto algorithm's (``crc32c``): then
        # the portable implementation (``crc32c_generic``). Built in, or unknown: left to the kernel.
        soft = []
        for wanted in info.pre:
            found = next((m for m in (wanted, f"{wanted}_generic") if m in index), None)
            if found is not None and found not in info.depends:
                soft.append(found)
        return replace(info, depends=(*info.depends, *soft)) if soft else info

    def add(info: ModInfo) -> None:
        infos[info.name] = info
        for dep in info.depends:
            if dep not in infos:
                add(info_of(dep))

    chosen = [info_of(name.replace("-", "_")) for name in wanted]
    matched = {i.name for i in chosen if any(_is_device_alias(a) for a in i.aliases)}
    for info in chosen:
        if info.name not in infos and (info.name in matched or matched & set(info.depends)):
            add(info)
    return dict(sorted(infos.items()))


def _is_device_alias(alias: str) -> bool:
    """Whether ``alias`` matches a device's modalias (``bus:…``), not a name (``fs-ext4``, ``crc32c``)."""
    bus, sep, _ = alias.partition(":")
    return bool(sep) and bus.isidentifier()
