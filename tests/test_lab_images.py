"""The lab test OS: built from Debian packages (`rhaas.imaging`), cached by version, modules in the kernel's
own order; and the image building's archives and module order on their own."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rhaas.imaging import ImageBuildError, cache, debs, initramfs, kernel
from rhaas.lab import images
from rhaas.lab.images import TestOS

needs_apt = pytest.mark.skipif(
    not (shutil.which("apt-get") and shutil.which("dpkg-deb") and shutil.which("modinfo")),
    reason="needs apt-get, dpkg-deb and modinfo (Debian)",
)


@pytest.fixture(scope="module")
def image() -> TestOS:
    # The default cache ($RHAAS_CACHE or ~/.cache/rhaas): a download only the first time on a machine.
    return images.build_test_os()


def _insmod_order(image: TestOS) -> list[str]:
    init = initramfs.read_initrd(image.initrd)["init"].data.decode()
    return re.findall(r"^load (\S+)$", init, re.MULTILINE)


@needs_apt
def test_second_build_is_cached(image):
    mtime = image.initrd.stat().st_mtime_ns
    again = images.build_test_os()
    assert again == image
    assert image.initrd.stat().st_mtime_ns == mtime, "the cached initrd was rebuilt"


@needs_apt
def test_manifest_records_the_kernel_package_version(image):
    meta = debs.apt_show(debs.KERNEL_META_PACKAGE)[debs.KERNEL_META_PACKAGE]
    assert re.search(rf"\b{re.escape(image.kernel_package)}\b", meta["Depends"])
    manifest = cache.read_manifest(image.manifest)
    assert manifest is not None
    assert manifest["kernel_package"] == image.kernel_package
    assert manifest["kernel_version"] == image.kernel_version
    assert re.fullmatch(r"linux-image-\d+\.\d+\.\d+-\d+-cloud-amd64", image.kernel_package)
    kernel_manifest = cache.read_manifest(Path(str(manifest["kernel_manifest"])))
    assert kernel_manifest is not None
    assert kernel_manifest["version"] == image.kernel_version
    assert image.kernel.name == f"vmlinuz-{image.kernel_release}"
    assert image.kernel.is_file()


@needs_apt
def test_module_order_follows_modinfo(image):
    order = _insmod_order(image)
    assert list(image.modules) == order
    assert set(images.TEST_OS_MODULES) <= set(order)
    assert len(order) == len(set(order))
    modules_dir = kernel.fetch_kernel().modules_dir
    index = kernel.module_index(modules_dir)
    for position, module in enumerate(order):
        # Asked of modinfo directly, not through the builder's code.
        out = subprocess.run(
            ["modinfo", "-F", "depends", str(index[module])], capture_output=True, text=True, check=True
        ).stdout.strip()
        for dep in filter(None, out.split(",")):
            assert dep in order[:position], f"{module} needs {dep}, which is not loaded before it: {order}"
    # What the design notes found in this kernel line: virtio_ring before everything virtio.
    for module in ("virtio", "virtio_net", "virtio_blk", "virtio_pci"):
        assert order.index("virtio_ring") < order.index(module)


@needs_apt
def test_initrd_is_a_cpio_that_gnu_cpio_reads_and_init_parses(image, tmp_path):
    assert image.initrd.read_bytes()[:2] == b"\x1f\x8b"
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(image.initrd.read_bytes()), capture_output=True,
        check=True,
    ).stdout.decode().split()  # fmt: skip
    for member in ("init", "bin/busybox", "bin/sh", "dev/console", "lib/modules/virtio_net.ko"):
        assert member in listing
    members = initramfs.read_initrd(image.initrd)
    assert members["dev/console"].rdev == (5, 1)
    assert members["bin/sh"].data == b"busybox"
    init = tmp_path / "init"
    init.write_bytes(members["init"].data)
    busybox = debs.fetch_busybox()[1]
    subprocess.run([str(busybox), "sh", "-n", str(init)], check=True)


def test_cpio_round_trip():
    entries = [
        initramfs.dir_entry("bin"),
        initramfs.file_entry("bin/x", b"abc", 0o755),
        initramfs.symlink_entry("bin/y", "x"),
        initramfs.chardev_entry("dev/console", 5, 1),
        initramfs.file_entry("empty", b""),
    ]
    archive = initramfs.write_cpio(entries)
    assert len(archive) % 4 == 0
    assert initramfs.read_cpio(archive) == {e.name: e for e in entries}
    assert initramfs.write_cpio(entries) == archive, "archives must be reproducible"


def _fake_modules(tmp_path, monkeypatch, depends: dict[str, list[str]]) -> Path:
    for name in depends:
        (tmp_path / "kernel" / f"{name}.ko").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "kernel" / f"{name}.ko").write_bytes(b"")
    monkeypatch.setattr(kernel, "module_depends", lambda path: depends[path.name.removesuffix(".ko")])
    return tmp_path


def test_load_order_changes_with_the_kernel_data(tmp_path, monkeypatch):
    # 6.1.0-47: virtio has no dependency; 6.1.0-56: virtio needs virtio_ring.
    old = {"virtio_blk": ["virtio", "virtio_ring"], "virtio": [], "virtio_ring": []}
    new = {"virtio_blk": ["virtio", "virtio_ring"], "virtio": ["virtio_ring"], "virtio_ring": []}
    order_old = [
        n
        for n, _ in kernel.module_load_order(_fake_modules(tmp_path / "a", monkeypatch, old), ["virtio_blk"])
    ]
    order_new = [
        n
        for n, _ in kernel.module_load_order(_fake_modules(tmp_path / "b", monkeypatch, new), ["virtio_blk"])
    ]
    assert order_old == ["virtio", "virtio_ring", "virtio_blk"]
    assert order_new == ["virtio_ring", "virtio", "virtio_blk"]


def test_load_order_reports_cycles_and_missing_modules(tmp_path, monkeypatch):
    modules = _fake_modules(tmp_path, monkeypatch, {"a": ["b"], "b": ["a"], "c": ["nowhere"]})
    with pytest.raises(ImageBuildError, match="cycle"):
        kernel.module_load_order(modules, ["a"])
    with pytest.raises(ImageBuildError, match="nowhere"):
        kernel.module_load_order(modules, ["c"])


def test_names_and_markers_are_checked():
    with pytest.raises(ValueError):
        images.build_test_os("bad name; rm -rf /")
    with pytest.raises(ValueError):
        images.build_test_os("ok", marker="it's")


def test_cmdline_with():
    image = TestOS(
        name="t", marker="RHAAS-TESTOS t", kernel=Path("k"), initrd=Path("i"), cmdline="console=ttyS0",
        manifest=Path("m"), kernel_package="p", kernel_version="v", kernel_release="r", busybox_version="b",
        modules=(),
    )  # fmt: skip
    assert image.cmdline_with() == "console=ttyS0"
    assert (
        image.cmdline_with(ip="10.0.0.5/24", ping=["10.0.0.6", "10.0.0.7"], tcp=["10.0.0.6"], extra="x=1")
        == "console=ttyS0 rhaas.ip=10.0.0.5/24 rhaas.ping=10.0.0.6,10.0.0.7 rhaas.tcp=10.0.0.6 x=1"
    )
    assert re.search(image.up_regex, "RHAAS-TESTOS t UP ip=10.0.0.5/24 kernel=r").group(1) == "10.0.0.5/24"


@needs_apt
def test_cli_prints_json(image, capsys):
    assert images.main(["build", "--json"]) == 0
    out = capsys.readouterr().out
    assert str(image.initrd) in out
    assert image.kernel_version in out
