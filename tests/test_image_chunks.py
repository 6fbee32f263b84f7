"""Whole-disk images in the chunk store: registered as they come (raw, qcow2, compressed raw), stored
once as chunks in the database (holes neither stored nor sent), checked by the server, private to who may
use them, and gone with the last image holding them. Runs on SQLite and PostgreSQL; one test runs two API
servers on one PostgreSQL database.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from alembic import command
from api_helpers import Caller
from click.testing import CliRunner
from dbdump import dump
from disk_images import file_sha256
from sqlalchemy import func, select

from rhaas.cli.common import CliState
from rhaas.cli.main import cli
from rhaas.client import Client
from rhaas.client.base import Connection
from rhaas.core import images
from rhaas.core.access import ADMIN
from rhaas.core.chunks import CHUNK_SIZE, PIECE_SIZE, check_manifest, piece_digests, pieces, store_chunk
from rhaas.db.models import Chunk, ChunkUpload, ImageExtent
from rhaas.db.session import alembic_config, make_engine, make_sessionmaker, upgrade
from rhaas.errors import BadArgumentError, DuplicateError, NotFoundError
from rhaas.lab.servers import Server

MIB = 2**20
#: (offset, length) of the data in the test disk: windows 0, 1, 2 (a range straddling 1 and 2), 4, 9 hold
#: data; window 3 holds written zeros; 5-8 and the last, 10, are holes.
DATA = [(0, 3000), (5 * MIB + 100, 70_000), (8 * MIB - 10, 20), (17 * MIB, 2 * MIB), (38 * MIB, 512)]
SIZE = 40 * MIB + 12288
DATA_WINDOWS = 5
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_disk(path: Path, seed: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in DATA:
            f.seek(offset)
            f.write((seed + os.urandom(length))[:length])
        f.seek(13 * MIB)
        f.write(bytes(MIB))
    return path


def windows_of(path: Path) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each data window of a raw file: what the store must hold."""
    out = []
    with open(path, "rb") as f:
        offset = 0
        while window := f.read(CHUNK_SIZE):
            if any(window):
                out.append((offset, window))
            offset += len(window)
    return out


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("disks")
    raw = make_disk(root / "disk.raw")
    made = {"raw": raw}
    with open(raw, "rb") as inp, gzip.open(root / "disk.raw.gz", "wb") as out:
        shutil.copyfileobj(inp, out)
    made["gzip"] = root / "disk.raw.gz"
    with open(raw, "rb") as inp, lzma.open(root / "disk.raw.xz", "wb") as out:
        shutil.copyfileobj(inp, out)
    made["xz"] = root / "disk.raw.xz"
    if shutil.which("qemu-img"):
        for name, args in {"qcow2": [], "qcow2-compressed": ["-c"]}.items():
            made[name] = root / f"{name}.qcow2"
            convert = ["qemu-img", "convert", "-f", "raw", *args, "-O", "qcow2", str(raw), str(made[name])]
            subprocess.run(convert, check=True, timeout=120)
            made[f"{name}-out"] = root / f"{name}.out"
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(made[name]), str(made[f"{name}-out"])],
                           check=True, timeout=120)  # fmt: skip
    return made


@pytest.fixture
def site(site):
    """The site, and carol: a user in no project."""
    site.admin.ok("PUT", "/auth/basic/user/carol", {"password": "carolpw"})
    site.carol = Caller(site.client, "carol", "carolpw")
    return site


def client(site, user: str = "alice", password: str = "alicepw") -> Client:
    return Client("http://testserver", user, password, http=site.client)


@pytest.fixture
def wire(monkeypatch) -> dict[str, int]:
    """Counts the chunk bytes the client puts on the wire."""
    sent = {"chunks": 0, "bytes": 0}
    real = Connection.put_bytes

    def counting(self, path, content):
        parts = list(content)
        if path.startswith("chunk/"):
            sent["chunks"] += 1
            sent["bytes"] += sum(len(p) for p in parts)
        return real(self, path, parts)

    monkeypatch.setattr(Connection, "put_bytes", counting)
    return sent


