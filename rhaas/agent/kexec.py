"""Handing a node over with kexec, and arming its way back (standard library only).

Deploy: the FPBL kexecs the customer's kernel. Before it does, it appends a **return payload** (an
uncompressed newc cpio) to the customer's initrd; Linux unpacks concatenated archives, so the customer's
initramfs gains::

    /rhaas/init            busybox sh wrapper, made the first program by rdinit=/rhaas/init
    /rhaas/next            the customer's own init (/init, or what its rdinit= named)
    /rhaas/crash.cmdline   the crash kernel's command line (agent settings, rhaas.mode=return, memmap)
    /rhaas/bin/busybox     static busybox, for the wrapper
    /rhaas/bin/kexec       Debian's kexec, run through /rhaas/lib/ld-linux-x86-64.so.2 with its libraries
    /rhaas/lib/...
    /rhaas/fpbl/vmlinuz    the FPBL kernel
    /rhaas/fpbl/core.cpio.gz
    /rhaas/fpbl/initrd.N   the bytes of the FPBL initrd between those two files (see `fpbl_initrd_parts`)
    /rhaas/fpbl/initrd.parts  the order in which they make the FPBL initrd

The payload is two archives: the small one made for each deploy (wrapper, next init, crash command line)
and a ~28 MB one that is the same for every deploy (busybox, kexec, the FPBL), which the agent prepares
once while the node idles (`prepare_static_payload`) so that a deploy only copies it. The FPBL initrd
holds the FPBL's kernel and core a second time (its self-copy); the payload carries each once, and the
wrapper joins the parts with ``cat`` in the customer's memory, which is plentiful, not in the return
FPBL's, which a deploy needs three times over (see `rhaas.agent.deploy`).

The wrapper makes the FPBL initrd, loads the FPBL as the crash kernel (``kexec -p``), removes /rhaas and
``exec``s the customer's init. ``crashkernel=448M unknown_nmi_panic=1`` on the customer's command line
reserve the memory and turn an NMI into a panic, and so into the FPBL: no firmware, no cooperation from
the customer OS.

The crash kernel sees only the reserved region, and stays the node's FPBL after a return. The next
customer's kernel gets the node's whole memory all the same: the agent shows kexec-tools the map the first
FPBL read from ``/sys/firmware/memmap`` (`write_memmap_dir`, on a tmpfs over it), and kexec-tools hands the
next kernel the map it reads there. The map travels as ``rhaas.memmap=`` on each command line, because a
kexec'd kernel's /sys/firmware/memmap shows only what its loader passed (the crash region, after a
return). A deploy too big for the crash region first boots the full FPBL, with ``memmap=exactmap`` and
those ranges (`exactmap_params`).

The FPBL initrd is ``core.cpio.gz`` (everything) followed by an uncompressed cpio holding
``/rhaas/fpbl/core.cpio.gz`` and ``/rhaas/fpbl/vmlinuz``: an initramfs cannot hold a copy of itself, but it
can hold the parts to make one, and `compose_fpbl_initrd` makes exactly the bytes the builder made.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
from typing import BinaryIO, NamedTuple

from rhaas.agent.cpio import CpioWriter, pad4

#: Where the FPBL keeps the files it needs to hand over and to come back (written by the builder).
FPBL_DIR = "/rhaas/fpbl"
#: The return FPBL's own: ``iomem=relaxed`` lets a memory scrub reach, through /dev/mem, the customer's
#: RAM that the crash kernel marks busy as "RAM buffer" (up to 64 MiB after each of its RAM ranges).
CRASH_ARGS = ("irqpoll", "nr_cpus=1", "reset_devices", "iomem=relaxed")
#: The crash region the customer's kernel reserves for the return FPBL (MiB). It must hold that FPBL and,
#: for the next deploy from it, three copies of the next customer's kernel and initrd with the return
#: payload (see `rhaas.agent.deploy`): 448 lets a distribution's (Debian's: 14 + 15 MB) deploy there, where
#: 384 fell short by a few MiB and the deploy first booted the full FPBL (about 8 s under TCG).
CRASH_MIB = 448
CUSTOMER_ARGS = ("rdinit=/rhaas/init", f"crashkernel={CRASH_MIB}M", "unknown_nmi_panic=1")
#: Parameters of one boot that must not be passed on to the next kernel.
_NOT_INHERITED = {
    "irqpoll", "nr_cpus", "reset_devices", "elfcorehdr", "memmap", "crashkernel", "initrd", "BOOT_IMAGE",
    "rdinit", "unknown_nmi_panic", "maxcpus", "disable_cpu_apicid", "iomem",
}  # fmt: skip

#: /sys/firmware/memmap type -> the letter this module uses; anything else is kept as reserved ("r").
_MEMMAP_KINDS = {"System RAM": "u", "ACPI Tables": "a", "ACPI Non-volatile Storage": "n"}
#: memmap= separator per kind: @ usable, # ACPI data, $ reserved.
_MEMMAP_SEP = {"u": "@", "a": "#", "n": "$", "r": "$"}

WRAPPER = r"""#!/rhaas/bin/busybox sh
# rhaas return wrapper: arm the FPBL as crash kernel, then start the customer's init. Written by the agent.
B=/rhaas/bin/busybox
$B mkdir -p /proc /sys
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
if ! $B cat $($B cat /rhaas/fpbl/initrd.parts) > /rhaas/fpbl/initrd; then
    echo "RHAAS-RETURN unarmed: the FPBL initrd could not be put together"
