"""The client's disk image readers: every format reads as the logical content qemu-img sees, holes are
known without reading them, and what cannot be read whole is refused with a message that says why.

Images are made with qemu-img (qcow2 v2 and v3, deflate- and zstd-compressed clusters), gzip and xz from
the standard library, zstd with the ``zstd`` program or the ``zstandard`` package.
"""

from __future__ import annotations

import builtins
import gzip
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from rhaas.client.diskimage import (
    CHUNK_SIZE,
    DiskImageError,
    DiskSource,
    Qcow2Source,
    detect_format,
    open_disk_image,
)
from rhaas.core.chunks import CHUNK_SIZE as SERVER_CHUNK_SIZE
from rhaas.errors import BadArgumentError

MIB = 2**20
#: Where the scattered test disk holds data: (offset, length); one range straddles windows 1 and 2, one
#: windows 4 and 5. Window 3 holds zeros really written; windows 6, 7, 8 and the last, 10, are holes.
DATA = [(0, 3000), (5 * MIB + 100, 70_000), (8 * MIB - 10, 20), (17 * MIB, 4 * MIB), (38 * MIB, 512)]
SIZE = 40 * MIB + 12288  # not a multiple of the chunk size: the last window is shorter
ZERO_WRITTEN = (13 * MIB, MIB)
DATA_WINDOWS, HOLES = {0, 1, 2, 4, 5, 9}, {6, 7, 8, 10}

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def have_zstandard() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=120)


