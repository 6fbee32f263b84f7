"""A whole-disk image written by extents: only data crosses the wire, every chunk checked before it is
written, holes skipped only where the disk is known to read zeroes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from rhaas.agent import disk as dk
from rhaas.agent.extents import DiskImage, Extent, parse_image, write_image
from rhaas.agent.work import AgentError, Artifact, ProtocolError

MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_of(chunks: dict[int, bytes], size: int, zeroed: bool) -> DiskImage:
    extents = tuple(Extent(o, len(d), sha(d)) for o, d in sorted(chunks.items()))
    return DiskImage(size, extents, zeroed, "chunks/{sha256}")


def store(chunks: dict[int, bytes], corrupt: str | None = None) -> tuple[Callable, list[str]]:
    """A fetch over the chunks by digest (the one named ``corrupt`` served with a flipped byte), and the
    URLs asked for."""
    by_digest = {sha(d): d for d in chunks.values()}
    asked: list[str] = []

    def fetch(artifact: Artifact, sink: Callable[[bytes], object]) -> str:
        asked.append(artifact.url)
        data = by_digest[artifact.url.rsplit("/", 1)[1]]
        if artifact.sha256 == corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        sink(data)
        return sha(data)

    return fetch, asked


def disk_file(tmp_path: Path, size: int, fill: bytes) -> dk.Disk:
    path = tmp_path / "vda"
    path.write_bytes(fill * (size // len(fill)))
    return dk.Disk("vda", str(path), size)


CHUNKS = {0: b"GPT!" * (MIB // 4), 4 * MIB: b"root" * MIB, 12 * MIB: b"tail" * 1024}


def test_data_is_written_at_its_offsets_and_holes_zeroed_on_a_dirty_disk(tmp_path):
    disk = disk_file(tmp_path, 32 * MIB, b"OLD!")
    fetch, asked = store(CHUNKS)
    written = write_image(image_of(CHUNKS, 16 * MIB, zeroed=False), disk, fetch, lambda d, t: None)
    content = Path(disk.path).read_bytes()
    expected = bytearray(16 * MIB)
    for offset, data in CHUNKS.items():
        expected[offset : offset + len(data)] = data
    assert content[: 16 * MIB] == expected, "holes read zeroes, data where the extents say"
    assert content[16 * MIB :] == b"OLD!" * (4 * MIB), "past the image, the disk is not the image's"
    assert written.data == sum(map(len, CHUNKS.values())) and written.zeroed == 16 * MIB - written.data
    assert sorted(asked) == sorted(f"chunks/{sha(d)}" for d in CHUNKS.values()), "only data is fetched"


def test_holes_are_skipped_where_the_disk_reads_zeroes(tmp_path):
    disk = disk_file(tmp_path, 32 * MIB, b"\0")
    marker = b"X" * 512
    with open(disk.path, "r+b") as f:  # would survive only if holes are not written
        f.seek(2 * MIB)
        f.write(marker)
    fetch, _ = store(CHUNKS)
    written = write_image(image_of(CHUNKS, 16 * MIB, zeroed=True), disk, fetch, lambda d, t: None)
    assert written.zeroed == 0 and "skipped" in written.holes
    assert Path(disk.path).read_bytes()[2 * MIB : 2 * MIB + 512] == marker


def test_an_image_larger_than_the_disk_is_refused_before_any_write(tmp_path):
    disk = disk_file(tmp_path, 8 * MIB, b"OLD!")
    fetch, asked = store(CHUNKS)
    with pytest.raises(AgentError, match="larger than"):
        write_image(image_of(CHUNKS, 16 * MIB, zeroed=True), disk, fetch, lambda d, t: None)
    assert asked == [] and Path(disk.path).read_bytes() == b"OLD!" * (2 * MIB)


def test_a_corrupt_chunk_is_never_written(tmp_path):
    disk = disk_file(tmp_path, 32 * MIB, b"OLD!")
    bad = sha(CHUNKS[4 * MIB])
    fetch, _ = store(CHUNKS, corrupt=bad)
    with pytest.raises(AgentError, match=f"chunk {bad} .* does not match"):
        write_image(image_of(CHUNKS, 16 * MIB, zeroed=True), disk, fetch, lambda d, t: None)
    assert Path(disk.path).read_bytes()[4 * MIB : 5 * MIB] == b"OLD!" * (MIB // 4)


@pytest.mark.parametrize(
    ("extents", "message"),
    [
        ([{"offset": 0, "length": 10, "sha256": "0" * 64}, {"offset": 5, "length": 10, "sha256": "0" * 64}],
         "overlaps"),
        ([{"offset": 95, "length": 10, "sha256": "0" * 64}], "past the image"),
        ([{"offset": 0, "length": 0, "sha256": "0" * 64}], "bytes long"),
        ([{"offset": 0, "length": 1, "sha256": "xyz"}], "SHA-256"),
        ([{"offset": -1, "length": 1, "sha256": "0" * 64}], "byte count"),
    ],
)  # fmt: skip
def test_malformed_extents_are_refused(extents, message):
    with pytest.raises(ProtocolError, match=message):
        parse_image({"virtual_size": 100, "chunk_url": "chunks/{sha256}", "extents": extents})


def test_a_parsed_image_lists_its_holes():
    image = parse_image(
        {
            "virtual_size": 100,
            "chunk_url": "c/{sha256}",
            "zeroed": True,
            "extents": [
                {"offset": 10, "length": 10, "sha256": "a" * 64},
                {"offset": 20, "length": 5, "sha256": "b" * 64},
            ],
        }
    )
    assert image.zeroed and image.data_bytes == 15 and image.holes() == [(0, 10), (25, 75)]