def stored(site) -> dict[str, int]:
    with site.sessions() as db:
        return {d: n for d, n in db.execute(select(Chunk.sha256, Chunk.size))}


def upload(caller, data: bytes, digest: str | None = None) -> httpx.Response:
    headers = {**caller.headers, "Content-Type": "application/octet-stream"}
    return caller.client.put(f"/v0/chunk/{digest or sha(data)}", content=data, headers=headers)


def manifest_of(windows: list[tuple[int, bytes]], size: int, logical: str, fmt: str = "raw") -> dict:
    extents = [{"offset": o, "length": len(w), "sha256": sha(w)} for o, w in windows]
    return {"format": fmt, "virtual_size": size, "logical_sha256": logical, "extents": extents}


# -- registering --------------------------------------------------------------------------------------------
@needs_qemu_img
@pytest.mark.parametrize("fmt", ["qcow2", "qcow2-compressed"])
def test_qcow2_is_stored_as_its_data_chunks_with_the_logical_sha256_of_qemu_img(site, disks, wire, fmt):
    expected = windows_of(disks[f"{fmt}-out"])
    assert len(expected) == DATA_WINDOWS
    with client(site) as c:
        result = c.image.register_disk("q-os", disks[fmt], project="p1")
        shown = c.image.show("q-os")
    logical = file_sha256(disks[f"{fmt}-out"])
    assert result["logical_sha256"] == logical == shown["disk"]["logical_sha256"]
    assert shown["disk"] == {
        "format": "qcow2",
        "virtual_size": disks[f"{fmt}-out"].stat().st_size,
        "logical_sha256": logical,
        "chunk_size": CHUNK_SIZE,
        "chunks": DATA_WINDOWS,
        "stored_bytes": sum(len(w) for _, w in expected),
    }
    assert shown["kernel"] is None and shown["initrd"] is None
    # Only the data windows went over the wire and into the store: no hole, not the written zeros.
    assert wire == {"chunks": DATA_WINDOWS, "bytes": sum(len(w) for _, w in expected)}
    assert stored(site) == {sha(w): len(w) for _, w in expected}
    assert (result["chunks"], result["holes"], result["uploaded_chunks"]) == (DATA_WINDOWS, 6, DATA_WINDOWS)


@pytest.mark.parametrize("fmt", ["raw", "gzip", "xz"])
def test_every_format_gives_the_same_content_and_a_second_register_uploads_nothing(site, disks, wire, fmt):
    with client(site) as c:
        first = c.image.register_disk("one", disks[fmt], project="p1")
        sent = dict(wire)
        again = c.image.register_disk("two", disks["raw"], project="p1")
        shown = c.image.show("two")["disk"]
    assert first["format"] == fmt and first["virtual_size"] == SIZE
    assert first["logical_sha256"] == file_sha256(disks["raw"]) == again["logical_sha256"]
    assert sent["chunks"] == DATA_WINDOWS
    assert again["uploaded_chunks"] == 0 and wire == sent  # the second register sent no chunk at all
    assert shown["format"] == "raw" and shown["chunks"] == DATA_WINDOWS
    assert len(stored(site)) == DATA_WINDOWS


def test_zstd_registers_the_same_content(site, disks, tmp_path):
    pytest.importorskip("zstandard")
    path = tmp_path / "disk.raw.zst"
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(disks["raw"]), "-o", str(path)], check=True, timeout=120)
    else:
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(disks["raw"].read_bytes()))
    with client(site) as c:
        result = c.image.register_disk("z-os", path, project="p1")
    assert result["format"] == "zstd" and result["logical_sha256"] == file_sha256(disks["raw"])


def test_an_image_of_holes_only_stores_nothing(site, tmp_path, wire):
    path = tmp_path / "blank.raw"
    with open(path, "wb") as f:
        f.truncate(10 * MIB + 1)
    with client(site) as c:
        result = c.image.register_disk("blank", path, project="p1")
        manifest = c.image.manifest("blank")
    assert result["logical_sha256"] == file_sha256(path)
    assert manifest["extents"] == [] and result["holes"] == 3
    assert wire["chunks"] == 0 and stored(site) == {}


