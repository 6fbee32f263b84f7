"""Real Debian distributions for the lab: bootable whole-disk images built from Debian packages only.

The busybox test OS (`rhaas.lab.images`) proves that a node came up; a customer of a bare-metal cloud
runs a distribution. This module builds one, as a raw disk image that boots on its own in QEMU, under BIOS
or UEFI firmware, and on any node the image is written to:

- the root file system comes from ``mmdebstrap`` (variant ``minbase``) with systemd, udev, a Debian
  kernel, an initramfs builder (initramfs-tools or dracut, generic rather than host-only: the build's
  chroot says nothing of a node's drivers), cloud-init, openssh-server, sudo and systemd-networkd (what
  cloud-init's Debian configuration renders network settings to when ifupdown is absent);
- the disk is GPT: a 1 MiB BIOS boot partition, a 32 MiB EFI system partition, then one ext4 root
  partition filling the rest. The root file system is made from the build directory with ``mkfs.ext4
  -d`` at the partition's offset, with a UUID derived from the build's key, so no loop device and no
  mount is needed;
- GRUB for BIOS comes from this machine's ``grub-pc-bin``: its modules are copied into the root's
  ``/boot/grub``, ``grub-mkimage`` makes the core image (which finds the root by UUID), and
  `install_bios_boot` writes the boot sector and the core image into the BIOS boot partition the way
  ``grub-bios-setup`` lays them out (that tool needs to resolve the image's disk among this machine's
  devices, which a plain file is not). GRUB for UEFI comes from ``grub-efi-amd64-bin``: one
  ``grub-mkimage`` file at the removable-media path ``EFI/BOOT/BOOTX64.EFI`` of the ESP (made with
  ``mkfs.fat`` and ``mcopy``), which UEFI firmware runs from a disk no boot entry names. Both find the root
  by UUID and read the same ``grub.cfg``, which has the shape Debian's ``grub-mkconfig`` writes;
- cloud-init looks only for a NoCloud seed (``datasource_list: [NoCloud, None]``), so a boot without one
  does not wait for network metadata services. Debian's own cloud-init configuration makes the default
  user ``debian`` with password-less sudo; root's password is locked, SSH host keys are made at first
  boot, ``/etc/hostname`` and ``/etc/machine-id`` are empty so every copy gets its own.

Two flavours, so that two customers really run different operating systems: ``bookworm`` (Debian 12) and
``trixie`` (Debian 13). bookworm's initramfs is made by initramfs-tools, trixie's by dracut (as Fedora's,
RHEL's and SUSE's are). Each with one of two kernels (`KERNELS`): Debian's cloud kernel (the default:
virtio and NVMe, all a ``virtio`` lab node needs) or its generic one, with the drivers of the lab's
server profiles (e1000, e1000e, MegaRAID) and of real servers; it takes the bookworm image from about 460
to 760 MiB of data.

Builds are cached under ``<cache>/distro/<key>/``: ``disk.raw`` (sparse), the image's ``vmlinuz`` and
``initrd.img`` (for a deploy that starts them with kexec) and ``manifest.json``. The key is a hash of the
builder's version, the flavour, the image's configuration and apt sources, and the exact versions apt
reports for the image's top-level packages (the versioned kernel its meta package depends on, systemd,
cloud-init, openssh-server, the initramfs builder) and of this machine's GRUB packages. Each release's
package lists are kept apart from this machine's apt, under ``<cache>/distro/apt/<release>/``, so that
computing a key is an ``apt-cache`` call: a cache hit costs well under a second. The lists are fetched
when missing, before every build (a miss), and when asked (``refresh=True``).

Command line: ``rhaas lab image build debian [--flavour bookworm|trixie] [--kernel cloud|generic] --out FILE
[--json]``.
This module only builds files; it starts no machine (see `rhaas.lab.qemu`).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rhaas.imaging import ImageBuildError, run
from rhaas.imaging.cache import cache_dir, locked, read_manifest, write_manifest
from rhaas.imaging.debs import parse_show

#: Bump when the image's layout changes in a way the configuration texts below do not show.
_BUILDER_VERSION = 3
MIB = 1024 * 1024
SECTOR = 512
#: The disk's virtual size; the file is sparse, its data is what the packages take.
DISK_BYTES = 2048 * MIB
#: The BIOS boot partition (GRUB's core image for BIOS): 1 MiB at 1 MiB. Then the EFI system partition
#: (GRUB for UEFI, at the removable-media path firmware looks for): 32 MiB of FAT. The root follows and
#: ends 1 MiB before the end of the disk, which leaves room for the backup GPT.
BIOS_BOOT_START = MIB
BIOS_BOOT_BYTES = MIB
ESP_START = BIOS_BOOT_START + BIOS_BOOT_BYTES
ESP_BYTES = 32 * MIB
ROOT_START = ESP_START + ESP_BYTES
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#: Where UEFI firmware finds a disk's boot loader when no boot entry names it (the removable-media path).
EFI_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
GRUB_PACKAGE = "grub-pc-bin"
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
GRUB_EFI_PACKAGE = "grub-efi-amd64-bin"
#: The kernels an image may have: Debian's cloud kernel (virtio, NVMe and the clouds' NICs: what a lab
#: node of profile ``virtio`` has) or its generic one (every NIC and disk driver Debian builds, for nodes
#: that look like servers: Intel NICs, MegaRAID). Their meta packages, which follow new kernels.
KERNELS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
DEFAULT_KERNEL = "cloud"
#: The kernel command line: the lab reads the serial console.
CMDLINE = "ro console=ttyS0"
#: The image's top-level packages besides the kernel and the initramfs builder, whose versions key the
#: cache (`keyed_packages`).
KEYED_PACKAGES = ("systemd", "cloud-init", "openssh-server")
#: What is installed on top of ``minbase`` (besides the kernel and the initramfs builder).
INCLUDE = (
    "systemd-sysv", "udev", "dbus", "iproute2", "systemd-resolved", "cloud-init", "openssh-server",
    "sudo",
    "e2fsprogs",  # the root's fsck and cloud-init's resize2fs; trixie's minbase no longer has it
)  # fmt: skip
INITRAMFS_TOOLS, DRACUT = "initramfs-tools", "dracut"
#: Documentation and translations are left out of the image (copyright files stay), to keep it small.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)

#: cloud-init: only a NoCloud seed (a ``cidata`` disk, or ``ds=nocloud`` on the command line), else none.
#: Sorted after Debian's ``90_dpkg.cfg``, which lists every data source.
CLOUD_CFG = """\
# Written by rhaas's lab image builder: look for a NoCloud seed only, so that a boot without one does not
# wait for network metadata services.
datasource_list: [NoCloud, None]
manage_etc_hosts: true
# The image has no locales package: C.UTF-8 is built into the C library.
locale: C.UTF-8
"""
#: MODULES=most: the image is built in a chroot, where MODULES=dep would guess the build machine's drivers.
INITRAMFS_CONF = """\
# Written by rhaas's lab image builder: the image's disk driver is not the build machine's.
MODULES=most
"""
#: dracut's generic (not host-only) initramfs, for the same reason; zstd, as initramfs-tools compresses.
DRACUT_CONF = """\
# Written by rhaas's lab image builder: the image's disk driver is not the build machine's.
hostonly="no"
compress="zstd"
"""


class InitramfsBuilder(NamedTuple):
    """How an image's initramfs is made: the builder's configuration file in the image, its text, and the
    packages it needs installed."""

    conf: str
    text: str
    packages: tuple[str, ...]


INITRAMFS_BUILDERS = {
    INITRAMFS_TOOLS: InitramfsBuilder(
        "/etc/initramfs-tools/conf.d/rhaas-lab", INITRAMFS_CONF, (INITRAMFS_TOOLS,)
    ),
    DRACUT: InitramfsBuilder("/etc/dracut.conf.d/rhaas-lab.conf", DRACUT_CONF, (DRACUT, "zstd")),
}
HOSTS = """\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
"""

#: Early configuration built into GRUB's core image: find the root file system by its UUID.
_GRUB_EARLY = "search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
_GRUB_CORE_MODULES = ("biosdisk", "part_gpt", "ext2", "search")
_GRUB_EFI_CORE_MODULES = ("part_gpt", "ext2", "search")
#: The shape of what Debian's grub-mkconfig (``00_header``, ``10_linux``) writes, for one kernel.
_GRUB_CFG = """\
#
# DO NOT EDIT THIS FILE
#
# It was written by rhaas's lab image builder in the shape grub-mkconfig writes.
#

### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  load_env
fi
set default="0"
if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
export menuentry_id_option
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout_style=hidden
set timeout=0
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/10_linux ###
menuentry '{title}' {options} {{
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root {uuid}
	echo	'Loading Linux {release} ...'
	linux	/boot/vmlinuz-{release} root=UUID={uuid} {cmdline}
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-{release}
}}
### END /etc/grub.d/10_linux ###
"""
_KERNEL_DEP_RE = re.compile(r"\s*(linux-image-\d[\w.+-]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Flavour:
    """One distribution the builder makes: a Debian release and a kernel meta package."""

    name: str
    release: str
    title: str
    kernel_meta: str = "linux-image-cloud-amd64"
    #: What makes the image's initramfs: `INITRAMFS_TOOLS` (Debian's default) or `DRACUT`.
    initramfs: str = INITRAMFS_TOOLS


FLAVOURS = {
    "bookworm": Flavour("bookworm", "bookworm", "Debian GNU/Linux 12 (bookworm)"),
    # dracut, as Fedora, RHEL and SUSE images have: the way back must ride in both kinds of initramfs.
    "trixie": Flavour("trixie", "trixie", "Debian GNU/Linux 13 (trixie)", initramfs=DRACUT),
}
DEFAULT_FLAVOUR = "bookworm"


@dataclass(frozen=True)
class DistroImage:
    """A built whole-disk image: ``disk`` (raw, sparse) and what is known about it (``manifest``)."""

    flavour: str
    release: str
    key: str
    disk: Path
    #: The image's kernel and initrd, copied beside the disk: what a kexec deploy starts
    #: (``rhaas image register --kernel --initrd --disk``), with ``boot_entry["cmdline"]``.
    kernel: Path
    initrd: Path
    manifest: Path
    #: `KERNELS`: ``cloud`` or ``generic``.
    kernel_flavour: str
    kernel_package: str
    kernel_version: str
    kernel_release: str
    root_uuid: str
    packages: dict[str, str]
    virtual_bytes: int
    data_bytes: int
    build_seconds: float
    boot_entry: dict[str, str]
    cached: bool

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out


# --- package versions ------------------------------------------------------------------------------------


class ReleaseApt:
    """apt for one Debian release, with package lists of its own under the cache.

    This machine's apt knows its own release only; a separate state lets the builder read another
    release's versions (and this one's, without this machine's pins or installed packages) with
    ``apt-cache``.
    """

    def __init__(self, release: str, root: Path, mirror: str, security_mirror: str) -> None:
        self.release = release
        self.dir = root / "apt" / release
        self.sources = sources_lines(release, mirror, security_mirror)

    def _config(self) -> Path:
        conf = self.dir / "apt.conf"
        text = "\n".join([
            f'Dir::State::Lists "{self.dir}/lists";',
            f'Dir::State::status "{self.dir}/status";',
            f'Dir::Cache "{self.dir}/cache";',
            # A binary cache, even where this machine's apt keeps none: a key costs one apt-cache call.
            'Dir::Cache::pkgcache "pkgcache.bin";',
            'Dir::Cache::srcpkgcache "srcpkgcache.bin";',
            f'Dir::Etc::SourceList "{self.dir}/sources.list";',
            f'Dir::Etc::SourceParts "{self.dir}/sources.list.d";',
            f'Dir::Etc::Preferences "{self.dir}/preferences";',
            f'Dir::Etc::PreferencesParts "{self.dir}/preferences.d";',
            'APT::Architectures { "amd64"; };',
            'APT::Sandbox::User "root";',
            'Acquire::Languages "none";',
        ]) + "\n"  # fmt: skip
        sources = "".join(f"deb [signed-by={KEYRING}] {line}\n" for line in self.sources)
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for path, content in ((conf, text), (self.dir / "sources.list", sources)):
            if not path.is_file() or path.read_text() != content:
                path.write_text(content)
        for empty in ("status", "preferences"):
            (self.dir / empty).touch()
        return conf

    def has_lists(self) -> bool:
        """Whether the release's lists were fetched from the mirror now configured."""
        for line in self.sources:
            uri, suite = line.split()[:2]
            prefix = re.sub(r"^[a-z]+://", "", uri).rstrip("/").replace("/", "_") + f"_dists_{suite}_"
            if not any((self.dir / "lists").glob(f"{glob.escape(prefix)}*Packages*")):
                return False
        return True

    def update(self) -> None:
        """Fetch the release's package lists (``apt-get update`` on this state only)."""
        with locked(self.dir):
            run(["apt-get", "-c", str(self._config()), "-q", "update"])

    def show(self, *names: str) -> dict[str, dict[str, str]]:
        """The candidate version's control fields of each package (`rhaas.imaging.debs.apt_show`)."""
        found = parse_show(run(["apt-cache", "-c", str(self._config()), "show", "--no-all-versions", *names]))
        missing = [n for n in names if n not in found]
        if missing:
            raise ImageBuildError(f"{self.release} has no {', '.join(missing)}")
        return found


