"""The FPBL (Fast Provisioning Boot Loader) builder: a Linux kernel + initramfs that runs the rhaas agent.

Everything comes from Debian packages, fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
(`rhaas.imaging` does the fetching, the kernel, the libraries and the archives):

- a Debian kernel: in the ``cloud`` flavour (the default) the cloud kernel with its virtio modules, loaded
  in an order derived from ``modinfo``; in the ``generic`` flavour the generic kernel with the NIC and
  storage drivers servers use (`GENERIC_DRIVERS`, plus any extra modules and firmware files the operator
  names), loaded at boot by coldplug from each device's modalias (`rhaas.agent.coldplug`);
- ``busybox-static`` for the userland and the init script;
- ``kexec`` from ``kexec-tools``, with the shared libraries it needs (read from the ELF files' DT_NEEDED
  entries and found in the packages its package depends on, recursively: libxen*, libc);
- Python: ``python3.11`` from ``python3.11-minimal`` and the few stdlib modules the agent imports (from
  ``libpython3.11-minimal`` and ``libpython3.11-stdlib``), compiled to ``.pyc`` by that interpreter;
- the agent (`rhaas.agent`), compiled the same way (`rhaas.provisioning.fpbl_python` says which modules).

Outputs, under ``<cache>/fpbl/<key>/`` with a ``manifest.json`` recording every package version::

    vmlinuz        the kernel
    core.cpio.gz   the initramfs proper
    initrd.img     core.cpio.gz + an uncompressed cpio with /rhaas/fpbl/{core.cpio.gz,vmlinuz}: the FPBL
                   carries the parts to recompose itself, for the return path (see rhaas.agent.kexec)

The key hashes the builder version, the agent's source, the init script and the top-level package
versions; a cached build is reused if the versions of every package it took files from are still apt's
candidates. Archives are reproducible: entries sorted, mtime 0, uid/gid 0, gzip without timestamp.

What the rest of rhaas needs of a built FPBL (`Fpbl`, `export`, `load_exported`) is in
`rhaas.provisioning.manifest`, which imports none of this. Command line::

    python -m rhaas.provisioning.fpbl build [--flavour cloud|generic] [--extra-module NAME]...
        [--firmware-dir DIR] [--cache DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rhaas.agent import coldplug
from rhaas.agent import kexec as agent_kexec
from rhaas.imaging import ImageBuildError, cache
from rhaas.imaging.debs import (
    BUSYBOX_PACKAGE,
    KERNEL_META_PACKAGE,
    Package,
    apt_show,
    fetch_busybox,
    resolve_kernel_package,
)
from rhaas.imaging.elf import LOADER, LibraryResolver
from rhaas.imaging.initramfs import (
    CpioEntry,
    chardev_entry,
    dir_entry,
    file_entry,
    gzip_archive,
    symlink_entry,
    with_parents,
    write_cpio,
)
from rhaas.imaging.kernel import (
    Kernel,
    coldplug_closure,
    fetch_kernel,
    module_bytes,
    module_load_order,
    select_modules,
)
from rhaas.provisioning import fpbl_python
from rhaas.provisioning.fpbl_python import PYTHON, PYTHON_PACKAGES, DebianPython
from rhaas.provisioning.manifest import Fpbl, export

#: Bump when the layout changes in a way the key's other inputs do not show.
BUILDER_VERSION = 1
KEXEC_PACKAGE = "kexec-tools"
TOP_PACKAGES = (KERNEL_META_PACKAGE, BUSYBOX_PACKAGE, KEXEC_PACKAGE, *PYTHON_PACKAGES)
MODULES = ("virtio_net", "virtio_blk", "virtio_pci")
FLAVOURS = ("cloud", "generic")
#: Bump when the generic flavour's selection of modules or its coldplug table changes in a way the key's
#: other inputs do not show (the cloud flavour's key does not include it).
GENERIC_VERSION = 2
GENERIC_KERNEL_META_PACKAGE = "linux-image-amd64"
#: The generic flavour's drivers: a directory under the kernel's modules (every module below it) or a
#: module name. Only those a device can match (they have a device alias) go in, with their dependencies.
GENERIC_DRIVERS = (
    # NICs: Intel (e1000, e1000e, igb, igc, ixgbe, i40e, ice, ...), Broadcom (tg3, bnx2, bnx2x, bnxt_en),
    # Mellanox (mlx4_en, mlx5_core), Realtek r8169, and virtio for virtual machines.
    "kernel/drivers/net/ethernet/intel/",
    "kernel/drivers/net/ethernet/broadcom/",
    "kernel/drivers/net/ethernet/mellanox/",
    "r8169",
    "virtio_net",
    # Storage: NVMe, SATA (AHCI, and the PIIX of older boards and of QEMU's pc), MegaRAID, LSI/Broadcom
    # SAS, HPE Smart Array, the SCSI disk driver, virtio.
    "kernel/drivers/nvme/host/",
    "ahci",
    "ata_piix",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    "sd_mod",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
)
#: Left out of the directories above: NICs of the 1990s and 2000s (they drag in PCMCIA, SSB and MMC) and
#: the virtual functions of SR-IOV NICs, which only virtual machines see.
GENERIC_EXCLUDED = ("b44", "e100", "ixgb", "igbvf", "ixgbevf", "iavf")
DEFAULT_CMDLINE = "console=ttyS0 quiet"

_INIT_TEMPLATE = r"""#!/bin/sh
# rhaas FPBL init: generated by rhaas.provisioning.fpbl, do not edit.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox --install -s
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The agent's files (a deploy's kernel, initrd and return payload: several copies of the FPBL) go to /tmp.
# In the initramfs they could take only half the memory, too little for them in a crash kernel.
mount -t tmpfs -o size=90%,mode=1777 tmpfs /tmp
echo
MODE=ready; IP=""; GW=""; MASK=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rhaas.mode=*) MODE="${arg#rhaas.mode=}" ;;
        rhaas.ip=*) IP="${arg#rhaas.ip=}" ;;
        rhaas.gw=*) GW="${arg#rhaas.gw=}" ;;
        rhaas.netmask=*) MASK="${arg#rhaas.netmask=}" ;;
    esac
