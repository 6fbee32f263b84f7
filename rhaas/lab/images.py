"""Lab test-OS images, built from Debian packages and cached.

The lab needs a small "customer OS" that boots in a few seconds under TCG and shows on its serial console
what an end-to-end test wants to know: that it came up, with which address, whether it can reach its
peers, and what customer data its disk holds. This module builds one from two Debian packages:

- the Debian cloud kernel: the versioned package that ``linux-image-cloud-amd64`` depends on, fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x``;
- ``busybox-static`` for the userland.

Everything lands under the cache directory (``$RHAAS_CACHE``, else ``~/.cache/rhaas``), keyed by the package
versions, with a ``manifest.json`` beside each output that records them. A second build with the same
versions returns the cached files without touching apt.

The virtio modules are loaded in an order derived from the kernel's own ``modinfo`` data: the dependencies
between them change between kernel builds, and a fixed list silently leaves the node without disk or
network.

What the test OS reads from the kernel command line and prints on the console (``console=ttyS0``)::

    rhaas.ip=10.0.0.5/24          address of eth0 (also ip=10.0.0.5/24 or ip=<ip>::<gw>:<netmask>:...)
    rhaas.gw=10.0.0.1             default route
    rhaas.ping=10.0.0.6,10.0.0.7  every ~1 s: RHAAS-PING 10.0.0.6 OK|FAIL seq=N
    rhaas.tcp=10.0.0.6            every ~1 s: RHAAS-TCP 10.0.0.6 OK|FAIL seq=N (HTTP to port 80)
    rhaas.disarm=1                defuse fast provisioning's return path as a root customer may: an NMI
                                  no longer panics into the crash kernel (RHAAS-TESTOS <name> DISARMED ...)

    RHAAS-DISK ...                       the first line of /dev/vda, if it starts so (before the UP line)
    <marker> UP ip=<cidr|none> kernel=<uname -r> mem_kb=<MemTotal>
                                         once, when up (<marker>: RHAAS-TESTOS <name>)

With an address it also serves HTTP on port 80 (the page is the marker), for peers' ``rhaas.tcp`` checks.

Command line::

    python -m rhaas.lab.images build [--cache DIR] [--name NAME] [--marker TEXT] [--json]

This module only builds files; it starts no machine (see `rhaas.lab.qemu`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: The modules the test OS needs; their dependencies are added from the kernel's data.
TEST_OS_MODULES = ("virtio_net", "virtio_blk", "virtio_pci")
DEFAULT_CMDLINE = "console=ttyS0 quiet"
#: Bump when the layout of a test OS changes in a way the init template's text does not show.
_BUILDER_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: A versioned kernel in a Depends field, and its version if pinned: ``linux-image-6.1.0-56-… (= 6.1…)``.
_KERNEL_DEP_RE = re.compile(r"\s*(linux-image-\d[\w.+-]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*")
_MARKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:=/+-]{0,127}$")


class ImageBuildError(RuntimeError):
    """A build step failed: apt could not resolve or download a package, or a tool failed."""


def cache_dir(override: Path | str | None = None) -> Path:
    """The cache root: ``override``, else ``$RHAAS_CACHE``, else ``~/.cache/rhaas``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("RHAAS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rhaas"


# --- running tools -----------------------------------------------------------------------------------


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    if done.returncode != 0:
        raise ImageBuildError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize builds in one cache directory across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _safe(version: str) -> str:
    """A package version as a directory name (epochs have a colon)."""
    return version.replace(":", "%3a")


# --- Debian packages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """A Debian binary package at one exact version."""

    name: str
    version: str


def apt_show(*names: str) -> dict[str, dict[str, str]]:
    """The candidate version's control fields of each package, in one ``apt-cache show`` run.

    One run, because ``apt-cache`` can take a second where apt keeps no binary package cache.
    """
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", out):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
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


def fetch_package(pkg: Package, dest: Path) -> Path:
    """Download ``pkg`` with ``apt-get download`` and unpack it into ``dest`` (made atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise ImageBuildError(f"apt-get download {pkg.name} left {len(debs)} .deb files")
        root = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
        if dest.exists():
            shutil.rmtree(dest)
        root.rename(dest)
    return dest


def _read_manifest(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_manifest(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)


# --- the kernel --------------------------------------------------------------------------------------


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


def fetch_kernel(cache: Path | str | None = None, package: Package | None = None) -> Kernel:
    """The cloud kernel, downloaded and unpacked once per package version."""
    pkg = package or resolve_kernel_package()
    base = cache_dir(cache) / "kernel" / f"{pkg.name}_{_safe(pkg.version)}"
    manifest = base / "manifest.json"
    with _locked(base):
        data = _read_manifest(manifest)
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
            _write_manifest(manifest, data)
    return Kernel(
        package=pkg.name,
        version=pkg.version,
        release=str(data["release"]),
        vmlinuz=base / str(data["vmlinuz"]),
        modules_dir=base / str(data["modules_dir"]),
        manifest=manifest,
    )


def fetch_busybox(cache: Path | str | None = None, package: Package | None = None) -> tuple[Package, Path]:
    """The static busybox binary of ``busybox-static``, downloaded once per package version."""
    pkg = package or candidate(BUSYBOX_PACKAGE)
    base = cache_dir(cache) / "busybox" / _safe(pkg.version)
    binary = base / "root" / "bin" / "busybox"
    with _locked(base):
        if not binary.is_file():
            fetch_package(pkg, base / "root")
            if not binary.is_file():
                raise ImageBuildError(f"{pkg.name} {pkg.version} holds no bin/busybox")
            _write_manifest(base / "manifest.json", {"package": pkg.name, "version": pkg.version})
    return pkg, binary


# --- modules -----------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Every loadable module under ``modules_dir``, by its normalized name (``-`` read as ``_``)."""
    return {_module_name(p): p for p in sorted(modules_dir.rglob("*.ko*")) if ".ko" in p.name}


def module_depends(path: Path) -> list[str]:
    """The modules ``path`` needs loaded first, as the kernel build recorded them (``modinfo``)."""
    out = _run(["modinfo", "-F", "depends", str(path)]).strip()
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


def _module_bytes(path: Path) -> bytes:
    """The module as busybox's insmod can load it (uncompressed)."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    raise ImageBuildError(f"cannot decompress module {path.name}")


# --- cpio (newc) -------------------------------------------------------------------------------------


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


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive, as the kernel unpacks an initramfs. Reproducible: mtime 0."""
    out = io.BytesIO()
    ino = 1
    for entry in [*entries, CpioEntry("TRAILER!!!", 0)]:
        name = entry.name.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name + _pad4(len(header) + len(name)))
        out.write(entry.data + _pad4(len(entry.data)))
        ino += 1
    return out.getvalue()


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