def test_kernel_and_initrd_overrides_are_kept_with_a_whole_disk_image(site, disks):
    for data in (b"kernel", b"initrd"):
        headers = {**site.alice.headers, "Content-Type": "application/octet-stream"}
        site.client.put(f"/v0/blob/{sha(data)}", content=data, headers=headers).raise_for_status()
    with client(site) as c:
        overrides = {"kernel": sha(b"kernel"), "initrd": sha(b"initrd"), "cmdline": "root=/dev/sda1"}
        c.image.register_disk("k-os", disks["raw"], project="p1", **overrides)
        shown = c.image.show("k-os")
    assert shown["kernel"] == {"sha256": sha(b"kernel"), "size": 6}
    assert shown["initrd"]["sha256"] == sha(b"initrd") and shown["cmdline"] == "root=/dev/sda1"
    assert shown["disk"]["chunks"] == DATA_WINDOWS


def test_export_gives_back_the_content_through_the_chunks(site, disks, tmp_path):
    with client(site) as c:
        c.image.register_disk("x-os", disks["gzip"], project="p1")
        out = tmp_path / "exported.raw"
        result = c.image.export_disk("x-os", out)
    assert out.read_bytes() == disks["raw"].read_bytes()
    assert result["logical_sha256"] == file_sha256(disks["raw"])


# -- what the server checks ------------------------------------------------------------------------------
def uploaded_manifest(site, path: Path) -> dict:
    windows = windows_of(path)
    for _, window in windows:
        assert upload(site.alice, window).status_code == 200
    return manifest_of(windows, path.stat().st_size, file_sha256(path))


def test_register_errors_change_nothing(site, disks):
    good = uploaded_manifest(site, disks["raw"])
    extents = good["extents"]
    small = os.urandom(100)
    assert upload(site.alice, small).status_code == 200
    before = dump(site.sessions)
    shifted = [{**extents[0], "offset": 512}, *extents[1:]]
    unordered = [extents[1], extents[0], *extents[2:]]
    overlapping = [extents[0], extents[0], *extents[1:]]
    long = [{**extents[0], "length": CHUNK_SIZE + 1}, *extents[1:]]
    short = [{**extents[0], "length": 3000}, *extents[1:]]
    past_end = [*extents, {**extents[-1], "offset": SIZE + CHUNK_SIZE - SIZE % CHUNK_SIZE}]
    unknown = [*extents[:-1], {**extents[-1], "sha256": sha(b"never uploaded")}]
    swapped = [{**extents[0], "sha256": sha(small)}, *extents[1:]]  # a chunk shorter than its extent
    cases = [
        ({**good, "extents": shifted}, 400, "BadArgumentError", "chunk boundary"),
        ({**good, "extents": unordered}, 400, "BadArgumentError", "out of order"),
        ({**good, "extents": overlapping}, 400, "BadArgumentError", "out of order or overlaps"),
        ({**good, "extents": long}, 400, "BadArgumentError", "a chunk there is"),
        ({**good, "extents": short}, 400, "BadArgumentError", "a chunk there is"),
        ({**good, "extents": past_end}, 400, "BadArgumentError", "past the end"),
        ({**good, "extents": unknown}, 404, "NotFoundError", "not uploaded"),
        ({**good, "extents": swapped}, 400, "BadArgumentError", "holds 100"),
        ({**good, "logical_sha256": sha(b"other")}, 400, "BadArgumentError", "nothing was registered"),
        ({**good, "logical_sha256": "xyz"}, 400, "BadArgumentError", "not a sha256"),
        ({**good, "format": "vmdk"}, 400, "BadArgumentError", "not one of raw, qcow2"),
        ({**good, "virtual_size": 0}, 400, "ValidationError", ""),
        ({**good, "virtual_size": 2**60}, 400, "BadArgumentError", "virtual size"),
        ({**good, "extents": [{**extents[0], "extra": 1}]}, 400, "ValidationError", ""),
        ({**good, "extents": "all"}, 400, "ValidationError", ""),
    ]
    for disk, status, type_, words in cases:
        msg = site.alice.error("PUT", "/image/bad", {"project": "p1", "disk": disk}, status, type_)
        assert words in msg, (disk, msg)
    body = {"project": "p1", "disk": good}
    site.alice.error("PUT", "/image/bad", {**body, "kernel": sha(b"k")}, 400, "BadArgumentError")  # no initrd
    site.alice.error("PUT", "/image/bad", {**body, "project": "p2"}, 401, "AuthorizationError")
    site.bob.error("PUT", "/image/bad", {**body, "project": "p2"}, 404, "NotFoundError")  # not bob's chunks
    site.alice.error("PUT", "/image/bad", {**body, "project": None}, 401, "AuthorizationError")
    site.alice.error("PUT", "/image/bad", {"project": "p1"}, 400, "BadArgumentError")  # no kernel, no disk
    assert dump(site.sessions) == before
    site.alice.ok("PUT", "/image/good", body)
    site.alice.error("PUT", "/image/good", body, 409, "DuplicateError")