def sources_lines(release: str, mirror: str, security_mirror: str) -> list[str]:
    """The image's apt sources (without ``deb``): the release, its updates and its security archive."""
    return [
        f"{mirror} {release} main",
        f"{mirror} {release}-updates main",
        f"{security_mirror} {release}-security main",
    ]


def kernel_dependency(meta: str, fields: dict[str, str], apt: ReleaseApt) -> tuple[str, str]:
    """The versioned kernel package ``meta`` depends on, and its version."""
    depends = fields.get("Depends", "")
    for clause in depends.split(","):
        for alternative in clause.split("|"):
            found = _KERNEL_DEP_RE.fullmatch(alternative)
            if found:
                name, version = found.groups()
                return name, version or apt.show(name)[name]["Version"]
    raise ImageBuildError(f"{meta} depends on no versioned linux-image package: {depends!r}")


def host_package_version(name: str) -> str:
    """The version of ``name`` installed on this machine (the image's GRUB comes from here)."""
    try:
        out = run(["dpkg-query", "-W", "-f=${Status}\t${Version}", name])
    except ImageBuildError as exc:
        raise ImageBuildError(f"{name} is not installed: apt-get install {name}") from exc
    status, _, version = out.partition("\t")
    if not status.endswith(" installed"):
        raise ImageBuildError(f"{name} is not installed: apt-get install {name}")
    return version


def keyed_packages(flavour: Flavour) -> tuple[str, ...]:
    """The image's top-level packages besides the kernel: `KEYED_PACKAGES` and its initramfs builder."""
    return (*KEYED_PACKAGES, flavour.initramfs)