elif /rhaas/lib/ld-linux-x86-64.so.2 --library-path /rhaas/lib /rhaas/bin/kexec -i -p /rhaas/fpbl/vmlinuz \
        --initrd=/rhaas/fpbl/initrd --append="$($B cat /rhaas/crash.cmdline)"; then
    echo "RHAAS-RETURN armed crash_loaded=$($B cat /sys/kernel/kexec_crash_loaded)"
else
    echo "RHAAS-RETURN unarmed: kexec -p failed"
fi
$B umount /sys
$B umount /proc
NEXT=$($B cat /rhaas/next)
# The payload holds the deploy's return token (good for one return check-in) and ~60 MB the customer
# does not need (the payload and the FPBL initrd made from it).
$B rm -rf /rhaas
exec "$NEXT"
"""


# --- the memory map ----------------------------------------------------------------------------------


class MemRange(NamedTuple):
    """A physical address range ``[start, end)`` of one kind: u(sable), a(cpi), n(vs), r(eserved)."""

    start: int
    end: int
    kind: str

    def memmap_param(self) -> str:
        return f"memmap={self.end - self.start:#x}{_MEMMAP_SEP[self.kind]}{self.start:#x}"


def read_firmware_memmap(sys_dir: str = "/sys") -> list[MemRange]:
    """The firmware's memory map as this kernel was given it, sorted by start."""
    base = os.path.join(sys_dir, "firmware", "memmap")
    ranges = []
    for entry in os.listdir(base):
        path = os.path.join(base, entry)

        def field(name: str, path: str = path) -> str:
            with open(os.path.join(path, name)) as f:
                return f.read().strip()

        start, last = int(field("start"), 16), int(field("end"), 16)
        ranges.append(MemRange(start, last + 1, _MEMMAP_KINDS.get(field("type"), "r")))
    return sorted(ranges, key=lambda r: r.start)


def write_memmap_dir(path: str, ranges: list[MemRange]) -> None:
    """Write ``ranges`` as the kernel lays out /sys/firmware/memmap: ``<n>/{start,end,type}``."""
    names = {v: k for k, v in _MEMMAP_KINDS.items()} | {"r": "Reserved"}
    for n, r in enumerate(ranges):
        entry = os.path.join(path, str(n))
        os.makedirs(entry, exist_ok=True)
        for name, value in (("start", f"{r.start:#x}"), ("end", f"{r.end - 1:#x}"), ("type", names[r.kind])):
            with open(os.path.join(entry, name), "w") as f:
                f.write(value + "\n")


def format_memmap(ranges: list[MemRange]) -> str:
    """``rhaas.memmap=`` text: ``<start hex>-<end hex><kind>`` joined by commas."""
    return ",".join(f"{r.start:x}-{r.end:x}{r.kind}" for r in ranges)


def parse_memmap(text: str) -> list[MemRange]:
    """The inverse of `format_memmap`. Raises ValueError on malformed text."""
    ranges = []
    for item in text.split(","):
        kind = item[-1:]
        if kind not in _MEMMAP_SEP:
            raise ValueError(f"bad memmap range {item!r}")
        start, _, end = item[:-1].partition("-")
        r = MemRange(int(start, 16), int(end, 16), kind)
        if r.end <= r.start:
            raise ValueError(f"empty memmap range {item!r}")
        ranges.append(r)
    return ranges


