"""Coldplug: load the kernel modules the machine's devices need, matched by their modalias.

The FPBL's ``generic`` flavour carries many NIC and storage drivers, and loads only those a device asks
for. At build time the builder writes a table (`make_table`, stored at `TABLE`): each module's file, the
modules it depends on, and its device aliases from ``modinfo`` (``pci:v00008086d000010D3sv*sd*bc*sc*i*``:
fnmatch patterns, as in ``modules.alias``). At boot, before the agent starts, the init runs this module:
it reads every ``/sys/bus/*/devices/*/modalias``, matches each against the aliases, and insmods the
matching modules, each after its dependencies. A driver's probe can bring new devices (``virtio_pci``
brings the virtio devices ``virtio_net`` and ``virtio_blk`` bind to), so it looks again after a round that
loaded something, a few times at most. SCSI disks appear asynchronously once a host driver (``ahci``,
``megaraid_sas``, ``mpt3sas``) has scanned its links: ``sd_mod`` is loaded with any SCSI host driver.

Prints one line a boot: ``RHAAS-FPBL coldplug loaded: e1000e nvme (...)``. Standard library only.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

#: Where the FPBL carries the table and the modules (``/lib/modules/<name>.ko``).
TABLE = "/lib/modules/coldplug.json"
MODULE_DIR = "/lib/modules"
#: Rounds of (read modaliases, load what matches) at most: the later ones catch devices that the
#: modules of the round before brought.
ROUNDS = 3
#: Loaded with any SCSI host driver: the disks its scan finds appear after the round that loaded it.
SCSI_DISK = ("scsi_mod", "sd_mod")

_WILDCARDS = "*?["


def is_device_alias(alias: str) -> bool:
    """Whether ``alias`` can match a device's modalias (``bus:…``), not a name (``fs-ext4``, ``crc32c``)."""
    bus, sep, _ = alias.partition(":")
    return bool(sep) and bus.isidentifier()


def make_table(modules: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, object]:
    """The coldplug table for ``modules``: name -> (aliases, depends). JSON-ready, deterministic.

    A module no device matches that depends on one a device does (``mlx4_en`` on ``mlx4_core``) is
    loaded with it (``with``): the kernel would ask modprobe for it, and the FPBL has no modprobe.
    """
    devices = {n for n, (aliases, _) in modules.items() if any(is_device_alias(a) for a in aliases)}
    companions: dict[str, list[str]] = {}
    for name in sorted(set(modules) - devices):
        for dep in modules[name][1]:
            if dep in devices:
                companions.setdefault(dep, []).append(name)
    return {
        "modules": {
            name: {
                "depends": list(modules[name][1]),
                **({"with": companions[name]} if name in companions else {}),
            }
            for name in sorted(modules)
        },
        "aliases": sorted({(a, name) for name, (aliases, _) in modules.items() for a in aliases}),
    }


class Matcher:
    """Modalias -> the modules whose aliases match it.

    Aliases are indexed by their literal prefix (the text before the first wildcard): an alias can only
    match a modalias that starts with its prefix, so a lookup tries the modalias's own prefixes, one dict
    lookup each, and fnmatches only the few aliases filed there. No pattern is compiled until needed.
    """

    def __init__(self, aliases: Iterable[Sequence[str]]) -> None:
        self.by_prefix: dict[str, list[tuple[str, str]]] = {}
        for pattern, module in aliases:
            cut = min((i for i, c in enumerate(pattern) if c in _WILDCARDS), default=len(pattern))
            self.by_prefix.setdefault(pattern[:cut], []).append((pattern, module))
        self.longest = max((len(p) for p in self.by_prefix), default=0)

    def match(self, modalias: str) -> list[str]:
        """The modules with an alias matching ``modalias`` (case-sensitive, like the kernel's tools)."""
        found = set()
        for k in range(min(len(modalias), self.longest) + 1):
            for pattern, module in self.by_prefix.get(modalias[:k], ()):
                if module not in found and fnmatch.fnmatchcase(modalias, pattern):
                    found.add(module)
        return sorted(found)