def resolve_packages(flavour: Flavour, apt: ReleaseApt) -> dict[str, str]:
    """The exact versions of the image's top-level packages, as apt reports them for its release."""
    fields = apt.show(flavour.kernel_meta, *keyed_packages(flavour))
    kernel, kernel_version = kernel_dependency(flavour.kernel_meta, fields[flavour.kernel_meta], apt)
    versions = {flavour.kernel_meta: fields[flavour.kernel_meta]["Version"], kernel: kernel_version}
    versions.update({name: fields[name]["Version"] for name in keyed_packages(flavour)})
    for grub in (GRUB_PACKAGE, GRUB_EFI_PACKAGE):
        versions[grub] = host_package_version(grub)
    return versions


def cache_key(flavour: Flavour, packages: dict[str, str], sources: Sequence[str] = ()) -> str:
    """The build's cache key: builder version, flavour, configuration texts, package versions and the
    image's apt sources."""
    initramfs_conf = INITRAMFS_BUILDERS[flavour.initramfs].text
    config = "\0".join([CLOUD_CFG, initramfs_conf, _GRUB_EARLY, _GRUB_CFG, CMDLINE, HOSTS, *INCLUDE,
                        *DPKG_OPTIONS, *_GRUB_CORE_MODULES, *_GRUB_EFI_CORE_MODULES, str(DISK_BYTES),
                        str(ESP_BYTES)])  # fmt: skip
    data = {
        "builder": _BUILDER_VERSION,
        "flavour": dataclasses.asdict(flavour),
        "packages": packages,
        "config": hashlib.sha256(config.encode()).hexdigest(),
        "sources": list(sources),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def root_uuid_for(key: str) -> str:
    """The root file system's UUID: fixed for a key, different between keys."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rhaas-lab-distro:{key}"))


# --- the root file system --------------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from this process's mount table), deepest first."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_build_dir(path: Path) -> None:
    """Delete a build directory, after unmounting anything a failed mmdebstrap left mounted in it.

    A bind mount of this machine's ``/dev`` or ``/sys`` left in the chroot must never be recursed into:
    if a mount remains, the directory is left in place and the error says so.
    """
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = _mounts_under(path)
    if left:
        raise ImageBuildError(f"mounts left under {path} ({', '.join(left)}): not deleting it")
    shutil.rmtree(path, ignore_errors=True)


def mmdebstrap_command(flavour: Flavour, rootdir: Path, mirror: str, security: str) -> list[str]:
    """The ``mmdebstrap`` command that makes the image's root file system in ``rootdir``."""
    builder = INITRAMFS_BUILDERS[flavour.initramfs]
    # Before any package: the kernel's postinst makes the initramfs with what this file says.
    conf = builder.conf
    setup = f'mkdir -p "$1{os.path.dirname(conf)}" && printf %s {shlex.quote(builder.text)} > "$1{conf}"'
    cmd = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt={opt}" for opt in DPKG_OPTIONS),
        f"--setup-hook={setup}",
        # The kernel's meta package, as on an installed system: upgrades follow new kernels.
        f"--include={','.join([*INCLUDE, *builder.packages, flavour.kernel_meta])}",
        # cloud-init renders network settings for systemd-networkd when ifupdown is absent; Debian
        # leaves networkd disabled.
        '--customize-hook=chroot "$1" systemctl enable systemd-networkd.service',
        flavour.release, str(rootdir),
    ]  # fmt: skip
    cmd += [f"deb {line}" for line in sources_lines(flavour.release, mirror, security)]
    return cmd


def _run_logged(cmd: Sequence[str], log: Path, say: Say, what: str) -> None:
    """Run a long build step with its output in ``log``; a failure quotes the log's end."""
    with open(log, "ab") as out:
        try:
            done = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False)
        except FileNotFoundError as exc:
            raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-25:]
        raise ImageBuildError(f"{what} failed ({done.returncode}):\n" + "\n".join(tail))
    say(f"{what}: done")


def installed_versions(rootdir: Path, names: Sequence[str]) -> dict[str, str]:
    """The versions of ``names`` installed in the root file system (its own dpkg database)."""
    out = run(
        ["dpkg-query", f"--admindir={rootdir}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\t${Status}\n"]
    )
    found = {}
    for line in out.splitlines():
        name, version, status = line.split("\t")
        if status.endswith(" installed"):
            found[name] = version
    return {name: found[name] for name in names if name in found}


