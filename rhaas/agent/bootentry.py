"""Finding the kernel, initrd and command line a written image's own boot loader would boot by default
(standard library only).

After writing a whole-disk image, the agent boots that image's OS by kexec, so it must do what the
image's boot loader would: `scan` reads the partition table and opens every file system it can read
(`rhaas.agent.fs`), and `find_boot_entry` looks, in this order, for

1. Boot Loader Specification entries (``/loader/entries/*.conf`` on the ESP, XBOOTLDR or a /boot file
   system, ``/boot/loader/entries`` on a root file system), sorted as the specification says, the
   default from ``loader.conf`` (or GRUB's ``saved_entry`` in a grubenv beside them) if set, else the
   first;
2. GRUB's default entry (`rhaas.agent.grubcfg`) from ``/boot/grub/grub.cfg`` and the other usual places,
   or an ESP's ``EFI/*/grub.cfg`` that hands over to one;
3. the ``/vmlinuz`` and ``/initrd.img`` links Debian and Ubuntu keep (or the ``/boot/`` ones), with
   ``root=`` and ``ro`` from ``/etc/fstab``.

The result names the method and the files (`BootEntry`); the caller's overrides of the kernel, the initrd
and the command line replace what was found. When nothing is found, `BootEntryError` names every place
searched and every volume that could not be read (encrypted, btrfs, LVM…).
"""

from __future__ import annotations

import fnmatch
from typing import BinaryIO, NamedTuple

from rhaas.agent import grubcfg
from rhaas.agent.bls import BlsEntry, parse_bls, sort_bls
from rhaas.agent.fs import DESCRIPTIONS, MAX_READ, FileSystem, FsError, Volume, identify, open_fs
from rhaas.agent.partitions import MBR_EXTENDED, Partition, PartitionError, read_table

#: Where GRUB keeps its configuration, relative to the file system it was installed to.
GRUB_PATHS = ("/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg")
#: BLS entry directories: on $BOOT (ESP, XBOOTLDR, a separate /boot), and /boot on a root file system.
BLS_DIRS = ("/loader/entries", "/boot/loader/entries")
LINKS = (("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img"))
#: Configuration files are small; a larger one is not what we look for.
MAX_CONFIG = 4 << 20
MAX_LINKS = 40


class BootEntryError(RuntimeError):
    """No bootable Linux on the disk; the message names every place searched and what was unreadable."""

    def __init__(self, message: str, searched: list[str], unreadable: list[str]) -> None:
        super().__init__(message)
        self.searched = searched
        self.unreadable = unreadable


class DiskVolume:
    """A partition (or the whole disk, when it has no table) and what it holds: ``kind`` is what
    `identify` found, ``fs`` its reader if readable, ``problem`` why not if it holds something else."""

    def __init__(
        self,
        name: str,
        partition: Partition | None,
        kind: str | None,
        fs: FileSystem | None,
        problem: str = "",
    ) -> None:
        self.name = name  # "p2", or "disk"
        self.partition = partition
        self.kind = kind
        self.fs = fs
        self.problem = problem

    @property
    def device(self) -> str:
        """Its name in GRUB: ``hd0,gpt2``, ``hd0,msdos5``, or ``hd0``."""
        if self.partition is None:
            return "hd0"
        scheme = "msdos" if self.partition.type.startswith("0x") else "gpt"
        return f"hd0,{scheme}{self.partition.index}"

    def __str__(self) -> str:
        return f"{self.name} ({self.kind or 'no file system'})"

    __repr__ = __str__


class FileRef(NamedTuple):
    """A file on one of the disk's volumes."""

    volume: DiskVolume
    path: str

    def read(self, limit: int = MAX_READ) -> bytes:
        fs = self.volume.fs
        if fs is None:
            raise FsError(f"{self}: {self.volume} cannot be read")
        return fs.read(self.path, limit)

    def __str__(self) -> str:
        return f"{self.path} on {self.volume.name}"