def test_chunk_upload_refusals_keep_nothing(site):
    before = dump(site.sessions)
    data = os.urandom(1000)
    cases = [
        (upload(site.alice, data, sha(b"other")), 400, "not " + sha(b"other")),
        (upload(site.alice, bytes(CHUNK_SIZE)), 400, "all zeros"),
        (upload(site.alice, bytes(100)), 400, "all zeros"),
        (upload(site.alice, b""), 400, "empty"),
        (upload(site.alice, os.urandom(CHUNK_SIZE + 1)), 400, "at most"),
        (upload(site.alice, data, "not-a-digest"), 400, "not a sha256"),
        (upload(site.anon, data), 401, ""),
        (upload(site.carol, data), 401, "project members"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"type", "msg"} and words in response.json()["msg"]
    assert dump(site.sessions) == before
    assert upload(site.alice, data).json() == {"sha256": sha(data), "size": 1000}


# -- who learns and reads what ---------------------------------------------------------------------------
def test_a_stranger_learns_nothing_of_a_private_image_and_cannot_bind_its_chunks(site, disks):
    body = {"project": "p1", "disk": uploaded_manifest(site, disks["raw"])}
    site.alice.ok("PUT", "/image/a-disk", body)
    digests = [e["sha256"] for e in body["disk"]["extents"]]
    # Alice has them; bob is told they are missing, as if nobody had them; the anonymous are refused.
    assert site.alice.ok("POST", "/chunks/missing", {"sha256": digests}) == {"missing": []}
    assert site.bob.ok("POST", "/chunks/missing", {"sha256": digests}) == {"missing": digests}
    unknown = sha(b"nobody has this")
    assert site.bob.ok("POST", "/chunks/missing", {"sha256": [unknown, unknown]}) == {"missing": [unknown]}
    site.anon.error("POST", "/chunks/missing", {"sha256": digests}, 401, "AuthorizationError")
    site.carol.error("POST", "/chunks/missing", {"sha256": digests}, 401, "AuthorizationError")
    site.alice.error("POST", "/chunks/missing", {"sha256": ["x"]}, 400, "BadArgumentError")
    site.alice.error("POST", "/chunks/missing", {"sha256": [unknown] * 1025}, 400, "BadArgumentError")
    # Bob may neither read them nor name them in an image of his own by their digests alone.
    get = site.client.get
    assert get(f"/v0/chunk/{digests[0]}", headers=site.bob.headers).status_code == 401
    assert get(f"/v0/chunk/{unknown}", headers=site.bob.headers).status_code == 404
    assert get(f"/v0/chunk/{digests[0]}", headers=site.alice.headers).status_code == 200
    assert get(f"/v0/chunk/{digests[0]}", headers=site.admin.headers).status_code == 200
    site.bob.error("PUT", "/image/b-disk", {**body, "project": "p2"}, 404, "NotFoundError")
    # Once bob sent the bytes himself (deduplicated: the store does not grow), they are his to use.
    before = stored(site)
    with open(disks["raw"], "rb") as f:
        for extent in body["disk"]["extents"]:
            f.seek(extent["offset"])
            assert upload(site.bob, f.read(extent["length"])).status_code == 200
            assert extent["sha256"] in before
    assert stored(site) == before
    assert site.bob.ok("POST", "/chunks/missing", {"sha256": digests}) == {"missing": []}
    site.bob.ok("PUT", "/image/b-disk", {**body, "project": "p2"})


def test_a_public_image_shares_its_chunks_with_every_project(site, disks, wire):
    with Client("http://testserver", "admin", "adminpw", http=site.client) as c:
        c.image.register_disk("pub-disk", disks["raw"], project=None)
    sent = dict(wire)
    with client(site, "bob", "bobpw") as c:
        result = c.image.register_disk("bob-disk", disks["raw"], project="p2")
        assert c.image.manifest("pub-disk")["logical_sha256"] == result["logical_sha256"]
    assert result["uploaded_chunks"] == 0 and wire == sent


def test_manifest_is_for_those_who_may_use_the_image(site, disks):
    body = {"project": "p1", "disk": uploaded_manifest(site, disks["raw"])}
    site.alice.ok("PUT", "/image/a-disk", body)
    manifest = site.alice.ok("GET", "/image/a-disk/manifest")
    assert manifest == {**body["disk"], "chunk_size": CHUNK_SIZE}
    site.bob.error("GET", "/image/a-disk/manifest", None, 401, "AuthorizationError")
    site.alice.error("GET", "/image/nope/manifest", None, 404, "NotFoundError")


# -- deleting -------------------------------------------------------------------------------------------
def test_deleting_images_keeps_shared_chunks_and_removes_the_last_ones(site, disks, tmp_path):
    other = tmp_path / "other.raw"  # window 0 differs, the others are the first disk's
    shutil.copy(disks["raw"], other)
    with open(other, "r+b") as f:
        f.write(os.urandom(100))
    with client(site) as c:
        c.image.register_disk("first", disks["raw"], project="p1")
        c.image.register_disk("second", other, project="p1")
        first = {e["sha256"] for e in c.image.manifest("first")["extents"]}
        second = {e["sha256"] for e in c.image.manifest("second")["extents"]}
        assert len(first & second) == DATA_WINDOWS - 1 and set(stored(site)) == first | second
        c.image.delete("first")
        assert set(stored(site)) == second
        with pytest.raises(NotFoundError):
            c.image.chunk(next(iter(first - second)))
        assert c.image.chunk(next(iter(second))) is not None
        c.image.delete("second")
    assert stored(site) == {}
    with site.sessions() as db:
        assert db.scalar(select(func.count()).select_from(ImageExtent)) == 0
        assert db.scalar(select(func.count()).select_from(ChunkUpload)) == 0


def test_prune_removes_only_old_uploads_that_no_image_holds(site, disks):
    used = uploaded_manifest(site, disks["raw"])
    site.alice.ok("PUT", "/image/kept", {"project": "p1", "disk": used})
    stray = os.urandom(5000)
    assert upload(site.alice, stray).status_code == 200
    site.alice.error("POST", "/chunks/prune", {"min_age": 0}, 401, "AuthorizationError")
    assert site.admin.ok("POST", "/chunks/prune", {"min_age": 3600}) == {"chunks": 0, "bytes": 0}
    assert site.admin.ok("POST", "/chunks/prune", {"min_age": 0}) == {"chunks": 1, "bytes": 5000}
    assert set(stored(site)) == {e["sha256"] for e in used["extents"]}


def test_a_whole_disk_image_is_one_to_provision_with(site, disks):
    site.alice.ok("PUT", "/image/a-disk", {"project": "p1", "disk": uploaded_manifest(site, disks["raw"])})
    with site.sessions() as db:
        assert images.get_image(db, ADMIN, "a-disk").manifest is not None
        shown = images.show_image(db, ADMIN, "a-disk")
    assert shown["disk"]["chunks"] == DATA_WINDOWS


def test_a_file_that_is_not_an_image_registers_nothing(site, tmp_path):
    path = tmp_path / "cut.qcow2"
    path.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(200))
    before = dump(site.sessions)
    with client(site) as c, pytest.raises(BadArgumentError, match="corrupt: a version 3 header"):
        c.image.register_disk("cut", path, project="p1")
    assert dump(site.sessions) == before