def kernel_release_of(rootdir: Path) -> str:
    """The release (``uname -r``) of the one kernel in the root's ``/boot``."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (rootdir / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one kernel in /boot, found {kernels}")
    release = kernels[0]
    if not (rootdir / "boot" / f"initrd.img-{release}").is_file():
        raise ImageBuildError(f"no initrd.img-{release} in /boot: the kernel's initramfs was not made")
    return release


def grub_cfg(title: str, release: str, root_uuid: str, cmdline: str = CMDLINE) -> str:
    """``/boot/grub/grub.cfg`` for one kernel, in the shape grub-mkconfig writes."""
    classes = "--class debian --class gnu-linux --class gnu --class os"
    options = f"{classes} $menuentry_id_option 'gnulinux-simple-{root_uuid}'"
    return _GRUB_CFG.format(title=title, options=options, release=release, uuid=root_uuid, cmdline=cmdline)


def configure_root(rootdir: Path, flavour: Flavour, root_uuid: str, release: str) -> dict[str, str]:
    """What makes the root a bootable, first-boot-clean system; the default boot entry."""
    etc = rootdir / "etc"
    write_in_root(etc / "fstab", f"# <file system> <mount point> <type> <options> <dump> <pass>\n"
                                 f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")  # fmt: skip
    write_in_root(etc / "hostname", "")  # unset: cloud-init sets it from the seed
    write_in_root(etc / "hosts", HOSTS)
    write_in_root(etc / "machine-id", "")  # made at first boot, different on every copy
    dbus_id = rootdir / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()  # cloud-init makes the host keys at first boot: no two copies share them
    resolv = etc / "resolv.conf"
    if resolv.is_file() and not resolv.is_symlink():
        resolv.write_text("")  # the build machine's resolver means nothing on a node
    write_in_root(etc / "cloud/cloud.cfg.d/99_rhaas_lab.cfg", CLOUD_CFG)
    lock_root_password(etc / "shadow")
    _check_default_user(etc / "cloud/cloud.cfg")
    # Symlinks Debian's kernel package makes; made here if a release stops making them.
    for link, target in (
        ("vmlinuz", f"boot/vmlinuz-{release}"),
        ("initrd.img", f"boot/initrd.img-{release}"),
    ):
        if not (rootdir / link).is_symlink():
            (rootdir / link).symlink_to(target)
    grub = rootdir / "boot/grub"
    for platform in (GRUB_DIR, GRUB_EFI_DIR):  # what grub.cfg's insmod loads, on either firmware
        (grub / platform.name).mkdir(parents=True, exist_ok=True)
        for module in platform.iterdir():
            if module.suffix in (".mod", ".lst", ".img") and module.is_file():
                shutil.copy2(module, grub / platform.name / module.name)
    write_in_root(grub / "grub.cfg", grub_cfg(flavour.title, release, root_uuid))
    return {
        "title": flavour.title,
        "linux": f"/boot/vmlinuz-{release}",
        "initrd": f"/boot/initrd.img-{release}",
        "cmdline": f"root=UUID={root_uuid} {CMDLINE}",
    }


def write_in_root(path: Path, text: str) -> None:
    """Write a file of the image's root. A symlink there is replaced, not followed: its target would be
    a path of this machine."""
    if path.is_symlink():
        path.unlink()
    path.write_text(text)


def lock_root_password(shadow: Path) -> None:
    """Lock root's password (``passwd -l``): a node is reached by SSH key, as the default user."""
    if shadow.is_symlink():
        raise ImageBuildError(f"{shadow} is a symlink: not reading this machine's file through it")
    lines = shadow.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and not fields[1].startswith("!"):
            fields[1] = "!" + fields[1]
            lines[index] = ":".join(fields)
    write_in_root(shadow, "".join(lines))


def _check_default_user(cloud_cfg: Path) -> None:
    """Debian's cloud-init configuration makes user ``debian`` with sudo; the image relies on it."""
    text = cloud_cfg.read_text()
    if not re.search(r"default_user:\s*\n\s+name: debian\b", text) or "NOPASSWD:ALL" not in text:
        raise ImageBuildError(f"{cloud_cfg} no longer makes the default user debian with sudo")


# --- the disk ------------------------------------------------------------------------------------------


def partition_disk(disk: Path, key: str, size: int = DISK_BYTES) -> None:
    """A sparse file of ``size`` bytes with a GPT: the BIOS boot partition, the EFI system partition and
    the root partition."""
    with open(disk, "wb") as out:
        out.truncate(size)
    ids = {
        name: str(uuid.uuid5(uuid.NAMESPACE_URL, f"rhaas-lab-distro:{key}:{name}"))
        for name in ("disk", "bios", "esp", "root")
    }
    root_sectors = (size - ROOT_START - MIB) // SECTOR
    script = (
        f"label: gpt\nlabel-id: {ids['disk']}\nunit: sectors\n"
        f"start={BIOS_BOOT_START // SECTOR}, size={BIOS_BOOT_BYTES // SECTOR}, type={BIOS_BOOT_TYPE}, "
        f'uuid={ids["bios"]}, name="bios-boot"\n'
        f"start={ESP_START // SECTOR}, size={ESP_BYTES // SECTOR}, type={ESP_TYPE}, "
        f'uuid={ids["esp"]}, name="esp"\n'
        f"start={ROOT_START // SECTOR}, size={root_sectors}, type={LINUX_FS_TYPE}, "
        f'uuid={ids["root"]}, name="root"\n'
    )
    done = subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], input=script,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise ImageBuildError(f"sfdisk failed: {done.stderr.strip()}")


def root_partition_bytes(size: int = DISK_BYTES) -> int:
    return size - ROOT_START - MIB


