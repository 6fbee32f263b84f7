"""Real Debian images for the lab (`rhaas.lab.distro`): two releases built from Debian packages, small,
cached by package versions, a valid GPT with GRUB for BIOS and for UEFI; and each boots on its own in QEMU
until SSH answers as the default user and systemd says the system is running. With Debian's generic
kernel, they boot on the lab's server hardware too: UEFI firmware, an e1000e NIC and an NVMe disk, or
BIOS, an e1000 NIC and a MegaRAID disk.

The images are built into the default cache ($RHAAS_CACHE or ~/.cache/rhaas): a few minutes per flavour
the first time on a machine, a cache hit after. Files of the images are read with ``debugfs`` at the root
partition's offset; nothing is mounted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rhaas.agent import bootentry
from rhaas.cli import lab as cli_lab
from rhaas.imaging import ImageBuildError
from rhaas.lab import distro
from rhaas.lab.desk import keypair
from rhaas.lab.distro import DistroImage
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import OVMF_CODE
from rhaas.lab.straight import Straight

_TOOLS = ("mmdebstrap", "grub-mkimage", "sfdisk", "mkfs.ext4", "debugfs", "dumpe2fs", "apt-get")
_MISSING = [tool for tool in _TOOLS if not shutil.which(tool)]
if not (distro.GRUB_DIR / "boot.img").is_file():
    _MISSING.append("grub-pc-bin")
if not (distro.GRUB_EFI_DIR / "linux.mod").is_file():
    _MISSING.append("grub-efi-amd64-bin")
needs_tools = pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)} (scripts/bootstrap)")
needs_grub = pytest.mark.skipif(
    not (distro.GRUB_DIR / "boot.img").is_file() or not shutil.which("grub-mkimage"),
    reason="needs grub-pc-bin (scripts/bootstrap)",
)
BUILD_MARKS = [
    # The first test to use the images builds both (minutes each, more on a busy machine).
    pytest.mark.timeout(1800),
    pytest.mark.slow,
    pytest.mark.root,
    needs_tools,
    pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap builds as root"),
]


def _built(test: Callable[..., None]) -> Callable[..., None]:
    """BUILD_MARKS on a test function."""
    for mark in reversed(BUILD_MARKS):
        test = mark(test)
    return test


DATA_LIMIT = 600 * 10**6


def _say(line: str) -> None:
    print(f"· {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def images() -> dict[str, DistroImage]:
    """Both flavours, built once (timed) or taken from the cache."""
    built = {}
    for flavour in distro.FLAVOURS:
        started = time.monotonic()
        built[flavour] = distro.build_debian(flavour, say=_say)
        image = built[flavour]
        print(f"{flavour}: {'cache hit' if image.cached else 'built'} in {time.monotonic() - started:.1f} s "
              f"(build {image.build_seconds:.0f} s), {image.data_bytes / 2**20:.0f} MiB of data in "
              f"{image.virtual_bytes / 2**30:.0f} GiB, kernel {image.kernel_release}")  # fmt: skip
    return built


_DECOMPRESSORS = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}


def initramfs_names(data: bytes) -> set[str]:
    """The names in an initramfs as the kernel unpacks it: newc archives one after the other (an
    early-microcode one in front, say), zero padding between them, the last one compressed."""
    names: set[str] = set()
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data[pos : pos + 6] == b"070701":
            namesize, size = int(data[pos + 94 : pos + 102], 16), int(data[pos + 54 : pos + 62], 16)
            name = data[pos + 110 : pos + 110 + namesize - 1].decode()
            pos += 110 + namesize + (-(110 + namesize) % 4)
            pos += size + (-size % 4)
            if name != "TRAILER!!!":
                names.add(name)
            continue
        tool = next((t for magic, t in _DECOMPRESSORS.items() if data[pos:].startswith(magic)), None)
        assert tool is not None, (
            f"neither cpio nor a known compression at offset {pos}: {data[pos : pos + 8]!r}"
        )
        done = subprocess.run([tool, "-dc"], input=data[pos:], capture_output=True, check=True)
        return names | initramfs_names(done.stdout)
    return names


def _debugfs(disk: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, f"{disk}?offset={distro.ROOT_START}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout


def _root_text(image: DistroImage, path: str) -> str:
    return distro.read_root_file(image.disk, path).decode()


# --- without a build -----------------------------------------------------------------------------------


def test_flavours_offered_by_the_cli_are_the_builders():
    assert tuple(distro.FLAVOURS) == cli_lab.DISTRO_FLAVOURS
    assert cli_lab.DISTRO_FLAVOURS[0] == distro.DEFAULT_FLAVOUR
    releases = {flavour.release for flavour in distro.FLAVOURS.values()}
    assert len(releases) == len(distro.FLAVOURS), "two flavours of one release are not two operating systems"


def test_unknown_flavour_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown flavour 'sid'"):
        distro.build_debian("sid", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_follows_every_package_version():
    flavour = distro.FLAVOURS["bookworm"]
    packages = {"linux-image-6.1.0-1-cloud-amd64": "6.1.1-1", "systemd": "252.1-1", "cloud-init": "22.4-1"}
    key = distro.cache_key(flavour, packages)
    assert key == distro.cache_key(flavour, dict(packages))
    for name in packages:
        assert distro.cache_key(flavour, {**packages, name: packages[name] + "+b1"}) != key, name
    assert distro.cache_key(distro.FLAVOURS["trixie"], packages) != key
    assert distro.root_uuid_for(key) == distro.root_uuid_for(key) != distro.root_uuid_for(key + "x")


def test_grub_cfg_has_grub_mkconfig_shape():
    cfg = distro.grub_cfg("Debian GNU/Linux 12 (bookworm)", "6.1.0-9-cloud-amd64", "0f0e-uuid")
    assert 'set default="0"' in cfg
    entry = re.search(r"^menuentry 'Debian GNU/Linux 12 \(bookworm\)' .*\{\n(.*?)^\}", cfg, re.M | re.S)
    assert entry, cfg
    body = entry.group(1)
    assert re.search(r"^\tlinux\t/boot/vmlinuz-6\.1\.0-9-cloud-amd64 root=UUID=0f0e-uuid ro console=ttyS0$",
                     body, re.M)  # fmt: skip
    assert re.search(r"^\tinitrd\t/boot/initrd\.img-6\.1\.0-9-cloud-amd64$", body, re.M)
    assert "search --no-floppy --fs-uuid --set=root 0f0e-uuid" in body


def test_root_password_is_locked_once(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:20000:0:99999:7:::\ndebian:$y$hash:20000:0:99999:7:::\n")
    distro.lock_root_password(shadow)
    distro.lock_root_password(shadow)
    assert shadow.read_text() == "root:!*:20000:0:99999:7:::\ndebian:$y$hash:20000:0:99999:7:::\n"


def test_files_of_the_root_replace_symlinks_instead_of_following_them(tmp_path):
    outside = tmp_path / "this-machine"
    outside.write_text("the build machine's file\n")
    root_etc = tmp_path / "root" / "etc"
    root_etc.mkdir(parents=True)
    (root_etc / "hostname").symlink_to(outside)
    distro.write_in_root(root_etc / "hostname", "")
    assert outside.read_text() == "the build machine's file\n"
    assert not (root_etc / "hostname").is_symlink() and (root_etc / "hostname").read_text() == ""
    (root_etc / "shadow").symlink_to(outside)
    with pytest.raises(ImageBuildError, match="symlink"):
        distro.lock_root_password(root_etc / "shadow")
    assert outside.read_text() == "the build machine's file\n"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_build_directory_is_unmounted_before_it_is_deleted(tmp_path):
    work = tmp_path / ".build-x"
    mounted = work / "root" / "dev"
    mounted.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "node").write_text("inside the mount")
        assert distro._mounts_under(work) == [str(mounted.resolve())]
        distro._remove_build_dir(work)
        assert not work.exists()
        assert distro._mounts_under(tmp_path) == []
    finally:
        subprocess.run(["umount", "--lazy", str(mounted)], capture_output=True)


@needs_grub
def test_bios_boot_sector_and_core_image_in_a_small_gpt_disk(tmp_path):
    disk = tmp_path / "disk.raw"
    distro.partition_disk(disk, "k", size=64 * distro.MIB)
    table_before = disk.read_bytes()[0x1B8:0x200]
    core = tmp_path / "core.img"
    distro.make_core_image(core, "11111111-2222-3333-4444-555555555555")
    boot_img = (distro.GRUB_DIR / "boot.img").read_bytes()
    lba = distro.BIOS_BOOT_START // distro.SECTOR
    distro.install_bios_boot(disk, boot_img, core.read_bytes(), lba, distro.BIOS_BOOT_BYTES)

    data = disk.read_bytes()
    mbr = data[:512]
    assert mbr[0x1B8:0x200] == table_before, "the protective MBR's partition table was overwritten"
    assert int.from_bytes(mbr[0x5C:0x64], "little") == lba
    assert mbr[0x66:0x68] == b"\x90\x90"
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8], "GRUB's boot code is not the boot sector's"
    core_bytes = core.read_bytes()
    written = data[lba * 512 : lba * 512 + len(core_bytes)]
    assert written[512:] == core_bytes[512:]
    assert int.from_bytes(written[0x1F4:0x1FC], "little") == lba + 1
    assert int.from_bytes(written[0x1FC:0x1FE], "little") == -(-len(core_bytes) // 512) - 1
    diskboot = (distro.GRUB_DIR / "diskboot.img").read_bytes()
    assert written[:0x1F4] == diskboot[:0x1F4], "the core image does not start with GRUB's diskboot sector"
    verify = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout + verify.stderr

    with pytest.raises(ImageBuildError, match="does not fit"):
        distro.install_bios_boot(disk, boot_img, core.read_bytes(), lba, 4096)


# --- built images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", list(distro.FLAVOURS))
class TestBuiltImage:
    """What each flavour's image holds, read from its disk file."""

    pytestmark = BUILD_MARKS

    def test_small_and_sparse(self, images, flavour):
        image = images[flavour]
        assert image.disk.stat().st_size == image.virtual_bytes == 2 * 2**30
        allocated = image.disk.stat().st_blocks * 512
        assert allocated == image.data_bytes
        assert allocated <= DATA_LIMIT, f"{allocated / 1e6:.0f} MB of data, over {DATA_LIMIT / 1e6:.0f}"
        dump = subprocess.run(["dumpe2fs", "-h", f"{image.disk}?offset={distro.ROOT_START}"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        fields = dict(re.findall(r"^([A-Za-z ]+):\s+(.*)$", dump, re.M))
        used = (int(fields["Block count"]) - int(fields["Free blocks"])) * int(fields["Block size"])
        assert used <= DATA_LIMIT
        assert fields["Filesystem UUID"] == image.root_uuid
        print(f"{flavour}: {allocated / 1e6:.0f} MB allocated, {used / 1e6:.0f} MB used in the root fs")

    def test_gpt_is_valid_with_bios_boot_esp_and_root(self, images, flavour):
        disk = images[flavour].disk
        verify = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True)
        assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout + verify.stderr
        if shutil.which("sgdisk"):
            check = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True)
            assert check.returncode == 0 and "No problems found" in check.stdout, check.stdout
        listing = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True)
        table = json.loads(listing.stdout)["partitiontable"]
        assert table["label"] == "gpt"
        bios, esp, root = table["partitions"]
        assert bios["type"] == distro.BIOS_BOOT_TYPE
        assert (bios["start"] * 512, bios["size"] * 512) == (distro.MIB, distro.MIB)
        assert esp["type"] == distro.ESP_TYPE
        assert (esp["start"] * 512, esp["size"] * 512) == (distro.ESP_START, distro.ESP_BYTES)
        assert root["type"] == distro.LINUX_FS_TYPE and root["start"] * 512 == distro.ROOT_START
        assert (root["start"] + root["size"]) * 512 == disk.stat().st_size - distro.MIB
        with open(disk, "rb") as f:
            mbr = f.read(512)
        assert mbr[0x1FE:] == b"\x55\xaa"
        assert int.from_bytes(mbr[0x5C:0x64], "little") == bios["start"], "GRUB's boot sector misses its core"

    def test_the_esp_holds_grub_for_uefi_at_the_removable_media_path(self, images, flavour):
        """UEFI firmware with no boot entry for the disk runs EFI/BOOT/BOOTX64.EFI from its FAT ESP: GRUB,
        built to find this image's root and read its grub.cfg (whose modules the root holds)."""
        image = images[flavour]
        at = f"{image.disk}@@{distro.ESP_START}"
        listing = subprocess.run(["mdir", "-i", at, "-b", "::/EFI/BOOT"], capture_output=True, text=True,
                                 env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
        loader = subprocess.run(["mtype", "-i", at, "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True,
                                env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True).stdout  # fmt: skip
        pe = int.from_bytes(loader[0x3C:0x40], "little")
        assert loader[:2] == b"MZ" and loader[pe : pe + 6] == b"PE\0\0\x64\x86", "not an x86-64 EFI program"
        assert image.root_uuid.encode() in loader, "GRUB's early configuration does not name the root"
        assert "Type: regular" in _debugfs(image.disk, "stat /boot/grub/x86_64-efi/linux.mod")

    def test_boot_files_and_grub_cfg(self, images, flavour):
        image = images[flavour]
        release = image.kernel_release
        for link, target in (
            ("/vmlinuz", f"boot/vmlinuz-{release}"),
            ("/initrd.img", f"boot/initrd.img-{release}"),
        ):
            assert f'Fast link dest: "{target}"' in _debugfs(image.disk, f"stat {link}"), link
        for path in (
            f"/boot/vmlinuz-{release}",
            f"/boot/initrd.img-{release}",
            "/boot/grub/i386-pc/normal.mod",
        ):
            assert "Type: regular" in _debugfs(image.disk, f"stat {path}"), path
        cfg = _root_text(image, "/boot/grub/grub.cfg")
        assert 'set default="0"' in cfg
        assert f"menuentry '{image.boot_entry['title']}'" in cfg
        linux = re.search(r"^\s*linux\s+(\S+) (.*)$", cfg, re.M)
        assert linux and linux.group(1) == image.boot_entry["linux"] == f"/boot/vmlinuz-{release}"
        assert linux.group(2) == image.boot_entry["cmdline"]
        assert f"root=UUID={image.root_uuid}" in linux.group(2) and "console=ttyS0" in linux.group(2)
        assert re.search(rf"^\s*initrd\s+/boot/initrd\.img-{re.escape(release)}$", cfg, re.M)
        for copy, inside in (
            (image.kernel, f"/boot/vmlinuz-{release}"),
            (image.initrd, f"/boot/initrd.img-{release}"),
        ):
            assert copy.read_bytes() == distro.read_root_file(image.disk, inside), (
                f"{copy.name} is not {inside}"
            )
        fstab = [line.split() for line in _root_text(image, "/etc/fstab").splitlines() if line[:1] != "#"]
        assert fstab == [[f"UUID={image.root_uuid}", "/", "ext4", "errors=remount-ro", "0", "1"]]

    def test_the_agents_boot_entry_finder_boots_grubs_default(self, images, flavour):
        """What a whole-disk deploy would kexec is what GRUB boots from the image's own disk."""
        image = images[flavour]
        with open(image.disk, "rb") as disk:
            entry = bootentry.find_on_disk(disk)
            assert entry.method == "grub" and entry.title == image.boot_entry["title"]
            assert entry.kernel.path == image.boot_entry["linux"]
            assert [ref.path for ref in entry.initrds] == [image.boot_entry["initrd"]]
            assert entry.cmdline.split() == [f"BOOT_IMAGE={image.boot_entry['linux']}",
                                             *image.boot_entry["cmdline"].split()]  # fmt: skip
            assert entry.read_kernel() == image.kernel.read_bytes()

    def test_first_boot_is_left_to_cloud_init(self, images, flavour):
        image = images[flavour]
        assert _root_text(image, "/etc/hostname").strip() == ""
        assert _root_text(image, "/etc/machine-id") == ""
        cloud = _root_text(image, "/etc/cloud/cloud.cfg.d/99_rhaas_lab.cfg")
        assert re.search(r"^datasource_list: \[NoCloud, None\]$", cloud, re.M)
        main_cfg = _root_text(image, "/etc/cloud/cloud.cfg")
        assert re.search(r"default_user:\s*\n\s+name: debian\b", main_cfg)
        assert "NOPASSWD:ALL" in main_cfg
        root = next(
            line for line in _root_text(image, "/etc/shadow").splitlines() if line.startswith("root:")
        )
        assert root.split(":")[1].startswith("!"), "root's password is not locked"
        assert "ssh_host_" not in _debugfs(image.disk, "ls -l /etc/ssh"), (
            "host keys would be shared by copies"
        )
        wants = _debugfs(image.disk, "ls -l /etc/systemd/system/multi-user.target.wants")
        assert "ssh.service" in wants and "systemd-networkd.service" in wants
        for tool in (
            "/usr/sbin/e2fsck",
            "/usr/sbin/resize2fs",
        ):  # fsck of the root at boot; cloud-init's resizefs
            assert "Type: regular" in _debugfs(image.disk, f"stat {tool}"), tool
        builder = distro.FLAVOURS[flavour].initramfs
        wanted = distro.INITRAMFS_BUILDERS[builder]
        conf = _root_text(image, wanted.conf)
        assert conf == wanted.text
        generic = {distro.INITRAMFS_TOOLS: r"^MODULES=most$", distro.DRACUT: r'^hostonly="no"$'}[builder]
        assert re.search(generic, conf, re.M)

    def test_the_initramfs_is_made_by_the_flavours_builder(self, images, flavour):
        """bookworm's by initramfs-tools, trixie's by dracut: each leaves its own files in the archive,
        and the other builder is not installed."""
        image = images[flavour]
        builder = distro.FLAVOURS[flavour].initramfs
        other = ({distro.INITRAMFS_TOOLS, distro.DRACUT} - {builder}).pop()
        assert builder in image.packages and other not in image.packages
        status = _root_text(image, "/var/lib/dpkg/status")
        assert re.search(rf"^Package: {other}\nStatus: install ok installed$", status, re.M) is None
        names = initramfs_names(image.initrd.read_bytes())
        marker = {distro.INITRAMFS_TOOLS: "scripts/init-top", distro.DRACUT: "usr/lib/dracut"}
        assert any(name.startswith(marker[builder]) for name in names), sorted(names)[:40]
        assert not any(name.startswith(marker[other]) for name in names)

    def test_manifest_names_the_installed_versions(self, images, flavour):
        image = images[flavour]
        manifest = json.loads(image.manifest.read_text())
        assert manifest["key"] == image.key == image.manifest.parent.name
        assert manifest["packages"] == image.packages
        for name in (image.kernel_package, "systemd", "cloud-init", "openssh-server",
                     distro.FLAVOURS[flavour].initramfs, distro.FLAVOURS[flavour].kernel_meta,
                     distro.GRUB_PACKAGE, distro.GRUB_EFI_PACKAGE):  # fmt: skip
            assert image.packages.get(name), name
        status = _root_text(image, "/var/lib/dpkg/status")
        for name, version in image.packages.items():
            if name in (distro.GRUB_PACKAGE, distro.GRUB_EFI_PACKAGE):  # GRUB comes from the build machine
                continue
            assert re.search(rf"^Package: {re.escape(name)}\n(?:.+\n)*?Version: {re.escape(version)}$",
                             status, re.M), (name, version)  # fmt: skip
        assert image.kernel_release.endswith("-cloud-amd64") and image.kernel_flavour == "cloud"
        assert image.packages[image.kernel_package] == image.kernel_version

    def test_second_build_is_a_cache_hit(self, images, flavour):
        image = images[flavour]
        mtime = image.disk.stat().st_mtime_ns
        started = time.monotonic()
        again = distro.build_debian(flavour)
        seconds = time.monotonic() - started
        print(f"{flavour}: cache hit in {seconds:.2f} s")
        assert again.cached and again.key == image.key and again.disk == image.disk
        assert image.disk.stat().st_mtime_ns == mtime
        assert seconds < 2, f"a cache hit took {seconds:.1f} s"


@_built
def test_flavours_are_different_operating_systems(images):
    a, b = images["bookworm"], images["trixie"]
    assert a.kernel_release != b.kernel_release and a.kernel_package != b.kernel_package
    assert a.root_uuid != b.root_uuid
    assert "VERSION_CODENAME=bookworm" in _root_text(a, "/usr/lib/os-release")
    assert "VERSION_CODENAME=trixie" in _root_text(b, "/usr/lib/os-release")
    assert a.packages["systemd"] != b.packages["systemd"]
    for image in (a, b):
        print(f"{image.flavour}: {image.kernel_release}, systemd {image.packages['systemd']}, "
              f"cloud-init {image.packages['cloud-init']}")  # fmt: skip


@_built
def test_cli_writes_the_cached_image(images, tmp_path):
    out = tmp_path / "debian.raw"
    done = subprocess.run(
        [sys.executable, "-m", "rhaas.cli.main", "lab", "image", "build", "debian", "--flavour", "trixie",
         "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    image = images["trixie"]
    assert result["cached"] is True and result["key"] == image.key and result["out"] == str(out)
    assert out.stat().st_size == image.disk.stat().st_size
    assert out.stat().st_blocks <= image.disk.stat().st_blocks * 1.05, "the copy is not sparse"
    assert distro.read_root_file(out, "/boot/grub/grub.cfg") == distro.read_root_file(
        image.disk, "/boot/grub/grub.cfg"
    )


# --- booted --------------------------------------------------------------------------------------------


@pytest.fixture
def booted(images, flavour, tmp_path) -> Iterator[Straight]:
    """The ``flavour`` image booted straight from (a copy of) its disk, with a NoCloud seed; QEMU is
    killed by its PID however the test ends."""
    key, pub = keypair(tmp_path, "id_ed25519")
    node = Straight(images[flavour].disk, tmp_path / "node", 1024, key, pub.read_text())
    try:
        yield node
    finally:
        node.stop()


@_built
@pytest.mark.qemu
@pytest.mark.timeout(2700)  # builds, then up to 10 min to SSH and 5 more to settle under TCG
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64") or not shutil.which("genisoimage"),
                    reason="needs qemu-system-x86 and genisoimage")  # fmt: skip
@pytest.mark.parametrize("flavour", list(distro.FLAVOURS))
def test_image_boots_from_its_own_disk_until_ssh_answers(booted, flavour, images):
    image = images[flavour]
    wait_for("SSH as debian with the seed's key", booted.answers, timeout=600, every=2)
    to_ssh = time.monotonic() - booted.started
    state = booted.ssh("systemctl is-system-running --wait", timeout=300)
    settled = time.monotonic() - booted.started
    failed = booted.ssh("systemctl --failed --no-legend").stdout.strip()
    print(f"{flavour} image: QEMU start to SSH {to_ssh:.0f} s, to '{state.stdout.strip()}' {settled:.0f} s "
          f"(TCG, 1 CPU); build {image.build_seconds:.0f} s; "
          f"data {image.data_bytes / 2**20:.0f} MiB")  # fmt: skip
    assert state.stdout.strip() == "running", f"system {state.stdout.strip()}; failed units:\n{failed}"

    facts = booted.ssh("hostname; uname -r; sudo -n id -u; . /etc/os-release; echo $VERSION_CODENAME; "
                       "findmnt -n -o SOURCE,UUID /; systemctl is-active ssh systemd-networkd")  # fmt: skip
    lines = facts.stdout.split()
    assert facts.returncode == 0, facts.stderr
    assert lines[:4] == ["straight", image.kernel_release, "0", image.release], lines
    assert lines[5] == image.root_uuid and lines[6:] == ["active", "active"], lines
    text = booted.console.read_text(errors="replace")
    assert "Loading Linux " + image.kernel_release in text, "GRUB's entry did not show on the serial console"


#: Per server profile: the release whose generic image boots on it (one each: both releases and both
#: initramfs builders meet server hardware), and what the OS sees: firmware, disk, NIC driver.
SERVER_BOOTS = {
    "uefi-nvme": ("bookworm", ["efi", "nvme0n1", "e1000e"]),
    "bios-megasas": ("trixie", ["bios", "sda", "e1000"]),
}


@_built
@pytest.mark.qemu
@pytest.mark.timeout(2700)
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64") or not shutil.which("genisoimage"),
                    reason="needs qemu-system-x86 and genisoimage")  # fmt: skip
@pytest.mark.skipif(not OVMF_CODE.exists(), reason=f"no UEFI firmware at {OVMF_CODE} (Debian package ovmf)")
@pytest.mark.parametrize("profile", list(SERVER_BOOTS))
def test_generic_image_boots_from_its_disk_on_server_hardware(profile, tmp_path):
    """The firmware finds GRUB on the disk (UEFI: the ESP's BOOTX64.EFI; BIOS: the boot sector, through
    the MegaRAID controller's option ROM), and the generic kernel drives the Intel NIC SSH comes in on."""
    release, sees = SERVER_BOOTS[profile]
    image = distro.build_debian(release, kernel="generic", say=_say)
    assert image.kernel_flavour == "generic" and not image.kernel_release.endswith("-cloud-amd64")
    key, pub = keypair(tmp_path, "id_ed25519")
    node = Straight(image.disk, tmp_path / "node", 1024, key, pub.read_text(), profile=profile)
    try:
        wait_for(f"SSH on {profile}", node.answers, timeout=900, every=2)
        print(f"{release} generic on {profile}: QEMU start to SSH {time.monotonic() - node.started:.0f} s")
        facts = node.ssh(
            'test -d /sys/firmware/efi && echo efi || echo bios; lsblk -no pkname "$(findmnt -no source /)"; '
            "basename $(readlink /sys/class/net/*/device/driver); uname -r"
        )
        assert facts.returncode == 0, facts.stderr
        assert facts.stdout.split() == [*sees, image.kernel_release]
        assert "Loading Linux " + image.kernel_release in node.console.read_text(errors="replace")
    finally:
        node.stop()