# -- the CLI ---------------------------------------------------------------------------------------------
def test_cli_registers_shows_lists_and_exports_a_whole_disk_image(site, disks, tmp_path):
    state = CliState(factory=lambda: client(site))
    runner = CliRunner()
    result = runner.invoke(cli, ["image", "register", "c-os", "--disk", str(disks["xz"]), "--project", "p1",
                                 "--json"], obj=state)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "xz" and data["uploaded_chunks"] == DATA_WINDOWS and data["mb_per_s"] > 0
    assert "read" in result.stderr and "MB/s" in result.stderr  # progress
    shown = runner.invoke(cli, ["image", "show", "c-os"], obj=state)
    assert "whole-disk image, uploaded as xz" in shown.stdout
    assert f"sha256:{file_sha256(disks['raw'])}" in shown.stdout
    listed = runner.invoke(cli, ["image", "list", "--json"], obj=state)
    assert json.loads(listed.stdout) == ["c-os"]
    out = tmp_path / "c-os.raw"
    exported = runner.invoke(cli, ["image", "export", "c-os", str(out)], obj=state)
    assert exported.exit_code == 0, exported.output
    assert file_sha256(out) == file_sha256(disks["raw"])
    bad = runner.invoke(cli, ["image", "register", "d", "--disk", "sha256:" + "0" * 64], obj=state)
    assert bad.exit_code == 2 and "whole-disk image is read from its file" in bad.output
    half = runner.invoke(cli, ["image", "register", "d", "--kernel", "k"], obj=state)
    assert half.exit_code == 2 and "both --kernel and --initrd" in half.output