def make_root_fs(disk: Path, rootdir: Path, root_uuid: str, size: int = DISK_BYTES) -> None:
    """ext4 at the root partition's offset, holding ``rootdir``'s files (``mkfs.ext4 -d``).

    GRUB 2.06 reads no file system with ``metadata_csum_seed``; ``orphan_file`` is left out too, so that
    the result does not depend on this machine's ``mke2fs.conf``.
    """
    blocks = root_partition_bytes(size) // 4096
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", "-U", root_uuid,
         "-O", "^metadata_csum_seed,^orphan_file", "-E", f"offset={ROOT_START},nodiscard,root_owner=0:0",
         "-d", str(rootdir), str(disk), str(blocks)])  # fmt: skip


def make_core_image(out: Path, root_uuid: str) -> None:
    """GRUB's core image for BIOS: finds the root by UUID and loads ``/boot/grub/grub.cfg`` from it."""
    early = out.with_suffix(".cfg")
    early.write_text(_GRUB_EARLY.format(uuid=root_uuid))
    run(["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_DIR), "-c", str(early), "-p", "/boot/grub",
         "-o", str(out), *_GRUB_CORE_MODULES])  # fmt: skip


def make_efi_loader(out: Path, root_uuid: str) -> None:
    """GRUB for x86-64 UEFI, one file: finds the root by UUID and loads the same ``/boot/grub/grub.cfg``
    as BIOS GRUB does (its modules are in the root's ``/boot/grub/x86_64-efi``)."""
    early = out.with_suffix(".cfg")
    early.write_text(_GRUB_EARLY.format(uuid=root_uuid))
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", str(GRUB_EFI_DIR), "-c", str(early), "-p", "/boot/grub",
         "-o", str(out), *_GRUB_EFI_CORE_MODULES])  # fmt: skip