done
if [ -n "$IP" ] && [ -n "$MASK" ] && [ "${IP#*/}" = "$IP" ]; then
    bits=0  # a network boot's iPXE script gives the netmask: make it a prefix length
    for octet in $(echo "$MASK" | tr . ' '); do
        while [ "$octet" -gt 0 ]; do bits=$((bits + (octet & 1))); octet=$((octet >> 1)); done
    done
    IP="$IP/$bits"
fi
echo "RHAAS-FPBL init mode=$MODE kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"

# PYTHONHASHSEED: a random hash seed would make the interpreter wait for the kernel's random pool, which
# a just-booted FPBL fills slowly (a second under TCG); the agent's dicts hold nothing an attacker chooses.
export PYTHONHOME=/usr PYTHONPATH=/usr/lib/rhaas-agent PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0

# Kernel modules (@RELEASE@), @HOW@
load() { insmod "/lib/modules/$1.ko" || echo "RHAAS-FPBL insmod $1 FAILED"; }
@LOADS@

if [ -n "$IP" ]; then
    # The provisioning NIC: the first (in name order) to get a carrier. Links negotiate in seconds; with
    # no carrier anywhere after 20 s, the first NIC.
    ip link set lo up
    NIC=""; UP=" "; n=0
    while [ -z "$NIC" ] && [ "$n" -lt 200 ]; do
        for d in /sys/class/net/*; do
            [ -e "$d/device" ] || continue
            case "$UP" in *" ${d##*/} "*) ;; *) ip link set "${d##*/}" up && UP="$UP${d##*/} " ;; esac
            if [ "$(cat "$d/carrier" 2>/dev/null)" = 1 ]; then NIC="${d##*/}"; break; fi
        done
        [ -z "$NIC" ] && sleep 0.1
        n=$((n + 1))
    done
    if [ -z "$NIC" ]; then
        NIC=$(echo $UP | cut -d' ' -f1)
        echo "RHAAS-FPBL no NIC has a carrier (NICs: ${UP:- none }); trying ${NIC:-eth0}"
        NIC=${NIC:-eth0}
    fi
    echo "RHAAS-FPBL nic $NIC (NICs:$UP) uptime=$(cut -d' ' -f1 /proc/uptime)"
    ip addr add "$IP" dev "$NIC" || echo "RHAAS-FPBL bad address $IP"
    [ -n "$GW" ] && ip route add default via "$GW"
fi

while true; do
    /usr/bin/python3.11 -S -u -m rhaas.agent.agent
    echo "RHAAS-FPBL agent exited with $?; restarting it in 5 s"
    sleep 5
done
"""


def render_init(release: str, modules: Sequence[str] | None) -> str:
    """The init script: it loads ``modules`` in this order, or (None) those coldplug matches."""
    if modules is None:
        how, loads = "those the devices' modaliases match:", "/usr/bin/python3.11 -S -m rhaas.agent.coldplug"
    else:
        how, loads = (
            "in an order derived at build time from their modinfo data:",
            "\n".join(f"load {m}" for m in modules),
        )
    return _INIT_TEMPLATE.replace("@RELEASE@", release).replace("@HOW@", how).replace("@LOADS@", loads)


def _key(versions: dict[str, str], hardware: dict[str, object] | None = None) -> str:
    """The cache key. ``hardware``: the generic flavour's driver selection (the cloud flavour has none)."""
    data: dict[str, object] = {
        "builder": BUILDER_VERSION,
        "packages": {n: versions[n] for n in sorted(versions)},
        "agent": {
            n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in fpbl_python.agent_sources().items()
        },
        "init": hashlib.sha256(_INIT_TEMPLATE.encode()).hexdigest(),
        "exercise": fpbl_python.SCRIPTS_DIGEST,
        "modules": MODULES,
    }
    if hardware is not None:
        data["hardware"] = hardware
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_fpbl(
    cache_root: Path | str | None = None,
    flavour: str = "cloud",
    extra_modules: Sequence[str] = (),
    firmware_dir: Path | str | None = None,
) -> Fpbl:
    """Build (or find in the cache) the FPBL. Raises `ImageBuildError` if a package or tool fails.

    ``flavour`` ``generic`` builds it for hardware (`GENERIC_DRIVERS`, loaded by coldplug), with
    ``extra_modules`` (module names, or directories ending in ``/`` under the kernel's modules) and every
    file under ``firmware_dir`` (to /lib/firmware); the ``cloud`` flavour takes neither.
    """
    if flavour not in FLAVOURS:
        raise ImageBuildError(f"unknown FPBL flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
    hardware: dict[str, object] | None = None
    firmware = _firmware_files(Path(firmware_dir)) if firmware_dir is not None else {}
    if flavour == "cloud":
        if extra_modules or firmware_dir is not None:
            raise ImageBuildError("extra modules and firmware go in the generic flavour (--flavour generic)")
        meta = KERNEL_META_PACKAGE
    else:
        meta = GENERIC_KERNEL_META_PACKAGE
        hardware = {
            "flavour": flavour, "version": GENERIC_VERSION, "drivers": [*GENERIC_DRIVERS, *extra_modules],
            "excluded": GENERIC_EXCLUDED,
            "firmware": {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in firmware.items()},
        }  # fmt: skip
    top = (meta, *TOP_PACKAGES[1:])
    root_cache = cache.cache_dir(cache_root)
    info = apt_show(*top)
    kernel_pkg = resolve_kernel_package(meta, info[meta])
    versions = {n: info[n]["Version"] for n in top if n != meta}
    versions[kernel_pkg.name] = kernel_pkg.version
    key = _key(versions, hardware)
    out = root_cache / "fpbl" / key
    manifest_path = out / "manifest.json"
    with cache.locked(out):
        data = cache.read_manifest(manifest_path)
        built = data is None or not _still_current(data)
        if built:
            drivers = None if hardware is None else (*GENERIC_DRIVERS, *extra_modules)
            data = _build(root_cache, out, key, info, versions, kernel_pkg, drivers, firmware)
            cache.write_manifest(manifest_path, data)
    assert data is not None
    packages, sizes = data["packages"], data["sizes"]
    assert isinstance(packages, dict) and isinstance(sizes, dict)
    return Fpbl(
        kernel=out / "vmlinuz", initrd=out / "initrd.img", core=out / "core.cpio.gz",
        cmdline=str(data["cmdline"]), manifest=manifest_path, packages=dict(packages), sizes=dict(sizes),
        key=key, built=built,
    )  # fmt: skip


def _still_current(data: dict[str, object]) -> bool:
    """Whether every package a cached build took files from is still at apt's candidate version."""
    packages = data.get("packages")
    if not isinstance(packages, dict) or not packages:
        return False
    try:
        now = apt_show(*packages)
    except ImageBuildError:
        return False
    return all(now[name]["Version"] == version for name, version in packages.items())


def _build(
    cache_root: Path, out: Path, key: str, info: dict[str, dict[str, str]], versions: dict[str, str],
    kernel_pkg: Package, drivers: Sequence[str] | None = None, firmware: dict[str, Path] | None = None,
) -> dict[str, object]:  # fmt: skip
    """Build the FPBL into ``out``; the data of its manifest. ``drivers``: the generic flavour's."""
    kernel = fetch_kernel(cache_root, kernel_pkg)
    busybox_pkg, busybox = fetch_busybox(cache_root, Package(BUSYBOX_PACKAGE, versions[BUSYBOX_PACKAGE]))
    resolver = LibraryResolver(cache_root, info)
    kexec_root = resolver.add(KEXEC_PACKAGE)
    kexec_bin = kexec_root / "sbin/kexec"
    if not kexec_bin.is_file():
        raise ImageBuildError(f"{KEXEC_PACKAGE} holds no sbin/kexec")
    kexec_libs = resolver.resolve(KEXEC_PACKAGE, [kexec_bin])
    python = fpbl_python.prepare_python(cache_root, versions, resolver)
    libs = {**kexec_libs, **python.libs}

    entries = _userland(busybox, kexec_bin, python, libs)
    hardware: dict[str, object] = {}
    if drivers is None:
        order = module_load_order(kernel.modules_dir, MODULES)
        loaded: list[str] | None = [m for m, _ in order]
        modules = loaded
    else:
        modules, hardware = _add_drivers(entries, kernel, drivers, firmware or {})
        order, loaded = [], None
    for name, path in order:
        _add(entries, file_entry(f"lib/modules/{name}.ko", module_bytes(path)))
    _add(entries, file_entry("init", render_init(kernel.release, loaded).encode(), 0o755))
    for dest, data, perm in fpbl_python.compiled_files(python):
        _add(entries, file_entry(dest, data, perm))

    used = {name for name, _ in libs.values()} | {python.loader[0], KEXEC_PACKAGE, *PYTHON_PACKAGES}
    packages = {n: resolver.fields[n]["Version"] for n in sorted(used)}
    packages[kernel.package] = kernel.version
    packages[busybox_pkg.name] = busybox_pkg.version
    inside = {
        "builder": BUILDER_VERSION, "key": key, "packages": packages, "kernel_release": kernel.release,
        "busybox": "/bin/busybox", "kexec": "/usr/sbin/kexec",
        "kexec_libs": [f"/lib64/{LOADER}", *(f"/lib/x86_64-linux-gnu/{s}" for s in sorted(kexec_libs))],
    }  # fmt: skip
    manifest = (json.dumps(inside, indent=2, sort_keys=True) + "\n").encode()
    _add(entries, file_entry("rhaas/fpbl/manifest.json", manifest))

    archive = write_cpio(with_parents(entries))
    sizes = _write_outputs(out, archive, kernel)
    sizes.update({"python_modules": len(python.modules), "files": len(entries)})
    return {
        "key": key, "builder": BUILDER_VERSION, "cmdline": DEFAULT_CMDLINE, "packages": packages,
        "kernel_release": kernel.release, "modules": modules, "sizes": sizes,
        "stdlib_modules": sorted(python.modules), "libraries": {s: n for s, (n, _) in sorted(libs.items())},
        "flavour": "cloud" if drivers is None else "generic", **hardware,
    }  # fmt: skip


def _add_drivers(
    entries: dict[str, CpioEntry], kernel: Kernel, drivers: Sequence[str], firmware: dict[str, Path]
) -> tuple[list[str], dict[str, object]]:
    """Add the modules ``drivers`` select with their dependencies, the coldplug table and ``firmware``;
    the modules, and the manifest's account of the firmware: carried, and named by a module but lacking."""
    selected = select_modules(kernel.modules_dir, drivers, exclude=GENERIC_EXCLUDED)
    infos = coldplug_closure(kernel.modules_dir, selected)
    for name, mod in infos.items():
        _add(entries, file_entry(f"lib/modules/{name}.ko", module_bytes(mod.path)))
    table = coldplug.make_table({n: (m.aliases, m.depends) for n, m in infos.items()})
    _add(entries, file_entry(coldplug.TABLE.lstrip("/"), json.dumps(table, sort_keys=True).encode()))
    for name, path in firmware.items():
        _add(entries, file_entry(f"lib/firmware/{name}", path.read_bytes()))
    wanted = {f: n for n, m in infos.items() for f in m.firmware}
    missing: dict[str, list[str]] = {}
    for name, module in sorted(wanted.items()):
        if name not in firmware:
            missing.setdefault(module, []).append(name)
    return list(infos), {"firmware": sorted(firmware), "firmware_missing": missing}


def _firmware_files(directory: Path) -> dict[str, Path]:
    """Every file under ``directory`` (symbolic links followed), by its path relative to it."""
    if not directory.is_dir():
        raise ImageBuildError(f"firmware directory {directory} does not exist")
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}


def _add(entries: dict[str, CpioEntry], entry: CpioEntry) -> None:
    entries[entry.name] = entry


def _userland(
    busybox: Path, kexec_bin: Path, python: DebianPython, libs: dict[str, tuple[str, Path]]
) -> dict[str, CpioEntry]:
    """The FPBL's programs and their libraries, with the directories and device its init needs."""
    entries: dict[str, CpioEntry] = {}
    _add(entries, chardev_entry("dev/console", 5, 1))
    for d in ("proc", "sys", "tmp", "run", "sbin", "usr/sbin", "usr/bin"):
        _add(entries, dir_entry(d))
    _add(entries, file_entry("bin/busybox", busybox.read_bytes(), 0o755))
    _add(entries, symlink_entry("bin/sh", "busybox"))
    _add(entries, file_entry("usr/sbin/kexec", kexec_bin.read_bytes(), 0o755))
    _add(entries, file_entry(f"usr/bin/{PYTHON}", python.binary.read_bytes(), 0o755))
    _add(entries, symlink_entry("usr/bin/python3", PYTHON))
    for soname, (_, path) in sorted(libs.items()):
        _add(entries, file_entry(f"lib/x86_64-linux-gnu/{soname}", path.read_bytes(), 0o755))
    _add(entries, file_entry(f"lib64/{LOADER}", python.loader[1].read_bytes(), 0o755))
    _add(entries, symlink_entry(f"lib/x86_64-linux-gnu/{LOADER}", f"/lib64/{LOADER}"))
    return entries


def _write_outputs(out: Path, archive: bytes, kernel: Kernel) -> dict[str, int]:
    """Write ``core.cpio.gz``, ``vmlinuz`` and ``initrd.img`` (core + self-copy) into ``out``; sizes."""
    out.mkdir(parents=True, exist_ok=True)
    core = out / "core.cpio.gz"
    cache.atomic_write(core, gzip_archive(archive))
    vmlinuz = out / "vmlinuz"
    cache.atomic_write(vmlinuz, kernel.vmlinuz.read_bytes())
    initrd = out / "initrd.img"
    with open(initrd.with_suffix(".tmp"), "wb") as f:
        agent_kexec.write_parts(f, agent_kexec.fpbl_initrd_parts(str(core), str(vmlinuz)))
    initrd.with_suffix(".tmp").rename(initrd)
    return {
        "kernel": vmlinuz.stat().st_size, "core": core.stat().st_size, "initrd": initrd.stat().st_size,
        "core_uncompressed": len(archive),
    }  # fmt: skip


# --- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rhaas.provisioning.fpbl build``: build the FPBL and print where its files are."""
    parser = argparse.ArgumentParser(
        prog="python -m rhaas.provisioning.fpbl", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the FPBL")
    build.add_argument("--cache", type=Path, help="cache directory (default: $RHAAS_CACHE or ~/.cache/rhaas)")
    build.add_argument("--out", type=Path, help="also copy vmlinuz, initrd and fpbl.json into this directory")
    build.add_argument("--json", action="store_true", help="print JSON")
    build.add_argument("--flavour", choices=FLAVOURS, default="cloud",
                       help="cloud: Debian's cloud kernel, virtio only (default); generic: Debian's generic "
                       "kernel with the NIC and storage drivers of servers, loaded by coldplug")  # fmt: skip
    build.add_argument("--extra-module", action="append", default=[], metavar="NAME",
                       help="generic flavour: also carry this module (or every module under this "
                       "directory of the kernel's modules, ending in /); repeatable")  # fmt: skip
    build.add_argument("--firmware-dir", type=Path, metavar="DIR",
                       help="generic flavour: carry every file under DIR as /lib/firmware/...")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        fpbl = build_fpbl(args.cache, args.flavour, args.extra_module, args.firmware_dir)
        if args.out is not None:
            fpbl = export(fpbl, args.out)
    except (ImageBuildError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fpbl.as_dict(), indent=2, sort_keys=True))
    else:
        print(f"kernel:   {fpbl.kernel} ({fpbl.sizes['kernel']} bytes)")
        print(f"initrd:   {fpbl.initrd} ({fpbl.sizes['initrd']} bytes; core {fpbl.sizes['core']})")
        print(f"cmdline:  {fpbl.cmdline}")
        print(f"manifest: {fpbl.manifest}")
        print(f"cache:    {'built' if fpbl.built else 'hit'} ({fpbl.key})")
        print("packages: " + shlex.join(f"{n}={v}" for n, v in sorted(fpbl.packages.items())))
        missing = json.loads(fpbl.manifest.read_text()).get("firmware_missing") or {}
        for module, files in sorted(missing.items()):
            print(f"firmware: {module} may ask for {' '.join(files)}, not carried (see --firmware-dir)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