class BootEntry:
    """What to kexec: the kernel, the initrds (concatenated in order), and the command line; ``method``
    is "bls", "grub", "links" or "override", ``source`` where it was found (an entry file, a grub.cfg
    line), ``overridden`` what the caller replaced."""

    def __init__(
        self, method: str, title: str, kernel: FileRef, initrds: list[FileRef], cmdline: str, source: str = ""
    ) -> None:
        self.method = method
        self.title = title
        self.kernel = kernel
        self.initrds = initrds
        self.cmdline = cmdline
        self.source = source
        self.overridden: list[str] = []

    def read_kernel(self, limit: int = MAX_READ) -> bytes:
        return self.kernel.read(limit)

    def read_initrd(self, limit: int = MAX_READ) -> bytes:
        """The initrds one after the other, each padded to 4 bytes as boot loaders load them."""
        out = bytearray()
        for ref in self.initrds:
            out += ref.read(limit - len(out))
            out += bytes(-len(out) % 4)
        return bytes(out)

    def describe(self) -> str:
        initrd = ", ".join(str(ref) for ref in self.initrds) or "none"
        extra = f"; overridden: {', '.join(self.overridden)}" if self.overridden else ""
        return (
            f"{self.method} entry {self.title!r} ({self.source}): kernel {self.kernel}, initrd {initrd}, "
            f"cmdline {self.cmdline!r}{extra}"
        )

    __repr__ = describe


def scan(dev: BinaryIO, sector_size: int | None = None) -> list[DiskVolume]:
    """Every partition of the disk (or the disk itself) and its file system, if readable."""
    disk = Volume(dev)
    try:
        table = read_table(disk, sector_size)
    except PartitionError as exc:
        raise BootEntryError(f"the partition table cannot be read: {exc}", [], []) from exc
    if table is None:
        return [_open("disk", None, disk)]
    volumes = []
    for part in table.partitions:
        if part.type.startswith("0x") and int(part.type, 16) in MBR_EXTENDED:
            continue  # the container of the logical partitions holds no file system
        if part.start + part.size > disk.size:
            volumes.append(DiskVolume(f"p{part.index}", part, None, None, "extends past the end of the disk"))
            continue
        volumes.append(_open(f"p{part.index}", part, Volume(dev, part.start, part.size)))
    return volumes


def _open(name: str, part: Partition | None, volume: Volume) -> DiskVolume:
    kind = identify(volume)
    try:
        fs = open_fs(volume)
    except FsError as exc:
        return DiskVolume(name, part, kind, None, f"cannot be read: {exc}")
    problem = ""
    if fs is None and kind is not None:
        problem = DESCRIPTIONS.get(kind, f"{kind}, which is not supported")
    elif fs is None and part is not None:
        problem = f"{part.kind}, no file system"
    return DiskVolume(name, part, kind, fs, problem)


def find_boot_entry(
    volumes: list[DiskVolume],
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
) -> BootEntry:
    """The entry the image's boot loader would boot by default, with the caller's overrides applied.

    An override path is ``/path`` (looked up on the volume of the found kernel, else on the root file
    system, else on the first volume that has it) or ``p2:/path``; ``initrd=""`` boots without one.
    BootEntryError when nothing is found and the kernel is not overridden."""
    finder = _Finder(volumes)
    try:
        entry: BootEntry | None = finder.find()
    except BootEntryError:
        if kernel is None:
            raise
        entry = None
    overridden = []
    if kernel is not None:
        ref = finder.override_path(kernel, entry)
        if entry is None:
            root_cmdline = finder.root_cmdline() or ""
            entry = BootEntry("override", "", ref, [], root_cmdline, "the caller's kernel")
        entry.kernel = ref
        overridden.append(f"kernel {ref}")
    assert entry is not None
    if initrd is not None:
        entry.initrds = [finder.override_path(initrd, entry)] if initrd else []
        overridden.append(f"initrd {', '.join(map(str, entry.initrds)) or 'none'}")
    if cmdline is not None:
        entry.cmdline = cmdline
        overridden.append("cmdline")
    entry.overridden = overridden
    return entry