def install_esp(disk: Path, loader: Path, key: str) -> None:
    """Make the EFI system partition (FAT, with ``loader`` at `EFI_BOOT_PATH`) and write it into ``disk``
    at `ESP_START`: made as a file with ``mkfs.fat`` and ``mcopy`` (no loop device, no mount), then copied
    in without its runs of zeroes, so the disk stays sparse."""
    esp = disk.with_name("esp.img")
    serial = hashlib.sha256(f"rhaas-lab-distro:{key}:esp".encode()).hexdigest()[:8]
    run(["mkfs.fat", "-C", "-n", "EFI", "-i", serial, str(esp), str(ESP_BYTES // 1024)])
    folder = str(Path(EFI_BOOT_PATH).parent)
    run(["mmd", "-i", str(esp), f"::/{Path(folder).parent}", f"::/{folder}"])
    run(["mcopy", "-i", str(esp), str(loader), f"::/{EFI_BOOT_PATH}"])
    block = 64 * 1024
    with open(esp, "rb") as src, open(disk, "r+b") as out:
        for offset in range(0, ESP_BYTES, block):
            data = src.read(block)
            if data.count(0) != len(data):
                out.seek(ESP_START + offset)
                out.write(data)
    esp.unlink()


#: Offsets in GRUB's i386-pc boot sector and core image, as GRUB's ``grub-bios-setup`` fills them in.
_BPB = slice(0x03, 0x5A)  # a file system's parameter block, kept from the disk's first sector
_KERNEL_SECTOR = slice(0x5C, 0x64)  # where the core image starts (64-bit LBA)
_DRIVE_CHECK = slice(0x66, 0x68)  # a jump over the boot-drive fix for BIOSes that pass a bad drive number
_PART_TABLE = slice(0x1B8, 0x200)  # disk signature, the (protective) MBR partitions and 0x55AA
_CORE_BLOCKLIST_START = slice(0x1F4, 0x1FC)  # in the core's first sector: where the rest of it starts
_CORE_BLOCKLIST_LEN = slice(0x1FC, 0x1FE)  # ... and how many sectors it has


def install_bios_boot(disk: Path, boot_img: bytes, core_img: bytes, lba: int, room: int) -> None:
    """Write GRUB's boot sector into ``disk``'s first sector and its core image at sector ``lba``.

    What ``grub-bios-setup`` does for a GPT disk with a BIOS boot partition, without Reed-Solomon codes
    (``--no-rs-codes``): the boot sector keeps the disk's partition table and points at the core image,
    whose first sector lists the sectors of the rest. ``room`` is the BIOS boot partition's size in bytes.
    """
    if len(boot_img) != SECTOR:
        raise ImageBuildError(f"GRUB's boot.img is {len(boot_img)} bytes, not {SECTOR}")
    core = bytearray(core_img) + bytes(-len(core_img) % SECTOR)
    sectors = len(core) // SECTOR
    if len(core) > room:
        raise ImageBuildError(f"GRUB's core image ({len(core)} bytes) does not fit in {room} bytes")
    if int.from_bytes(core[_CORE_BLOCKLIST_LEN], "little") != sectors - 1:
        raise ImageBuildError("GRUB's core image does not have the layout this builder knows")
    with open(disk, "r+b") as out:
        first = out.read(SECTOR)
        if first[0x1FE:] != b"\x55\xaa":
            raise ImageBuildError(f"{disk} has no protective MBR: partition it first")
        boot = bytearray(boot_img)
        boot[_BPB] = first[_BPB]
        boot[_PART_TABLE] = first[_PART_TABLE]
        boot[_KERNEL_SECTOR] = lba.to_bytes(8, "little")
        boot[_DRIVE_CHECK] = b"\x90\x90"  # a hard disk: always apply the fix (as grub-bios-setup does)
        core[_CORE_BLOCKLIST_START] = (lba + 1).to_bytes(8, "little")
        out.seek(lba * SECTOR)
        out.write(core)
        out.seek(0)
        out.write(boot)


def allocated_bytes(path: Path) -> int:
    """The bytes a (sparse) file really takes on disk."""
    return os.stat(path).st_blocks * 512


def read_root_file(disk: Path, path: str) -> bytes:
    """A file of the image's root file system, read with ``debugfs`` at the partition's offset (no mount)."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={ROOT_START}"],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise ImageBuildError(f"debugfs could not read {path}: {done.stderr.decode(errors='replace')}")
    return done.stdout


# --- the build -----------------------------------------------------------------------------------------


def _image_from_manifest(out: Path, cached: bool) -> DistroImage | None:
    manifest = out / "manifest.json"
    data = read_manifest(manifest)
    disk = out / "disk.raw"
    if data is None or not all(path.is_file() for path in (disk, out / "vmlinuz", out / "initrd.img")):
        return None
    packages = data.get("packages")
    boot_entry = data.get("boot_entry")
    if not isinstance(packages, dict) or not isinstance(boot_entry, dict):
        return None  # damaged: built again
    try:
        return _image(data, disk, manifest, packages, boot_entry, cached)
    except (KeyError, ValueError):
        return None


def _image(
    data: dict[str, object],
    disk: Path,
    manifest: Path,
    packages: dict[object, object],
    boot_entry: dict[object, object],
    cached: bool,
) -> DistroImage:
    return DistroImage(
        flavour=str(data["flavour"]), release=str(data["release"]), key=str(data["key"]), disk=disk,
        kernel=disk.parent / "vmlinuz", initrd=disk.parent / "initrd.img", manifest=manifest,
        kernel_flavour=str(data["kernel_flavour"]), kernel_package=str(data["kernel_package"]),
        kernel_version=str(data["kernel_version"]), kernel_release=str(data["kernel_release"]),
        root_uuid=str(data["root_uuid"]), packages={str(k): str(v) for k, v in packages.items()},
        virtual_bytes=int(str(data["virtual_bytes"])), data_bytes=allocated_bytes(disk),
        build_seconds=float(str(data["build_seconds"])),
        boot_entry={str(k): str(v) for k, v in boot_entry.items()}, cached=cached,
    )  # fmt: skip


def build_debian(
    flavour: str = DEFAULT_FLAVOUR,
    cache_root: Path | str | None = None,
    *,
    kernel: str = DEFAULT_KERNEL,
    refresh: bool = False,
    mirror: str | None = None,
    security_mirror: str | None = None,
    say: Say | None = None,
) -> DistroImage:
    """Build (or find in the cache) the whole-disk image of ``flavour`` with Debian's ``kernel`` (`KERNELS`).

    ``refresh`` fetches the release's package lists first, so that the key follows the archive; a miss
    always does. ``mirror`` defaults to ``$RHAAS_DEBIAN_MIRROR``, else deb.debian.org. ``say`` gets a
    line per long step.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}: one of {', '.join(FLAVOURS)}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: one of {', '.join(KERNELS)}")
    spec = dataclasses.replace(FLAVOURS[flavour], kernel_meta=KERNELS[kernel])
    say = say or (lambda line: None)
    mirror = mirror or os.environ.get("RHAAS_DEBIAN_MIRROR") or DEFAULT_MIRROR
    security_mirror = (
        security_mirror or os.environ.get("RHAAS_DEBIAN_SECURITY_MIRROR") or DEFAULT_SECURITY_MIRROR
    )
    base = cache_dir(cache_root) / "distro"
    apt = ReleaseApt(spec.release, base, mirror, security_mirror)
    fresh = refresh or not apt.has_lists()
    if fresh:
        say(f"fetching {spec.release}'s package lists")
        apt.update()
    key = cache_key(spec, resolve_packages(spec, apt), apt.sources)
    hit = _image_from_manifest(base / key, cached=True)
    if hit is not None:
        return hit
    with locked(base / ".lock"):
        hit = _image_from_manifest(base / key, cached=True)
        if hit is not None:
            return hit
        if not fresh:  # a miss builds from the archive as it is now
            say(f"fetching {spec.release}'s package lists")
            apt.update()
            key = cache_key(spec, resolve_packages(spec, apt), apt.sources)
            hit = _image_from_manifest(base / key, cached=True)
            if hit is not None:
                return hit
        return _build(spec, apt, base, mirror, security_mirror, say)


#: What a build runs, besides apt and dpkg (``scripts/bootstrap`` installs them).
BUILD_TOOLS = {"mmdebstrap": "mmdebstrap", "sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs",
               "grub-mkimage": "grub-common", "mkfs.fat": "dosfstools", "mcopy": "mtools"}  # fmt: skip


def _check_can_build() -> None:
    """Fail before a long build, not in the middle of it, when the machine cannot make an image."""
    if os.geteuid() != 0:
        raise ImageBuildError("building a distribution image needs root (mmdebstrap installs in a chroot)")
    missing = sorted({package for tool, package in BUILD_TOOLS.items() if not shutil.which(tool)})
    if not (GRUB_DIR / "boot.img").is_file():
        missing.append(GRUB_PACKAGE)
    if not (GRUB_EFI_DIR / "linux.mod").is_file():
        missing.append(GRUB_EFI_PACKAGE)
    if missing:
        raise ImageBuildError(f"missing tools: apt-get install {' '.join(missing)}")


def _build(spec: Flavour, apt: ReleaseApt, base: Path, mirror: str, security: str, say: Say) -> DistroImage:
    """One build, under the cache's lock: nothing else writes under ``base`` meanwhile."""
    _check_can_build()
    for stale in base.glob(".build-*"):  # left by a build that was killed
        _remove_build_dir(stale)
    started = time.monotonic()
    planned = resolve_packages(spec, apt)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        rootdir = work / "root"
        log = work / "build.log"
        kernel_flavour = next(name for name, meta in KERNELS.items() if meta == spec.kernel_meta)
        say(f"mmdebstrap {spec.release} with {spec.kernel_meta} (a few minutes; log in {log})")
        _run_logged(mmdebstrap_command(spec, rootdir, mirror, security), log, say, "mmdebstrap")
        # The key names what the image holds: the archive may have moved since the lists were read.
        release = kernel_release_of(rootdir)
        kernel = f"linux-image-{release}"  # Debian names a kernel's package after its release
        names = [spec.kernel_meta, kernel, *keyed_packages(spec)]
        installed = installed_versions(rootdir, names)
        missing = [name for name in names if name not in installed]
        if missing:
            raise ImageBuildError(f"the image lacks {', '.join(missing)}")
        packages = {**installed, **{grub: planned[grub] for grub in (GRUB_PACKAGE, GRUB_EFI_PACKAGE)}}
        if packages != planned:
            say(f"the archive moved while building: {sorted(set(packages.items()) - set(planned.items()))}")
        key = cache_key(spec, packages, apt.sources)
        root_uuid = root_uuid_for(key)
        boot_entry = configure_root(rootdir, spec, root_uuid, release)
        out = work / "out"
        out.mkdir()
        shutil.copy2(rootdir / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
        shutil.copy2(rootdir / "boot" / f"initrd.img-{release}", out / "initrd.img")
        disk = out / "disk.raw"
        say("writing the disk: GPT, ext4 root, GRUB for BIOS and for UEFI")
        partition_disk(disk, key)
        make_root_fs(disk, rootdir, root_uuid)
        core = work / "core.img"
        make_core_image(core, root_uuid)
        install_bios_boot(disk, (GRUB_DIR / "boot.img").read_bytes(), core.read_bytes(),
                          BIOS_BOOT_START // SECTOR, BIOS_BOOT_BYTES)  # fmt: skip
        loader = work / "grubx64.efi"
        make_efi_loader(loader, root_uuid)
        install_esp(disk, loader, key)
        seconds = round(time.monotonic() - started, 1)
        data: dict[str, object] = {
            "key": key, "flavour": spec.name, "release": spec.release, "title": spec.title,
            "mirror": mirror, "packages": packages, "kernel_flavour": kernel_flavour,
            "kernel_package": kernel, "kernel_version": packages[kernel], "kernel_release": release,
            "root_uuid": root_uuid,
            "virtual_bytes": DISK_BYTES, "data_bytes": allocated_bytes(disk), "build_seconds": seconds,
            "boot_entry": boot_entry, "kernel": "vmlinuz", "initrd": "initrd.img", "partitions": {
                "bios_boot": {"start": BIOS_BOOT_START, "bytes": BIOS_BOOT_BYTES, "type": BIOS_BOOT_TYPE},
                "esp": {"start": ESP_START, "bytes": ESP_BYTES, "type": ESP_TYPE, "loader": EFI_BOOT_PATH},
                "root": {"start": ROOT_START, "bytes": root_partition_bytes(), "type": LINUX_FS_TYPE},
            },
            "installed_packages": _count_installed(rootdir),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        write_manifest(out / "manifest.json", data)
        final = base / key
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        data_mib = allocated_bytes(final / "disk.raw") / MIB
        say(f"built {spec.name} in {seconds:.0f} s: {data_mib:.0f} MiB of data")
    finally:
        _remove_build_dir(work)
    image = _image_from_manifest(final, cached=False)
    assert image is not None
    return image


def _count_installed(rootdir: Path) -> int:
    out = run(["dpkg-query", f"--admindir={rootdir}/var/lib/dpkg", "-W", "-f=${Status}\n"])
    return sum(1 for line in out.splitlines() if line.endswith(" installed"))
