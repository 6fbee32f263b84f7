"""The return's disk wipe (rhaas.agent.disk): what each policy leaves readable, and how a sampled
verification catches a wipe that missed a range. Runs on plain files (no root); the lab tests prove the
same on a node's real disk."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rhaas.agent import disk as dk

SIZE = 64 * dk.MIB
#: Nonces planted where the next image would not overwrite them: past a small image, in the middle of
#: a partition, between metadata regions, in the last MiB, and at random offsets.
OFFSETS = [2 * dk.MIB, 2 * dk.MIB + 4097, 17 * dk.MIB, 31 * dk.MIB, 40 * dk.MIB, 47 * dk.MIB + 13,
           SIZE - dk.MIB + 100, SIZE - 4096]  # fmt: skip


def planted_disk(tmp_path, offsets: list[int]) -> tuple[dk.Disk, list[bytes]]:
    path = tmp_path / "disk"
    path.write_bytes(b"\x00" * SIZE)
    nonces = []
    with open(path, "r+b") as f:
        for offset in offsets:
            nonce = b"NONCE-" + os.urandom(8).hex().encode()
            f.seek(offset)
            f.write(nonce)
            nonces.append(nonce)
    part = (dk.MIB, 32 * dk.MIB)
    return dk.Disk("vda", str(path), SIZE, (part,)), nonces


def random_offsets(count: int) -> list[int]:
    return [int.from_bytes(os.urandom(4), "little") % (SIZE - 64) for _ in range(count)]


def test_the_default_wipe_leaves_no_nonce_anywhere_on_the_disk(tmp_path):
    disk, nonces = planted_disk(tmp_path, OFFSETS + random_offsets(4))
    assert dk.WIPE_POLICIES[0] == "full", "the first policy is the default one, documented so"
    wiped = dk.wipe(disk, dk.WIPE_POLICIES[0])
    assert wiped.regions == [(0, SIZE)]
    data = Path(disk.path).read_bytes()
    assert [n for n in nonces if n in data] == []
    dk.verify_zero(disk.path, dk.regions_to_verify(disk, wiped, "sample"))


def test_a_metadata_wipe_is_an_opt_in_that_leaves_the_data_between_its_regions(tmp_path):
    disk, nonces = planted_disk(tmp_path, OFFSETS)
    wiped = dk.wipe(disk, "metadata")
    data = Path(disk.path).read_bytes()
    assert sum(n in data for n in nonces) >= 5, "metadata wipes only the first/last MiB of each area"
    dk.verify_zero(disk.path, dk.regions_to_verify(disk, wiped, "sample"))  # and its own regions pass


def test_a_sampled_verification_reads_spread_samples_and_catches_what_a_wipe_missed(tmp_path):
    disk, _ = planted_disk(tmp_path, [])
    wiped = dk.wipe(disk, "full")
    regions = dk.regions_to_verify(disk, wiped, "sample")
    read = sum(n for _, n in regions)
    assert read < SIZE / 2, "a sample reads a fraction of the disk"
    assert regions[0][0] == 0 and regions[-1][0] + regions[-1][1] == SIZE, "first and last MiB are read"
    starts = [a for a, _ in regions]
    assert max(b - a for a, b in zip(starts, starts[1:], strict=False)) < SIZE / 4, "spread over the disk"
    # A range the wipe missed (data planted after it): a sample that lands there reports it.
    with open(disk.path, "r+b") as f:
        f.seek(40 * dk.MIB + 5000)
        f.write(b"LEFT BEHIND")
    aimed = (40 * dk.MIB + 5000).to_bytes(8, "little")
    with pytest.raises(dk.DiskError, match="not zero at byte"):
        dk.verify_zero(disk.path, dk.regions_to_verify(disk, wiped, "sample", rand=lambda _n: aimed))
    with pytest.raises(dk.DiskError, match=f"not zero at byte {40 * dk.MIB + 5000}"):
        dk.verify_zero(disk.path, dk.regions_to_verify(disk, wiped, "full"))


def test_samples_stay_inside_what_was_wiped_and_bad_modes_are_refused(tmp_path):
    disk, _ = planted_disk(tmp_path, [])
    wiped = dk.Wiped([(8 * dk.MIB, 24 * dk.MIB)], "test")
    for _ in range(20):
        for a, n in dk.regions_to_verify(disk, wiped, "sample"):
            assert a >= 8 * dk.MIB and a + n <= 32 * dk.MIB
    with pytest.raises(dk.DiskError, match="unknown verify mode"):
        dk.regions_to_verify(disk, wiped, "some")


def test_the_work_answer_names_the_verification_and_an_older_server_gets_a_full_one():
    from rhaas.agent.work import ProtocolError, Wipe, parse_work

    asked = parse_work({"action": "wipe", "job": "j1", "policy": "full", "verify": "sample"})
    assert asked == Wipe("j1", "full", False, "sample")
    assert parse_work({"action": "wipe", "job": "j2", "policy": "metadata"}).verify == "full"
    with pytest.raises(ProtocolError, match="unknown verify mode"):
        parse_work({"action": "wipe", "job": "j3", "policy": "full", "verify": "none"})


@pytest.fixture
def loop_disk(tmp_path):
    """A 200 MiB loop device (root) planted with nonces every 10 MiB; detached after the test."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup")
    path = tmp_path / "disk"
    size = 200 * dk.MIB
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, 10 * dk.MIB):
            f.seek(offset + 4096)
            f.write(b"NONCE-%d" % offset)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dk.Disk(Path(loop).name, loop, size, ()), path
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


def _spy_ioctl(monkeypatch, fail_from: int | None = None) -> list[tuple[int, int]]:
    """Record every BLKZEROOUT range; after the first ``fail_from`` calls, the device 'cannot'."""
    calls: list[tuple[int, int]] = []
    real = dk._ioctl_range

    def spy(fd: int, request: int, offset: int, length: int) -> bool:
        calls.append((offset, length))
        if fail_from is not None and len(calls) > fail_from:
            return False
        return real(fd, request, offset, length)

    monkeypatch.setattr(dk, "_ioctl_range", spy)
    return calls


def test_a_block_device_is_zeroed_by_the_device_a_bounded_step_at_a_time(loop_disk, monkeypatch):
    # One BLKZEROOUT over a whole disk queues every command at once: on a slow NVMe device the last ones
    # outlived the driver's I/O timeout, the controller was reset and the wipe failed (ENOSPC).
    disk, path = loop_disk
    calls = _spy_ioctl(monkeypatch)
    seen: list[int] = []
    wiped = dk.wipe(disk, "full", lambda done, total: seen.append(done))
    assert wiped.how == "zeroed by the device (BLKZEROOUT)"
    assert max(length for _, length in calls) <= dk.DEVICE_STEP
    assert sum(length for _, length in calls) == disk.size
    assert len(seen) >= disk.size // dk.DEVICE_STEP, "progress after each step"
    assert b"NONCE" not in path.read_bytes()


def test_what_the_device_could_not_zero_is_written_with_zeros(loop_disk, monkeypatch):
    disk, path = loop_disk
    calls = _spy_ioctl(monkeypatch, fail_from=1)
    wiped = dk.wipe(disk, "full")
    assert wiped.how == "written with zeros"
    assert calls[0] == (0, dk.DEVICE_STEP) and len(calls) == 2, calls
    assert b"NONCE" not in path.read_bytes()
    assert dk.verify_zero(disk.path, [(0, disk.size)]) == disk.size