def find_on_disk(dev: BinaryIO, **overrides: str | None) -> BootEntry:
    """`scan` then `find_boot_entry`."""
    return find_boot_entry(scan(dev), **overrides)


class _Finder(grubcfg.GrubHost):
    def __init__(self, volumes: list[DiskVolume]) -> None:
        self.volumes = volumes
        self.readable = [v for v in volumes if v.fs is not None]
        self.searched: list[str] = []
        self._bls: list[BlsEntry] | None = None

    def find(self) -> BootEntry:
        for method in (self._find_bls, self._find_grub, self._find_links):
            entry = method()
            if entry is not None:
                return entry
        unreadable = [f"{v.name} is {v.problem}" for v in self.volumes if v.problem]
        if self.searched:
            message = "no bootable Linux found: searched " + "; ".join(self.searched)
        else:
            message = "no bootable Linux found: no file system on the disk can be read"
        if unreadable:
            message += "; could not read: " + "; ".join(unreadable)
        raise BootEntryError(message, self.searched, unreadable)

    # Files.
    def _fs_read(self, volume: DiskVolume, path: str, limit: int = MAX_CONFIG) -> bytes | None:
        if volume.fs is None:
            return None
        try:
            return volume.fs.read(path, limit)
        except FsError:
            return None

    def _by_device(self, device: str) -> DiskVolume | None:
        device = device.strip()
        for volume in self.volumes:
            if volume.device == device:
                return volume
        if "," in device:  # "hd0,2": a partition number without the table's name
            number = device.rsplit(",", 1)[1].removeprefix("gpt").removeprefix("msdos")
            for volume in self.volumes:
                if volume.partition and str(volume.partition.index) == number:
                    return volume
        return None

    # GrubHost.
    def read(self, device: str, path: str) -> bytes | None:
        volume = self._by_device(device)
        return self._fs_read(volume, path) if volume else None

    def size(self, device: str, path: str) -> int | None:
        volume = self._by_device(device)
        if volume is None or volume.fs is None:
            return None
        try:
            return volume.fs.size(path)
        except FsError:
            return None

    def search(self, kind: str, value: str) -> str | None:
        for volume in self.readable:
            fs = volume.fs
            assert fs is not None
            if (
                (kind == "fs_uuid" and fs.uuid.lower() == value.lower())
                or (kind == "fs_label" and fs.label == value)
                or (kind == "file" and fs.exists(value))
            ):
                return volume.device
        return None

    def bls_entries(self, env: dict[str, str]) -> list[grubcfg.MenuItem]:
        return [
            grubcfg.MenuItem(e.title or e.id, e.id, "bls", bls=e, where=str(e.where)) for e in self._all_bls()
        ]

    # 1. Boot Loader Specification.
    def _all_bls(self) -> list[BlsEntry]:
        if self._bls is not None:
            return self._bls
        found: list[BlsEntry] = []
        ordered = sorted(
            self.readable, key=lambda v: not (v.partition and (v.partition.is_esp or v.partition.is_xbootldr))
        )
        for volume in ordered:
            fs = volume.fs
            assert fs is not None
            for directory in BLS_DIRS:
                if not fs.is_dir(directory):
                    self.searched.append(f"{directory} on {volume}: not found")
                    continue
                names = [n for n in fs.listdir(directory) if n.endswith(".conf")]
                usable = 0
                for name in names:
                    path = f"{directory}/{name}"
                    data = self._fs_read(volume, path)
                    if data is None:
                        continue
                    entry = parse_bls(data.decode("utf-8", "replace"), name, FileRef(volume, path))
                    if entry.linux:  # an "efi" (or a "uki") entry cannot be kexeced
                        found.append(entry)
                        usable += 1
                if not usable:
                    self.searched.append(f"{directory} on {volume}: {len(names)} entries, none with linux")
        self._bls = sort_bls(found)
        return self._bls

    def _bls_default(self) -> str:
        """loader.conf's ``default`` (a glob over entry ids), else a grubenv's ``saved_entry``."""
        for volume in self.readable:
            for path in ("/loader/loader.conf", "/boot/loader/loader.conf"):
                data = self._fs_read(volume, path)
                for line in (data or b"").decode("utf-8", "replace").splitlines():
                    key, _, value = line.strip().partition(" ")
                    if key == "default" and value.strip() and not value.strip().startswith("@"):
                        return value.strip()
        return self._grubenv().get("saved_entry", "")

    def _grubenv(self) -> dict[str, str]:
        """The first grubenv on the disk: GRUB's saved default, and Fedora's ``kernelopts``."""
        for volume in self.readable:
            for path in ("/grub2/grubenv", "/boot/grub2/grubenv", "/grub/grubenv", "/boot/grub/grubenv"):
                data = self._fs_read(volume, path, 65536)
                if data is not None:
                    return grubcfg.parse_grubenv(data)
        return {}

    def _find_bls(self) -> BootEntry | None:
        entries = self._all_bls()
        if not entries:
            return None
        pattern = self._bls_default()
        chosen = entries[0]
        if pattern:
            for entry in entries:
                if fnmatch.fnmatchcase(entry.id, pattern) or fnmatch.fnmatchcase(f"{entry.id}.conf", pattern):
                    chosen = entry
                    break
        return self._bls_boot(chosen, self._grubenv(), "bls")

    def _bls_boot(self, entry: BlsEntry, env: dict[str, str], method: str) -> BootEntry | None:
        where = entry.where
        assert isinstance(where, FileRef)
        volume = where.volume
        base = "/boot" if where.path.startswith("/boot/loader/") else ""
        kernel = self._bls_file(volume, entry.linux, base)
        if kernel is None:
            self.searched.append(f"{entry.where}: its linux {entry.linux} is missing")
            return None
        initrds = []
        for path in entry.initrds:
            ref = self._bls_file(volume, path, base)
            if ref is None:
                self.searched.append(f"{entry.where}: its initrd {path} is missing")
                return None
            initrds.append(ref)
        options = " ".join(entry.options)
        if "$" in options and env:  # Fedora's "$kernelopts" from grubenv
            options = " ".join(_expand_env(word, env) for word in options.split())
        return BootEntry(method, entry.title or entry.id, kernel, initrds, options, str(entry.where))

    def _bls_file(self, volume: DiskVolume, path: str, base: str) -> FileRef | None:
        """An entry's path: relative to the file system it lies on ($BOOT); for /boot/loader/entries on a
        root file system, relative to /boot if it is not found at the root."""
        fs = volume.fs
        assert fs is not None
        path = "/" + path.lstrip("/")
        for candidate in (path, base + path) if base else (path,):
            if fs.exists(candidate):
                return FileRef(volume, candidate)
        return None

    # 2. GRUB.
    def _grub_configs(self) -> list[tuple[DiskVolume, str]]:
        configs: list[tuple[DiskVolume, str]] = []
        for volume in self.readable:
            fs = volume.fs
            assert fs is not None
            paths = [p for p in GRUB_PATHS if fs.exists(p)]
            if fs.is_dir("/EFI"):
                for vendor in fs.listdir("/EFI"):
                    if fs.exists(f"/EFI/{vendor}/grub.cfg"):
                        paths.append(f"/EFI/{vendor}/grub.cfg")
            if not paths:
                self.searched.append(f"{', '.join(GRUB_PATHS)}, /EFI/*/grub.cfg on {volume}: not found")
            configs.extend((volume, path) for path in paths)
        return configs

    def _find_grub(self) -> BootEntry | None:
        for volume, path in self._grub_configs():
            try:
                choice = grubcfg.default_entry(self, volume.device, path)
            except (grubcfg.GrubError, FsError) as exc:
                self.searched.append(f"{path} on {volume}: {exc}")
                continue
            entry = self._grub_boot(choice, volume, path)
            if entry is not None:
                return entry
        return None

    def _grub_boot(self, choice: grubcfg.Choice, volume: DiskVolume, path: str) -> BootEntry | None:
        where = choice.where or f"{path} on {volume.device}"
        for each in self.volumes:  # GRUB's device names are the image's; ours are shorter
            where = where.replace(f" on {each.device}", f" on {each.name}")
        if isinstance(choice.bls, BlsEntry):
            entry = self._bls_boot(choice.bls, choice.env, "bls")
            if entry is not None:
                entry.source = f"{entry.source}, chosen by {path} on {volume.name} (blscfg)"
            return entry
        assert choice.kernel is not None
        kernel = self._grub_file(choice.kernel)
        if kernel is None:
            self.searched.append(
                f"{path} on {volume}: its kernel {choice.kernel[1]} on {choice.kernel[0]} is missing"
            )
            return None
        initrds = []
        for device, file in choice.initrds:
            ref = self._grub_file((device, file))
            if ref is None:
                self.searched.append(f"{path} on {volume}: its initrd {file} on {device} is missing")
                return None
            initrds.append(ref)
        return BootEntry("grub", choice.title, kernel, initrds, choice.cmdline, where)

    def _grub_file(self, place: tuple[str, str]) -> FileRef | None:
        volume = self._by_device(place[0])
        if volume is None or volume.fs is None or not volume.fs.exists(place[1]):
            return None
        return FileRef(volume, place[1])

    # 3. /vmlinuz and /initrd.img, root= from /etc/fstab.
    def _roots(self) -> list[tuple[DiskVolume, list[list[str]]]]:
        roots = []
        for volume in self.readable:
            data = self._fs_read(volume, "/etc/fstab")
            if data is None:
                self.searched.append(f"/etc/fstab on {volume}: not found")
                continue
            roots.append((volume, _fstab(data.decode("utf-8", "replace"))))
        return roots

    def _find_links(self) -> BootEntry | None:
        for root, fstab in self._roots():
            mounts = {"/": root}
            for spec, mountpoint, *_ in fstab:
                target = self._volume_for_spec(spec)
                if mountpoint != "/" and target is not None:
                    mounts[mountpoint] = target
            for kernel_path, initrd_path in LINKS:
                kernel = self._namespace_file(mounts, kernel_path)
                if kernel is None:
                    self.searched.append(f"{kernel_path} on {root}: missing")
                    continue
                initrd = self._namespace_file(mounts, initrd_path)
                root_spec = next((row[0] for row in fstab if row[1] == "/"), None)
                cmdline = f"root={root_spec or self._spec_of(root)} ro"
                return BootEntry(
                    "links",
                    kernel_path,
                    kernel,
                    [initrd] if initrd else [],
                    cmdline,
                    f"{kernel_path} on {root.name}, root from /etc/fstab",
                )
        return None

    def _volume_for_spec(self, spec: str) -> DiskVolume | None:
        """The volume an fstab (or root=) device spec names on this disk, if any."""
        key, _, value = spec.partition("=")
        by_path = {"/dev/disk/by-uuid/": "UUID", "/dev/disk/by-label/": "LABEL",
                   "/dev/disk/by-partuuid/": "PARTUUID", "/dev/disk/by-partlabel/": "PARTLABEL"}  # fmt: skip
        for prefix, name in by_path.items():
            if spec.startswith(prefix):
                key, value = name, spec[len(prefix) :]
        for volume in self.volumes:
            fs, part = volume.fs, volume.partition
            if (
                (key == "UUID" and fs and fs.uuid.lower() == value.lower())
                or (key == "LABEL" and fs and fs.label == value)
                or (key == "PARTUUID" and part and part.partuuid == value.lower())
                or (key == "PARTLABEL" and part and part.name == value)
            ):
                return volume
        number = _partition_number(spec)
        if number is not None:
            for volume in self.volumes:
                if volume.partition and volume.partition.index == number:
                    return volume
        return None

    def _spec_of(self, volume: DiskVolume) -> str:
        if volume.partition is not None:
            return f"PARTUUID={volume.partition.partuuid}"
        assert volume.fs is not None
        return f"UUID={volume.fs.uuid}"

    def _namespace_file(self, mounts: dict[str, DiskVolume], path: str) -> FileRef | None:
        """A path in the image's own file tree (its fstab's mounts), links followed across mounts."""
        for _ in range(MAX_LINKS):
            mountpoint = max(
                (m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len
            )
            volume = mounts[mountpoint]
            fs = volume.fs
            assert fs is not None
            rel = "/" + path[len(mountpoint.rstrip("/")) :].lstrip("/")
            parts = [p for p in rel.split("/") if p]
            for k in range(1, len(parts) + 1):
                partial = "/" + "/".join(parts[:k])
                if not fs.is_link(partial):
                    continue
                target = fs.readlink(partial)
                here = mountpoint.rstrip("/") + "/" + "/".join(parts[: k - 1])
                joined = target if target.startswith("/") else here.rstrip("/") + "/" + target
                path = _normalize(joined + ("/" + "/".join(parts[k:]) if parts[k:] else ""))
                break
            else:
                try:
                    node = fs.resolve(rel)
                except FsError:
                    return None
                return FileRef(volume, rel) if node.is_file else None
        return None

    # Overrides.
    def root_cmdline(self) -> str | None:
        for root, fstab in self._roots():
            spec = next((row[0] for row in fstab if row[1] == "/"), None)
            return f"root={spec or self._spec_of(root)} ro"
        return None

    def override_path(self, given: str, entry: BootEntry | None) -> FileRef:
        name, sep, path = given.partition(":")
        if sep and (name == "disk" or (name[:1] == "p" and name[1:].isdigit())):
            volume = next((v for v in self.volumes if v.name == name), None)
            if volume is None or volume.fs is None or not volume.fs.exists(path):
                raise BootEntryError(f"override {given!r}: not found", [], [])
            return FileRef(volume, path)
        candidates = [entry.kernel.volume] if entry else []
        candidates += [v for v, _ in self._roots()] + self.readable
        for volume in candidates:
            if volume.fs is not None and volume.fs.exists(given):
                return FileRef(volume, given)
        raise BootEntryError(f"override {given!r}: no volume has it", [], [])


def _partition_number(spec: str) -> int | None:
    """N of a kernel device name of a partition: /dev/sda2, /dev/vda5, /dev/nvme0n1p2, /dev/mmcblk0p1."""
    if not spec.startswith("/dev/"):
        return None
    name = spec[5:]
    digits = len(name) - len(name.rstrip("0123456789"))
    if not digits or digits == len(name):
        return None
    stem = name[:-digits]
    if stem.startswith(("sd", "vd", "hd", "xvd")) and stem.isalpha():
        return int(name[-digits:])
    if stem.endswith("p") and stem[:-1][-1:].isdigit():  # nvme0n1p2, mmcblk0p1
        return int(name[-digits:])
    return None


def _expand_env(word: str, env: dict[str, str]) -> str:
    if word.startswith("${") and word.endswith("}"):
        return env.get(word[2:-1], "")
    if word.startswith("$"):
        return env.get(word[1:], "")
    return word


def _fstab(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        fields = line.split()
        if len(fields) >= 2:
            rows.append([f.replace("\\040", " ") for f in fields])
    return rows


def _normalize(path: str) -> str:
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/" + "/".join(out)