# -- the schema ------------------------------------------------------------------------------------------
def test_downgrade_drops_whole_disk_images_and_upgrade_brings_the_tables_back(db_url, disks):
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            windows = windows_of(disks["raw"])
            for _, window in windows:
                store_chunk(db, ADMIN, sha(window), window)
            db.commit()  # as the uploads before a registration are
            extents = [(o, len(w), sha(w)) for o, w in windows]
            manifest = check_manifest("raw", SIZE, file_sha256(disks["raw"]), extents)
            images.register_disk_image(db, ADMIN, "pub-disk", manifest, project=None)
            db.commit()
            assert images.list_images(db, ADMIN) == ["pub-disk"]
    finally:
        engine.dispose()
    command.downgrade(alembic_config(db_url), "0007")
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            assert images.list_images(db, ADMIN) == []
            assert db.scalar(select(func.count()).select_from(Chunk)) == 0
    finally:
        engine.dispose()


def test_chunks_stored_before_pieces_existed_get_them_when_first_needed(db_url, disks):
    """Migration 0011 adds the digests of each chunk's pieces (what the agents' peer exchange checks);
    chunks stored before it have none until a deploy's work answer needs them."""
    command.downgrade(alembic_config(db_url), "0010")
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            window = windows_of(disks["raw"])[0][1]
            store_chunk(db, ADMIN, sha(window), window)
            row = db.get(Chunk, sha(window))
            assert row is not None and row.pieces == piece_digests(window), "computed as it is stored"
            row.pieces = None  # as a chunk stored before 0011 is
            db.commit()
            expected = [sha(window[at : at + PIECE_SIZE]) for at in range(0, len(window), PIECE_SIZE)]
            assert pieces(db, [sha(window)]) == {sha(window): expected}
            db.commit()
            assert db.scalar(select(Chunk.pieces).where(Chunk.sha256 == sha(window))) == piece_digests(window)
    finally:
        engine.dispose()


