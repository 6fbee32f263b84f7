"""The image store lives in the database: every API server on one database serves the same images, and a
backup of the database is a backup of the images.

- An image registered through one real API server is provisioned through another (two ``rhaas-admin
  serve`` processes on one PostgreSQL database): the second hands the node's agent its work and serves
  the chunks, each with its digest, and they make up the image.
- A database backup (pg_dump / pg_restore into a new database; SQLite's ``.backup``) restored and served
  again exports the image with the same content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from api_helpers import make_api
from disk_images import file_sha256
from scaleout import fresh_database

from rhaas.client import Client
from rhaas.lab.servers import Server

MIB = 2**20
SIZE = 16 * MIB
#: Where the test image holds data (offset, length); the rest is holes.
DATA = ((0, 64 * 1024), (1 * MIB, 5 * MIB), (12 * MIB + 4096, 300 * 1024))
PG_ADMIN_URL = os.environ.get("RHAAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_disk(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in DATA:
            f.seek(offset)
            f.write(os.urandom(length))
    return path


def settings_file(path: Path, server: Server) -> Path:
    """Fast provisioning on, the agents' listener on ``server``'s own port."""
    path.write_text(
        f'[provisioning]\nenabled = true\nagent_listen = "{server.agent_listen}"\n'
        f'agent_url = "{server.agent_url}"\n'
    )
    return path


@pytest.mark.slow
def test_an_image_registered_on_one_api_server_is_provisioned_through_another(db_url, tmp_path):
    if not db_url.startswith("postgresql"):
        pytest.skip("several API servers share one PostgreSQL database (SQLite serves one machine)")
    disk = make_disk(tmp_path / "disk.raw")
    first = Server(db_url, tmp_path / "first.log", "--no-worker")
    second = Server(db_url, tmp_path / "second.log", "--no-worker")
    first.args += ("--config", str(settings_file(tmp_path / "first.toml", first)))
    second.args += ("--config", str(settings_file(tmp_path / "second.toml", second)))
    try:
        first.start()
        second.start()
        with first.client("admin", "adminpw") as admin:
            admin.put("/project/p1").raise_for_status()
            admin.put("/auth/basic/user/alice", json={"password": "alicepw"}).raise_for_status()
            admin.post("/auth/basic/user/alice/add_project", json={"project": "p1"}).raise_for_status()
            obm = {"type": "mock", "host": "bmc1", "user": "u", "password": "p"}
            admin.put("/node/n1", json={"obm": obm}).raise_for_status()
            admin.put("/node/n1/nic/eth0", json={"macaddr": "52:54:00:00:00:01"}).raise_for_status()
            cmdline = admin.put("/node/n1/fpbl", json={}).json()["cmdline"]
        secret = dict(w.split("=", 1) for w in cmdline.split())["rhaas.secret"]
        # The node's agent speaks to the second server's listener only (self-signed: agents pin it).
        agent = httpx.Client(
            base_url=f"{second.agent_url}/agent/v1/nodes/n1", verify=False, timeout=30,
            headers={"Authorization": f"Bearer {secret}"},
        )  # fmt: skip
        with agent:
            agent.post("/checkin", json={"mode": "ready", "boot_id": "b1"}).raise_for_status()
            with Client(first.url, "alice", "alicepw") as one:
                one.project.connect("p1", "n1")
                registered = one.image.register_disk("shared", disk, project="p1")
            assert registered["logical_sha256"] == file_sha256(disk)
            with Client(second.url, "alice", "alicepw") as two:
                group = two.node.provision_group(["n1"], "shared")
            job = group["jobs"]["n1"]

            item = agent.get("/work").json()
            assert (item["action"], item["job"]) == ("deploy", job)
            image = item["image"]
            assert image["virtual_size"] == SIZE
            assert image["chunk_url"] == f"{second.agent_url}/agent/v1/nodes/n1/chunks/{{sha256}}"
            agent.headers["Authorization"] = f"Bearer {item['secret']}"  # a hand-out rotates the secret
            out = tmp_path / "as-deployed.raw"
            with open(out, "wb") as f:
                f.truncate(image["virtual_size"])
                for extent in image["extents"]:
                    response = agent.get(f"/chunks/{extent['sha256']}")
                    response.raise_for_status()
                    assert len(response.content) == extent["length"]
                    assert hashlib.sha256(response.content).hexdigest() == extent["sha256"]
                    f.seek(extent["offset"])
                    f.write(response.content)
            assert file_sha256(out) == file_sha256(disk)
            # A chunk that is no part of this deploy is refused.
            assert agent.get(f"/chunks/{hashlib.sha256(b'other').hexdigest()}").status_code == 404

        # The group is the same object through either server: one deploy, handed out, in flight.
        with Client(first.url, "alice", "alicepw") as one:
            shown = one.node.show_provision_group(group["group_id"])
        assert shown["counts"] == {"done": 0, "in_flight": 1, "failed": 0, "queued": 0}
        assert shown["jobs"][0]["phase"] == "handed-out"
        # Neither server holds image content of its own: the store directories hold no chunk.
        for server in (first, second):
            store = server.log_path.with_name(server.log_path.stem + "-images")
            assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))
    finally:
        first.stop()
        second.stop()


def backup_and_restore(db_url: str, tmp_path: Path, restored_url: str) -> None:
    """Back the database up and restore it as ``restored_url``, as docs/admin.md says to."""
    if db_url.startswith("sqlite"):
        if not shutil.which("sqlite3"):
            pytest.skip("needs the sqlite3 command (Debian package sqlite3)")
        source = db_url.removeprefix("sqlite:///")
        target = restored_url.removeprefix("sqlite:///")
        subprocess.run(["sqlite3", source, f".backup '{target}'"], check=True, timeout=60)
        return
    if not shutil.which("pg_dump") or not shutil.which("pg_restore"):
        pytest.skip("needs pg_dump and pg_restore (Debian package postgresql-client)")
    dump = tmp_path / "rhaas.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", db_url], check=True, timeout=120)
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={restored_url}", str(dump)], check=True,
                   timeout=120)  # fmt: skip


def test_the_image_store_survives_a_backup_and_restore_of_the_database(db_url, tmp_path):
    disk = make_disk(tmp_path / "disk.raw")
    with make_api(db_url) as api:
        api.admin.ok("PUT", "/project/p1")
        with Client("http://testserver", "admin", "adminpw", http=api.client) as admin:
            registered = admin.image.register_disk("kept", disk, project="p1")
            manifest = admin.image.manifest("kept")
    assert registered["logical_sha256"] == file_sha256(disk)
    assert len(manifest["extents"]) >= 3

    if db_url.startswith("postgresql"):
        target: contextlib.AbstractContextManager[str] = fresh_database(PG_ADMIN_URL)
    else:
        target = contextlib.nullcontext(f"sqlite:///{tmp_path / 'restored.sqlite3'}")
    with target as restored:
        backup_and_restore(db_url, tmp_path, restored)
        with make_api(restored) as api, Client("http://testserver", "admin", "adminpw", http=api.client) as c:
            assert c.image.manifest("kept")["extents"] == manifest["extents"]
            for extent in manifest["extents"]:  # every chunk is there, with its content
                response = api.client.get(f"/v0/chunk/{extent['sha256']}", headers=api.admin.headers)
                assert response.status_code == 200, response.text
                assert hashlib.sha256(response.content).hexdigest() == extent["sha256"]
            out = tmp_path / "restored.raw"
            c.image.export_disk("kept", out)
    assert file_sha256(out) == file_sha256(disk) == registered["logical_sha256"]