# --- the test OS -------------------------------------------------------------------------------------

_INIT_TEMPLATE = r"""#!/bin/sh
# rhaas lab test OS: generated by rhaas.lab.images, do not edit.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox --install -s
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The firmware's last escape sequences end without a newline: start our lines on a fresh one.
echo
NAME=@NAME@
MARKER=@MARKER@

# Load order derived at build time from the kernel's modinfo data (@RELEASE@).
load() { insmod "/lib/modules/$1.ko" || echo "RHAAS-TESTOS $NAME insmod $1 FAILED"; }
@LOADS@

mask2prefix() {
    p=0
    for o in $(echo "$1" | tr . ' '); do
        case "$o" in
            255) p=$((p + 8)) ;; 254) p=$((p + 7)) ;; 252) p=$((p + 6)) ;; 248) p=$((p + 5)) ;;
            240) p=$((p + 4)) ;; 224) p=$((p + 3)) ;; 192) p=$((p + 2)) ;; 128) p=$((p + 1)) ;;
        esac
    done
    echo "$p"
}

IP=""; GW=""; PINGS=""; TCPS=""; DISARM=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rhaas.disarm=1) DISARM=1 ;;
        rhaas.ip=*) IP="${arg#rhaas.ip=}" ;;
        rhaas.gw=*) GW="${arg#rhaas.gw=}" ;;
        rhaas.ping=*) PINGS="$PINGS $(echo "${arg#rhaas.ping=}" | tr ',' ' ')" ;;
        rhaas.tcp=*) TCPS="$TCPS $(echo "${arg#rhaas.tcp=}" | tr ',' ' ')" ;;
        ip=*)
            value="${arg#ip=}"
            case "$value" in
                *:*)  # ip=<client>:<server>:<gw>:<netmask>:...
                    client=$(echo "$value" | cut -d: -f1)
                    gw=$(echo "$value" | cut -d: -f3)
                    mask=$(echo "$value" | cut -d: -f4)
                    [ -n "$client" ] && [ -z "$IP" ] && IP="$client/$(mask2prefix "${mask:-255.255.255.0}")"
                    [ -n "$gw" ] && [ -z "$GW" ] && GW="$gw"
                    ;;
                */*) [ -z "$IP" ] && IP="$value" ;;
            esac
            ;;
    esac
done

NET=""
if [ -n "$IP" ]; then
    n=0
    while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    if [ -e /sys/class/net/eth0 ]; then
        ip link set lo up
        ip link set eth0 up
        ip addr add "$IP" dev eth0 || NET=" net=bad-address"
        [ -n "$GW" ] && ip route add default via "$GW"
        # A TCP service for peers' rhaas.tcp= checks: ping alone misses broken checksum offload.
        mkdir -p /www && echo "$MARKER" > /www/index.html && httpd -p 80 -h /www
    else
        NET=" net=no-eth0"
    fi
fi

if [ -b /dev/vda ]; then
    line=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
    case "$line" in RHAAS-DISK*) echo "$line" ;; esac
fi

if [ -n "$DISARM" ]; then
    # What a root customer can do to the return path: make an NMI harmless, so that it no longer
    # panics this kernel into the crash kernel (as would unloading it with kexec -p -u).
    echo 0 > /proc/sys/kernel/unknown_nmi_panic
    echo "RHAAS-TESTOS $NAME DISARMED unknown_nmi_panic=$(cat /proc/sys/kernel/unknown_nmi_panic)"
fi

MEM=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)
echo "$MARKER UP ip=${IP:-none}$NET kernel=$(uname -r) mem_kb=$MEM"

seq=0
while true; do
    if [ -z "$PINGS$TCPS" ]; then sleep 3600; continue; fi
    seq=$((seq + 1))
    for a in $PINGS; do
        if ping -c 1 -W 1 "$a" >/dev/null 2>&1; then r=OK; else r=FAIL; fi
        echo "RHAAS-PING $a $r seq=$seq"
    done
    for a in $TCPS; do
        # Not wget: busybox-static's wget segfaults (static glibc resolver); nc does not resolve.
        if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$a" 80 2>/dev/null | head -n 1 | grep -q ' 200 '; then
            r=OK
        else
            r=FAIL
        fi
        echo "RHAAS-TCP $a $r seq=$seq"
    done
    sleep 1
done
"""