# -- several API servers, one database ------------------------------------------------------------------
@pytest.mark.slow
def test_two_api_servers_on_one_postgresql_share_the_chunk_store(db_url, tmp_path, disks):
    if not db_url.startswith("postgresql"):
        pytest.skip("the shared store is shown on PostgreSQL (SQLite serves one machine)")
    first = Server(db_url, tmp_path / "first.log", "--no-worker")
    second = Server(db_url, tmp_path / "second.log", "--no-worker")
    try:
        first.start()
        second.start()
        with first.client("admin", "adminpw") as admin:
            admin.put("/project/p1").raise_for_status()
            admin.put("/auth/basic/user/alice", json={"password": "alicepw"}).raise_for_status()
            admin.post("/auth/basic/user/alice/add_project", json={"project": "p1"}).raise_for_status()
        with Client(first.url, "alice", "alicepw") as one:
            result = one.image.register_disk("shared", disks["raw"], project="p1")
        with Client(second.url, "alice", "alicepw") as two:
            out = tmp_path / "via-second.raw"
            two.image.export_disk("shared", out)
            assert two.image.show("shared")["disk"]["logical_sha256"] == result["logical_sha256"]
            again = two.image.register_disk("shared-again", disks["gzip"], project="p1")
        assert out.read_bytes() == disks["raw"].read_bytes()
        assert again["uploaded_chunks"] == 0
        # Neither server wrote chunks to its own directory: the image store directories hold no chunk.
        for server in (first, second):
            store = server.log_path.with_name(server.log_path.stem + "-images")
            assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))
    finally:
        first.stop()
        second.stop()


def test_concurrent_chunk_uploads_to_a_real_server_all_land(server):
    """Uploads that wait for the database's write lock must not hold the server's event loop (they
    would hold the commit of the upload holding the lock with it)."""
    from concurrent.futures import ThreadPoolExecutor

    pieces = [os.urandom(CHUNK_SIZE) for _ in range(8)]
    with server.client("admin", "adminpw") as http:

        def put(data: bytes) -> int:
            return http.put(f"/chunk/{sha(data)}", content=data, timeout=60).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(put, pieces)) == [200] * 8
        missing = http.post("/chunks/missing", json={"sha256": [sha(p) for p in pieces]}).json()
    assert missing == {"missing": []}


def test_deleting_a_user_forgets_what_they_uploaded_and_keeps_the_chunks_images_hold(site, disks):
    body = {"project": "p1", "disk": uploaded_manifest(site, disks["raw"])}
    site.alice.ok("PUT", "/image/a-disk", body)
    stray = os.urandom(3000)
    assert upload(site.alice, stray).status_code == 200
    site.admin.ok("DELETE", "/auth/basic/user/alice")
    with site.sessions() as db:
        assert db.scalar(select(func.count()).select_from(ChunkUpload)) == 0
    assert set(stored(site)) == {e["sha256"] for e in body["disk"]["extents"]} | {sha(stray)}
    assert site.admin.ok("GET", "/image/a-disk/manifest")["extents"] == body["disk"]["extents"]


def test_a_taken_name_or_a_missing_project_is_refused_and_the_file_read_once_at_most(site, disks, wire):
    with client(site) as c:
        c.image.register_disk("taken", disks["raw"], project="p1")
        sent = dict(wire)
        with pytest.raises(DuplicateError, match="already exists"):
            c.image.register_disk("taken", disks["gzip"], project="p1")
        assert wire == sent  # refused before anything was read or sent
        with pytest.raises(NotFoundError, match="Project nope does not exist"):
            c.image.register_disk("other", disks["raw"], project="nope")
        assert c.image.list() == ["taken"]


def test_chunks_that_go_between_reading_and_registering_are_sent_again(site, disks, monkeypatch):
    from rhaas.client import images as client_images

    with client(site) as c:
        c.image.register_disk("first", disks["raw"], project="p1")
        real_scan = client_images._scan
        scans = []

        def scan_then_delete_first(*args, **kwargs):
            manifest = real_scan(*args, **kwargs)
            scans.append(args[2].uploaded_chunks)
            if len(scans) == 1:  # the chunks it found on the server go with the last image holding them
                site.alice.ok("DELETE", "/image/first")
            return manifest

        monkeypatch.setattr(client_images, "_scan", scan_then_delete_first)
        result = c.image.register_disk("second", disks["raw"], project="p1")
        assert scans == [0, DATA_WINDOWS] and result["uploaded_chunks"] == DATA_WINDOWS
        assert c.image.list() == ["second"]
        assert c.image.show("second")["disk"]["chunks"] == DATA_WINDOWS