def usable_bytes(ranges: list[MemRange]) -> int:
    return sum(r.end - r.start for r in ranges if r.kind == "u")


def exactmap_params(ranges: list[MemRange]) -> list[str]:
    """Kernel parameters that replace a kernel's memory map with ``ranges``."""
    return ["memmap=exactmap", *(r.memmap_param() for r in ranges)]


# --- command lines -----------------------------------------------------------------------------------


def inherited_args(cmdline: str) -> list[str]:
    """This boot's parameters that the next FPBL should get too (console, quiet, ...): not rhaas.*, not
    the ones that describe this boot only."""
    out = []
    for arg in shlex.split(cmdline):
        key = arg.split("=", 1)[0]
        if arg == "--":
            break
        if not key.startswith("rhaas.") and key not in _NOT_INHERITED:
            out.append(arg)
    return out


def customer_cmdline(cmdline: str) -> tuple[str, str]:
    """The customer's command line with the return path armed, and the init the wrapper must start."""
    args = cmdline.split()
    next_init = "/init"
    kept = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "rdinit":
            next_init = value or "/init"
        elif key not in ("crashkernel", "unknown_nmi_panic"):
            kept.append(arg)
    if "--" in kept:  # parameters after -- are the init's, not the kernel's
        cut = kept.index("--")
        kept[cut:cut] = list(CUSTOMER_ARGS)
    else:
        kept += CUSTOMER_ARGS
    return " ".join(kept), next_init


# --- the FPBL's parts to recompose itself ------------------------------------------------------------


class _PartsCpio(CpioWriter):
    """A cpio archive laid out as parts: the bytes it writes, and the paths of the files it copies in
    place of their contents (`fpbl_initrd_parts`)."""

    def __init__(self, parts: list[bytes | str], lead: bytes = b"") -> None:
        self.buffer = io.BytesIO()
        self.buffer.write(lead)
        super().__init__(self.buffer)
        self.parts = parts

    def flush(self) -> None:
        literal = self.buffer.getvalue()
        if literal:
            self.parts.append(literal)
            self.buffer.seek(0)
            self.buffer.truncate()

    def copy(self, name: str, path: str, perm: int | None = None) -> None:
        info = os.stat(path)
        size = info.st_size
        self._header(name, stat.S_IFREG | (stat.S_IMODE(info.st_mode) if perm is None else perm), size)
        self.flush()
        self.parts.append(path)
        self.written += size
        self._emit(b"\0" * (-size % 4))


def fpbl_initrd_parts(core: str, vmlinuz: str) -> list[bytes | str]:
    """The FPBL initrd as it is laid out, in order: bytes as they are, and the paths of ``core`` and
    ``vmlinuz`` where their contents go. It is ``core`` (everything), padding, and an uncompressed cpio
    (the self-copy) holding ``/rhaas/fpbl/core.cpio.gz`` and ``/rhaas/fpbl/vmlinuz``."""
    parts: list[bytes | str] = [core]
    cpio = _PartsCpio(parts, lead=b"\0" * (-os.path.getsize(core) % 4))
    cpio.directory("rhaas")
    cpio.directory("rhaas/fpbl")
    cpio.copy("rhaas/fpbl/core.cpio.gz", core, 0o644)
    cpio.copy("rhaas/fpbl/vmlinuz", vmlinuz, 0o644)
    cpio.close()
    cpio.flush()
    return parts


def write_parts(out: BinaryIO, parts: list[bytes | str]) -> int:
    """Write ``parts`` (bytes, and paths of files to copy) to ``out`` (a real file); the bytes written."""
    length = 0
    for part in parts:
        if isinstance(part, bytes):
            out.write(part)
            length += len(part)
        else:
            length += copy_file(out, part)
    return length