def render_init(name: str, marker: str, release: str, modules: Sequence[str]) -> str:
    """The test OS's ``/init``: one ``load <module>`` line per module, in ``modules`` order."""
    loads = "\n".join(f"load {m}" for m in modules)
    return (
        _INIT_TEMPLATE.replace("@NAME@", shlex.quote(name))
        .replace("@MARKER@", shlex.quote(marker))
        .replace("@RELEASE@", release)
        .replace("@LOADS@", loads)
    )


@dataclass(frozen=True)
class TestOS:
    """A built test OS: boot ``kernel`` with ``initrd`` and ``cmdline``; when up it prints `up_regex`."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    marker: str
    kernel: Path
    initrd: Path
    cmdline: str
    manifest: Path
    kernel_package: str
    kernel_version: str
    kernel_release: str
    busybox_version: str
    modules: tuple[str, ...]

    @property
    def up_regex(self) -> str:
        """A regular expression for the console line printed once the OS is up (group 1: the address)."""
        return re.escape(self.marker) + r" UP ip=(\S+)"

    def memory_kb(self, console: str) -> int:
        """MemTotal as this OS said it on ``console`` (the last time it came up there)."""
        found = re.findall(re.escape(self.marker) + r" UP ip=\S+ .*mem_kb=(\d+)", console)
        if not found:
            raise ValueError(f"{self.marker} did not say its memory on this console")
        return int(found[-1])

    def cmdline_with(
        self,
        ip: str | None = None,
        ping: Iterable[str] = (),
        tcp: Iterable[str] = (),
        gateway: str | None = None,
        extra: str = "",
    ) -> str:
        """The default command line plus ``rhaas.ip=`` (CIDR), ``rhaas.gw=``, ``rhaas.ping=``,
        ``rhaas.tcp=`` and anything in ``extra``."""
        parts = [self.cmdline]
        if ip:
            parts.append(f"rhaas.ip={ip}")
        if gateway:
            parts.append(f"rhaas.gw={gateway}")
        for key, targets in (("ping", ping), ("tcp", tcp)):
            joined = ",".join(targets)
            if joined:
                parts.append(f"rhaas.{key}={joined}")
        if extra:
            parts.append(extra)
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


def _test_os_entries(busybox: bytes, init: str, modules: Sequence[tuple[str, Path]]) -> list[CpioEntry]:
    entries = [dir_entry(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys")]
    entries += [dir_entry("tmp"), dir_entry("lib"), dir_entry("lib/modules")]
    # The kernel opens /dev/console before /init runs; devtmpfs is not mounted automatically.
    entries.append(chardev_entry("dev/console", 5, 1))
    entries.append(file_entry("bin/busybox", busybox, 0o755))
    entries.append(symlink_entry("bin/sh", "busybox"))
    entries += [file_entry(f"lib/modules/{name}.ko", _module_bytes(path)) for name, path in modules]
    entries.append(file_entry("init", init.encode(), 0o755))
    return entries


def build_test_os(
    name: str = "testos",
    marker: str | None = None,
    cache: Path | str | None = None,
) -> TestOS:
    """Build (or find in the cache) the test OS ``name``, whose up line starts with ``marker``.

    ``marker`` defaults to ``RHAAS-TESTOS <name>``. The output is keyed by the kernel and busybox package
    versions, ``name``, ``marker`` and the init template, so a rebuild with nothing changed costs only the
    apt-cache look-ups.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"test OS name {name!r} must match {_NAME_RE.pattern}")
    marker = marker or f"RHAAS-TESTOS {name}"
    if not _MARKER_RE.match(marker):
        raise ValueError(f"marker {marker!r} must match {_MARKER_RE.pattern}")
    info = apt_show(KERNEL_META_PACKAGE, BUSYBOX_PACKAGE)
    kernel = fetch_kernel(cache, resolve_kernel_package(KERNEL_META_PACKAGE, info[KERNEL_META_PACKAGE]))
    busybox_pkg = Package(BUSYBOX_PACKAGE, info[BUSYBOX_PACKAGE]["Version"])
    busybox_pkg, busybox = fetch_busybox(cache, busybox_pkg)
    key_data = {
        "builder": _BUILDER_VERSION,
        "kernel": [kernel.package, kernel.version],
        "busybox": busybox_pkg.version,
        "name": name,
        "marker": marker,
        "modules": TEST_OS_MODULES,
        "template": hashlib.sha256(_INIT_TEMPLATE.encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir(cache) / "testos" / f"{name}-{key}"
    manifest = out / "manifest.json"
    initrd = out / "initrd.gz"
    with _locked(out):
        data = _read_manifest(manifest)
        if data is None or data.get("key") != key or not initrd.is_file():
            order = module_load_order(kernel.modules_dir, TEST_OS_MODULES)
            init = render_init(name, marker, kernel.release, [m for m, _ in order])
            archive = write_cpio(_test_os_entries(busybox.read_bytes(), init, order))
            tmp = initrd.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
            tmp.rename(initrd)
            data = {
                "key": key,
                "name": name,
                "marker": marker,
                "kernel_package": kernel.package,
                "kernel_version": kernel.version,
                "kernel_release": kernel.release,
                "kernel_manifest": str(kernel.manifest),
                "kernel": str(kernel.vmlinuz),
                "busybox_package": busybox_pkg.name,
                "busybox_version": busybox_pkg.version,
                "modules": [m for m, _ in order],
                "initrd": initrd.name,
                "initrd_bytes": initrd.stat().st_size,
                "cmdline": DEFAULT_CMDLINE,
            }
            _write_manifest(manifest, data)
    modules = data["modules"]
    assert isinstance(modules, list)
    return TestOS(
        name=name,
        marker=marker,
        kernel=kernel.vmlinuz,
        initrd=initrd,
        cmdline=str(data["cmdline"]),
        manifest=manifest,
        kernel_package=kernel.package,
        kernel_version=kernel.version,
        kernel_release=kernel.release,
        busybox_version=busybox_pkg.version,
        modules=tuple(str(m) for m in modules),
    )


# --- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rhaas.lab.images build``: build the test OS and print where its files are."""
    parser = argparse.ArgumentParser(prog="python -m rhaas.lab.images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the lab test OS")
    build.add_argument("--cache", type=Path, help="cache directory (default: $RHAAS_CACHE or ~/.cache/rhaas)")
    build.add_argument("--name", default="testos", help="name of the test OS (default: testos)")
    build.add_argument("--marker", help="start of the console line printed when up")
    build.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        image = build_test_os(args.name, args.marker, cache=args.cache)
    except (ImageBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(image.as_dict(), indent=2))
    else:
        print(f"kernel:   {image.kernel}")
        print(f"initrd:   {image.initrd}")
        print(f"cmdline:  {image.cmdline}")
        print(f"manifest: {image.manifest}")
        print(f"version:  {image.kernel_package} {image.kernel_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