def write_scattered(path: Path) -> None:
    """A sparse raw disk with random data at scattered offsets, and a range of zeros really written."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in DATA:
            f.seek(offset)
            f.write(os.urandom(length // 2) + b"r" * (length - length // 2))
        f.seek(ZERO_WRITTEN[0])
        f.write(bytes(ZERO_WRITTEN[1]))


def zstd_compress(source: Path, target: Path) -> None:
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-f", str(source), "-o", str(target)], check=True, timeout=120)
        return
    import zstandard

    with open(source, "rb") as inp, open(target, "wb") as out:
        zstandard.ZstdCompressor().copy_stream(inp, out)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scattered disk in every format, and qemu-img's raw reading of each qcow2."""
    root = tmp_path_factory.mktemp("diskimages")
    raw = root / "disk.raw"
    write_scattered(raw)
    made = {"raw": raw}
    with open(raw, "rb") as inp, gzip.open(root / "disk.raw.gz", "wb") as out:
        shutil.copyfileobj(inp, out)
    made["gzip"] = root / "disk.raw.gz"
    with open(raw, "rb") as inp, lzma.open(root / "disk.raw.xz", "wb") as out:
        shutil.copyfileobj(inp, out)
    made["xz"] = root / "disk.raw.xz"
    if shutil.which("zstd") or have_zstandard():
        zstd_compress(raw, root / "disk.raw.zst")
        made["zstd"] = root / "disk.raw.zst"
    if shutil.which("qemu-img"):
        variants = {
            "qcow2": ["-O", "qcow2"],
            "qcow2-v2": ["-O", "qcow2", "-o", "compat=0.10"],
            "qcow2-compressed": ["-c", "-O", "qcow2"],
            "qcow2-small-clusters": ["-O", "qcow2", "-o", "cluster_size=4096"],
            "qcow2-zstd": ["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
        }
        for name, args in variants.items():
            path = root / f"{name}.qcow2"
            qemu_img("convert", "-f", "raw", *args, str(raw), str(path))
            made[name] = path
            qemu_img("convert", "-O", "raw", str(path), str(root / f"{name}.out"))
    return made


def logical(source: DiskSource) -> tuple[str, int, list[int]]:
    """(sha256 of the logical content, its size, indexes of the windows known to be zeros unread)."""
    digest, size, holes, lengths = hashlib.sha256(), 0, [], []
    for index, window in enumerate(source.windows()):
        if window is None:
            assert source.virtual_size is not None
            window = bytes(min(CHUNK_SIZE, source.virtual_size - size))
            holes.append(index)
        lengths.append(len(window))
        digest.update(window)
        size += len(window)
    assert size == source.virtual_size
    assert set(lengths[:-1]) <= {CHUNK_SIZE} and 0 < lengths[-1] <= CHUNK_SIZE
    return digest.hexdigest(), size, holes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def test_the_client_cuts_content_as_the_server_stores_it():
    assert CHUNK_SIZE == SERVER_CHUNK_SIZE


@pytest.mark.parametrize("fmt", ["raw", "gzip", "xz", "zstd"])
def test_raw_and_compressed_raw_read_as_the_raw_file(images, fmt):
    if fmt not in images:
        pytest.skip("neither the zstd program nor the zstandard package is installed")
    if fmt == "zstd" and not have_zstandard():
        pytest.skip("reading zstd needs the zstandard package")
    with open_disk_image(images[fmt]) as source:
        assert source.format == fmt
        digest, size, holes = logical(source)
        assert source.consumed == source.file_size  # progress reaches the end of the file
    assert (digest, size) == (file_sha256(images["raw"]), SIZE)
    if fmt == "raw":
        # The sparse file's holes are known without reading; written zeros are read (and found zero).
        assert set(holes) == HOLES


@needs_qemu_img
@pytest.mark.parametrize(
    "variant", ["qcow2", "qcow2-v2", "qcow2-compressed", "qcow2-small-clusters", "qcow2-zstd"]
)
def test_qcow2_reads_as_qemu_img_converts_it(images, variant):
    if variant == "qcow2-zstd" and not have_zstandard():
        pytest.skip("zstd-compressed clusters need the zstandard package")
    path = images[variant]
    with open_disk_image(path) as source:
        assert source.format == "qcow2"
        digest, size, holes = logical(source)
        assert source.consumed <= source.file_size
    out = path.with_suffix(".out")
    assert (digest, size) == (file_sha256(out), out.stat().st_size)
    # Unallocated clusters are not read (qemu-img left the written zeros of window 3 unallocated too).
    assert set(holes) >= HOLES and not DATA_WINDOWS & set(holes)


def test_detect_format_by_magic_bytes():
    assert detect_format(b"QFI\xfb\x00\x00\x00\x03") == "qcow2"
    assert detect_format(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_format(b"\xfd7zXZ\x00\x00") == "xz"
    assert detect_format(b"\x28\xb5\x2f\xfd\x24") == "zstd"
    assert detect_format(b"\xebc\x90" + bytes(60)) == "raw"
    with pytest.raises(DiskImageError, match="VMDK.*qemu-img convert"):
        detect_format(b"KDMV\x01\x00\x00\x00")


def test_reading_a_large_sparse_image_keeps_memory_bounded(tmp_path):
    path = tmp_path / "big.raw"
    with open(path, "wb") as f:
        f.truncate(256 * MIB)
        for offset in range(0, 256 * MIB, 32 * MIB):
            f.seek(offset)
            f.write(os.urandom(MIB))
    tracemalloc.start()
    try:
        with open_disk_image(path) as source:
            windows = sum(1 for w in source.windows() if w is not None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert windows == 8
    assert peak < 3 * CHUNK_SIZE, peak


def test_gzip_stream_stays_bounded_in_memory(tmp_path):
    path = tmp_path / "zeros.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        block = bytes(MIB)
        for _ in range(64):
            out.write(block)
    tracemalloc.start()
    try:
        with open_disk_image(path) as source:
            count = sum(1 for _ in source.windows())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 16 and source.virtual_size == 64 * MIB
    assert peak < 4 * CHUNK_SIZE, peak


# -- refusals ---------------------------------------------------------------------------------------------
def refused(path: Path, match: str) -> str:
    with pytest.raises(DiskImageError, match=match) as info, open_disk_image(path) as source:
        for _ in source.windows():
            pass
    assert isinstance(info.value, BadArgumentError)  # the CLI and API's 4xx kind of error
    assert str(path) in str(info.value)
    return str(info.value)


@needs_qemu_img
def test_qcow2_with_a_backing_file_is_refused(tmp_path, images):
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(images["qcow2"]), str(overlay))
    message = refused(overlay, "backing file")
    assert str(images["qcow2"]) in message and "qemu-img convert" in message


@needs_qemu_img
def test_encrypted_qcow2_is_refused(tmp_path, images):
    luks = tmp_path / "secret.qcow2"
    # qemu-img times its key derivation and now and then fails to ("Unable to get accurate CPU usage").
    for attempt in range(5):
        try:
            qemu_img("create", "--object", "secret,id=s0,data=pw", "-f", "qcow2",
                     "-o", "encrypt.format=luks,encrypt.key-secret=s0", str(luks), "8M")  # fmt: skip
            break
        except subprocess.CalledProcessError:
            if attempt == 4:
                raise
    refused(luks, "encrypted \\(LUKS\\)")
    aes = tmp_path / "aes.qcow2"  # the old AES method, which qemu-img no longer makes: set in the header
    shutil.copy(images["qcow2"], aes)
    with open(aes, "r+b") as f:
        f.seek(32)
        f.write(struct.pack(">I", 1))
    refused(aes, "encrypted \\(AES\\)")


@needs_qemu_img
def test_qcow2_with_an_external_data_file_is_refused(tmp_path):
    path = tmp_path / "external.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(path), "8M")
    refused(path, "external data file")


@needs_qemu_img
def test_qcow2_with_extended_l2_entries_is_refused(tmp_path):
    path = tmp_path / "subclusters.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", str(path), "8M")
    refused(path, "extended L2")


def set_incompatible(path: Path, bits: int) -> None:
    with open(path, "r+b") as f:
        f.seek(72)
        (features,) = struct.unpack(">Q", f.read(8))
        f.seek(72)
        f.write(struct.pack(">Q", features | bits))


@needs_qemu_img
def test_qcow2_with_unknown_incompatible_features_or_marked_corrupt_is_refused(tmp_path, images):
    unknown, corrupt = tmp_path / "unknown.qcow2", tmp_path / "corrupt.qcow2"
    for path, bits in ((unknown, 1 << 40), (corrupt, 1 << 1)):
        shutil.copy(images["qcow2"], path)
        set_incompatible(path, bits)
    refused(unknown, "incompatible features unknown here \\(0x10000000000\\)")
    refused(corrupt, "marked the qcow2 image corrupt")


@needs_qemu_img
@pytest.mark.parametrize("variant", ["qcow2", "qcow2-compressed"])
def test_truncated_qcow2_is_refused(tmp_path, images, variant):
    data = images[variant].read_bytes()
    for keep in (40, 100, len(data) // 2, len(data) - 70_000):
        path = tmp_path / f"cut-{keep}.qcow2"
        path.write_bytes(data[:keep])
        refused(path, "truncated|corrupt")


@needs_qemu_img
def test_corrupt_compressed_cluster_is_refused(tmp_path, images):
    path = tmp_path / "damaged.qcow2"
    shutil.copy(images["qcow2-compressed"], path)
    with open_disk_image(path) as source:
        assert isinstance(source, Qcow2Source)
        entry = next(e for e in source._l2(0) or () if e & (1 << 62))  # the first compressed cluster
        offset = entry & ((1 << (62 - (source.cluster_bits - 8))) - 1)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    refused(path, "compressed cluster .* (does not decompress|holds)")


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_truncated_or_corrupt_compressed_raw_is_refused(tmp_path, images, fmt):
    if fmt not in images or (fmt == "zstd" and not have_zstandard()):
        pytest.skip("zstd needs the zstandard package")
    data = images[fmt].read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    refused(cut, f"the {fmt} stream is corrupt or truncated")
    damaged = tmp_path / f"damaged.{fmt}"
    middle = len(data) // 2
    flipped = bytes(b ^ 0x5A for b in data[middle : middle + 200])
    damaged.write_bytes(data[:middle] + flipped + data[middle + 200 :])
    refused(damaged, f"the {fmt} stream is corrupt or truncated")


@needs_qemu_img
def test_a_compressed_qcow2_is_refused_with_advice(tmp_path, images):
    path = tmp_path / "disk.qcow2.gz"
    with open(images["qcow2"], "rb") as inp, gzip.open(path, "wb") as out:
        shutil.copyfileobj(inp, out)
    refused(path, "a qcow2 image compressed with gzip: decompress it first")


def test_empty_files_are_refused(tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(DiskImageError, match="empty"):
        open_disk_image(empty)
    gz = tmp_path / "empty.gz"
    with gzip.open(gz, "wb"):
        pass
    refused(gz, "no content")
    with pytest.raises(DiskImageError, match="No such file"):
        open_disk_image(tmp_path / "absent.raw")


def test_zstd_without_the_zstandard_package_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "disk.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(16))
    real_import = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(DiskImageError, match="needs the Python package 'zstandard'"):
        open_disk_image(path)


@needs_qemu_img
def test_an_empty_qcow2_is_all_holes_read_from_its_l1_table_alone(tmp_path):
    path = tmp_path / "empty.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "64G")
    with open_disk_image(path) as source:
        windows = list(source.windows())
    assert len(windows) == 64 * 2**30 // CHUNK_SIZE and set(windows) == {None}
    assert source.consumed < 64 * 1024  # the header and the L1 table: no L2 table, no data