def load_order(wanted: Iterable[str], depends: Mapping[str, Sequence[str]], loaded: set[str]) -> list[str]:
    """``wanted`` and what they depend on, minus ``loaded``, each after its dependencies.

    A dependency the table does not know is left to the kernel (built in, or it fails loudly at insmod).
    """
    order: list[str] = []
    seen = set(loaded)

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path or name not in depends:
            return
        for dep in depends.get(name, ()):
            visit(dep, (*path, name))
        if name not in seen:
            seen.add(name)
            order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def read_modaliases(sys_root: str = "/sys") -> set[str]:
    """The modalias of every device on every bus."""
    found = set()
    for path in glob.glob(os.path.join(sys_root, "bus", "*", "devices", "*", "modalias")):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue  # the device went away
        if value:
            found.add(value)
    return found


def loaded_modules(proc_modules: str = "/proc/modules") -> set[str]:
    """The names of the modules the kernel holds."""
    try:
        with open(proc_modules) as f:
            return {line.split(" ", 1)[0] for line in f if line.strip()}
    except OSError:
        return set()


def module_options(name: str, cmdline: str) -> list[str]:
    """The ``name.param=value`` words of the kernel command line, as ``param=value`` (what modprobe
    passes: the kernel applies such words only to built-in drivers). ``-`` and ``_`` are the same."""
    module = name.replace("-", "_")
    options = []
    for word in cmdline.split():
        owner, _, option = word.partition(".")
        if "=" in option and owner.replace("-", "_") == module:
            options.append(option)
    return options


@functools.cache
def _cmdline() -> str:
    """This boot's kernel command line, read once (every module's options come from it)."""
    try:
        with open("/proc/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def insmod(name: str) -> str | None:
    """Load ``/lib/modules/<name>.ko`` with its options from the kernel command line; None, or the
    error's text."""
    path = os.path.join(MODULE_DIR, f"{name}.ko")
    done = subprocess.run(["insmod", path, *module_options(name, _cmdline())], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")


def coldplug(
    table: Mapping[str, object],
    read: Callable[[], set[str]] = read_modaliases,
    load: Callable[[str], str | None] = insmod,
    loaded: set[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Load what the devices ``read`` returns ask for, with `load`, in rounds; (loaded, failed: error)."""
    modules = table["modules"]
    aliases = table["aliases"]
    assert isinstance(modules, dict) and isinstance(aliases, list)
    depends = {name: list(entry.get("depends", ())) for name, entry in modules.items()}
    companions = {name: list(entry.get("with", ())) for name, entry in modules.items()}
    matcher = Matcher(aliases)
    have = set(loaded if loaded is not None else loaded_modules())
    done: list[str] = []
    failed: dict[str, str] = {}
    seen: set[str] = set()
    for _ in range(ROUNDS):
        fresh = read() - seen
        seen |= fresh
        matched = {m for alias in fresh for m in matcher.match(alias)}
        wanted = sorted(matched | {c for m in matched for c in companions.get(m, ())})
        if SCSI_DISK[0] in have | set(load_order(wanted, depends, have)):
            wanted.append(SCSI_DISK[1])
        todo = [m for m in load_order(wanted, depends, have) if m not in failed]
        if not todo:
            break
        for name in todo:
            if any(dep in failed for dep in depends.get(name, ())):
                failed[name] = "a module it depends on failed to load"
                continue
            error = load(name)
            if error is None:
                have.add(name)
                done.append(name)
            else:
                failed[name] = error
    return done, failed


def main(argv: Sequence[str] | None = None) -> int:
    """Coldplug from the table at `TABLE` (or ``argv[0]``); print what got loaded."""
    args = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        with open(args[0] if args else TABLE) as f:
            table = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"RHAAS-FPBL coldplug: no table: {exc}", flush=True)
        return 1
    done, failed = coldplug(table)
    took = time.monotonic() - started
    print(f"RHAAS-FPBL coldplug loaded: {' '.join(done) or '(nothing)'} ({took:.2f} s)", flush=True)
    for name, error in sorted(failed.items()):
        print(f"RHAAS-FPBL coldplug insmod {name} FAILED: {error}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