def copy_file(out: BinaryIO, path: str) -> int:
    """Append the file at ``path`` to ``out`` (a real file), copied by the kernel; the bytes copied."""
    out.flush()
    with open(path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        sent = 0
        while sent < size:
            n = os.sendfile(out.fileno(), src.fileno(), sent, size - sent)
            if n == 0:
                raise OSError(f"{path} ended after {sent} of {size} bytes")
            sent += n
    out.seek(0, os.SEEK_END)
    return size


def compose_fpbl_initrd(out_path: str, fpbl_dir: str = FPBL_DIR) -> int:
    """Write the FPBL initrd (core + self-copy) to ``out_path`` from the FPBL's own files; its size."""
    parts = fpbl_initrd_parts(os.path.join(fpbl_dir, "core.cpio.gz"), os.path.join(fpbl_dir, "vmlinuz"))
    with open(out_path, "wb") as out:
        return write_parts(out, parts)


# --- the return payload ------------------------------------------------------------------------------


class FpblFiles(NamedTuple):
    """What the FPBL's manifest (``/rhaas/fpbl/manifest.json``, written by the builder) says is where."""

    vmlinuz: str
    core: str
    busybox: str
    kexec: str
    #: kexec's shared libraries, the dynamic loader (ld-linux-x86-64.so.2) among them.
    libs: tuple[str, ...]

    @classmethod
    def load(cls, fpbl_dir: str = FPBL_DIR) -> FpblFiles:
        with open(os.path.join(fpbl_dir, "manifest.json")) as f:
            data = json.load(f)
        return cls(
            vmlinuz=os.path.join(fpbl_dir, "vmlinuz"),
            core=os.path.join(fpbl_dir, "core.cpio.gz"),
            busybox=str(data["busybox"]),
            kexec=str(data["kexec"]),
            libs=tuple(str(p) for p in data["kexec_libs"]),
        )


def write_static_payload(out: BinaryIO, files: FpblFiles) -> int:
    """The part of the return payload that is the same for every deploy (busybox, kexec and its
    libraries, the FPBL's kernel and core, and the bytes that make them the FPBL initrd): a cpio of its
    own, ~28 MB, written once while the node idles. Returns its length."""
    cpio = CpioWriter(out)
    for d in ("rhaas", "rhaas/bin", "rhaas/lib", "rhaas/fpbl"):
        cpio.directory(d)
    cpio.copy("rhaas/bin/busybox", files.busybox, 0o755)
    cpio.copy("rhaas/bin/kexec", files.kexec, 0o755)
    libs = {os.path.basename(lib): os.path.realpath(lib) for lib in files.libs}  # the loader is listed twice
    for name, path in libs.items():
        cpio.copy(f"rhaas/lib/{name}", path, 0o755)
    carried = {files.vmlinuz: "rhaas/fpbl/vmlinuz", files.core: "rhaas/fpbl/core.cpio.gz"}
    for path, name in carried.items():
        cpio.copy(name, path, 0o644)
    order = []
    for i, part in enumerate(fpbl_initrd_parts(files.core, files.vmlinuz)):
        if isinstance(part, bytes):
            cpio.file(f"rhaas/fpbl/initrd.{i}", part)
            order.append(f"/rhaas/fpbl/initrd.{i}")
        else:
            order.append("/" + carried[part])
    cpio.file("rhaas/fpbl/initrd.parts", "\n".join(order).encode() + b"\n")
    cpio.close()
    return cpio.written


def prepare_static_payload(out_path: str, files: FpblFiles) -> int:
    """Write the static payload to ``out_path``; its length."""
    try:
        with open(out_path + ".part", "wb") as out:
            length = write_static_payload(out, files)
        os.replace(out_path + ".part", out_path)
    finally:
        if os.path.exists(out_path + ".part"):
            os.unlink(out_path + ".part")
    return length


def write_deploy_payload(out: BinaryIO, crash_cmdline: str, next_init: str) -> int:
    """The part of the return payload made for each deploy: the wrapper, the customer's init and the
    crash kernel's command line. Returns its length."""
    cpio = CpioWriter(out)
    cpio.directory("rhaas")
    cpio.file("rhaas/init", WRAPPER.encode(), 0o755)
    cpio.file("rhaas/next", next_init.encode() + b"\n")
    cpio.file("rhaas/crash.cmdline", crash_cmdline.encode() + b"\n", 0o600)
    cpio.close()
    return cpio.written


def append_payload(
    customer_initrd: str, out_path: str, static_payload: str, crash_cmdline: str, next_init: str
) -> int:
    """Write the customer's initrd, then the deploy payload, then the static payload to ``out_path``;
    the total size. The static payload is copied by the kernel (``sendfile``), not through Python."""
    with open(out_path, "wb") as out:
        length = pad4(out, copy_file(out, customer_initrd))
        length += write_deploy_payload(out, crash_cmdline, next_init)
        length += copy_file(out, static_payload)
    return length
