"""Images and the content-addressed blob store: uploads are verified, visibility follows projects, and
downloads honour HTTP Range."""

import hashlib
import os

from dbdump import dump

from rhaas.api.state import AppState

KERNEL = b"\x7fKERNEL" + os.urandom(4096)
INITRD = b"070701" + os.urandom(10_000)
DISK = b"RHAAS-DISK customer-data\n" + bytes(70_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(caller, data: bytes, digest: str | None = None):
    headers = {**caller.headers, "Content-Type": "application/octet-stream"}
    return caller.client.put(f"/v0/blob/{digest or sha(data)}", content=data, headers=headers)


def register(caller, name: str, project, **extra):
    body = {"project": project, "kernel": sha(KERNEL), "initrd": sha(INITRD), **extra}
    return caller.ok("PUT", f"/image/{name}", body)


def test_upload_is_stored_under_its_sha256_and_is_idempotent(site):
    response = upload(site.alice, KERNEL)
    assert response.status_code == 200, response.text
    assert response.json() == {"sha256": sha(KERNEL), "size": len(KERNEL)}
    stored = AppState.of(site.client.app).blobs.path(sha(KERNEL))
    assert stored.read_bytes() == KERNEL
    again = upload(site.bob, KERNEL)
    assert again.status_code == 200 and again.json()["size"] == len(KERNEL)


def test_upload_whose_bytes_do_not_match_keeps_nothing(site):
    before = dump(site.sessions)
    wrong = sha(b"something else")
    response = upload(site.alice, KERNEL, digest=wrong)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "BadArgumentError"
    assert wrong in response.json()["msg"] and sha(KERNEL) in response.json()["msg"]
    store = AppState.of(site.client.app).blobs
    assert not store.has(wrong)
    assert list(store.path(wrong).parent.iterdir()) == []  # no temporary file left behind
    assert dump(site.sessions) == before


def test_upload_refusals(site):
    assert upload(site.anon, KERNEL).status_code == 401
    response = upload(site.alice, KERNEL, digest="not-a-digest")
    assert response.status_code == 400 and response.json()["type"] == "BadArgumentError"
    response = site.alice.client.put(
        f"/v0/blob/{sha(KERNEL)}?x=1", content=KERNEL, headers=site.alice.headers
    )
    assert response.status_code == 400 and response.json()["type"] == "ValidationError"


def test_upload_over_the_size_limit_is_refused(site):
    AppState.of(site.client.app).blobs.max_bytes = 1000
    response = upload(site.alice, KERNEL)
    assert response.status_code == 400 and "limit" in response.json()["msg"]
    assert not AppState.of(site.client.app).blobs.has(sha(KERNEL))


def test_register_show_list_delete_private_image(site):
    for blob in (KERNEL, INITRD, DISK):
        assert upload(site.alice, blob).status_code == 200
    register(site.alice, "a-os", "p1", disk=sha(DISK), cmdline="console=ttyS0")
    shown = site.alice.ok("GET", "/image/a-os")
    assert shown == {
        "name": "a-os",
        "project": "p1",
        "kernel": {"sha256": sha(KERNEL), "size": len(KERNEL)},
        "initrd": {"sha256": sha(INITRD), "size": len(INITRD)},
        "disk": {"sha256": sha(DISK), "size": len(DISK)},
        "cmdline": "console=ttyS0",
    }
    assert site.alice.ok("GET", "/images") == ["a-os"]
    # Another project neither lists nor can use or delete it.
    assert site.bob.ok("GET", "/images") == []
    site.bob.error("GET", "/image/a-os", None, 401, "AuthorizationError")
    site.bob.error("DELETE", "/image/a-os", None, 401, "AuthorizationError")
    assert site.admin.ok("GET", "/images") == ["a-os"]
    site.alice.error("PUT", "/image/a-os", {"project": "p1", "kernel": sha(KERNEL), "initrd": sha(INITRD)},
                     409, "DuplicateError")  # fmt: skip
    assert "owns images" in site.admin.error("DELETE", "/project/p1", None, 409, "BlockedError")
    site.alice.ok("DELETE", "/image/a-os")
    assert site.alice.ok("GET", "/images") == []


def test_public_images_are_for_admins_to_register_and_everyone_to_use(site):
    for blob in (KERNEL, INITRD):
        upload(site.admin, blob)
    body = {"project": None, "kernel": sha(KERNEL), "initrd": sha(INITRD)}
    site.alice.error("PUT", "/image/pub", body, 401, "AuthorizationError")
    site.admin.ok("PUT", "/image/pub", body)
    assert site.alice.ok("GET", "/images") == ["pub"] == site.bob.ok("GET", "/images")
    assert site.bob.ok("GET", "/image/pub")["project"] is None
    site.bob.error("DELETE", "/image/pub", None, 401, "AuthorizationError")
    site.anon.error("GET", "/images", None, 401, "AuthorizationError")


def test_register_errors_change_nothing(site):
    upload(site.alice, KERNEL)
    before = dump(site.sessions)
    good = {"project": "p1", "kernel": sha(KERNEL), "initrd": sha(KERNEL)}
    cases = [
        ({**good, "initrd": sha(b"never uploaded")}, 404, "NotFoundError"),
        ({**good, "kernel": "xyz"}, 400, "BadArgumentError"),
        ({**good, "project": "p2"}, 401, "AuthorizationError"),
        ({**good, "project": "nope"}, 404, "NotFoundError"),
        ({**good, "cmdline": "a\nb"}, 400, "BadArgumentError"),
        ({**good, "extra": 1}, 400, "ValidationError"),
        ({"kernel": sha(KERNEL), "initrd": sha(KERNEL)}, 400, "ValidationError"),
    ]
    for body, status, type_ in cases:
        site.alice.error("PUT", "/image/img", body, status, type_)
    site.alice.error("PUT", "/image/" + "x" * 300, good, 400, "BadArgumentError")
    site.alice.error("PUT", "/image/a%09b", good, 400, "BadArgumentError")
    assert dump(site.sessions) == before


def test_download_whole_and_by_range(site):
    for blob in (KERNEL, INITRD, DISK):
        upload(site.alice, blob)
    register(site.alice, "a-os", "p1", disk=sha(DISK))
    get = site.alice.client.get
    whole = get(f"/v0/blob/{sha(DISK)}", headers=site.alice.headers)
    assert whole.status_code == 200 and whole.content == DISK
    part = get(f"/v0/blob/{sha(DISK)}", headers={**site.alice.headers, "Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == DISK[5:15]
    assert part.headers["content-range"] == f"bytes 5-14/{len(DISK)}"
    tail = get(f"/v0/blob/{sha(DISK)}", headers={**site.alice.headers, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == DISK[-10:]
    outside = get(f"/v0/blob/{sha(DISK)}", headers={**site.alice.headers, "Range": f"bytes={len(DISK)}-"})
    assert outside.status_code == 416 and outside.json()["type"] == "RangeNotSatisfiableError"
    garbage = get(f"/v0/blob/{sha(DISK)}", headers={**site.alice.headers, "Range": "lines=1-2"})
    assert garbage.status_code == 400 and garbage.json()["type"] == "ValidationError"
    # Only those who may use an image holding the blob can read it.
    assert get(f"/v0/blob/{sha(DISK)}", headers=site.bob.headers).status_code == 401
    assert get(f"/v0/blob/{sha(b'nothing')}", headers=site.bob.headers).status_code == 404
    assert get(f"/v0/blob/{sha(DISK)}", headers=site.admin.headers).status_code == 200


def test_a_blob_whose_bytes_left_the_store_is_a_clear_404_until_it_is_uploaded_again(site):
    for blob in (KERNEL, INITRD, DISK):
        upload(site.alice, blob)
    register(site.alice, "a-os", "p1", disk=sha(DISK))
    AppState.of(site.client.app).blobs.path(sha(DISK)).unlink()  # a damaged store, an operator's rm
    before = dump(site.sessions)
    response = site.alice.client.get(f"/v0/blob/{sha(DISK)}", headers=site.alice.headers)
    assert response.status_code == 404, response.text
    assert response.json() == {
        "type": "NotFoundError",
        "msg": f"Blob {sha(DISK)} is recorded but its bytes are missing from the image store; upload it"
        " again (PUT /v0/blob/<sha256>).",
    }
    assert dump(site.sessions) == before
    assert upload(site.alice, DISK).status_code == 200
    whole = site.alice.client.get(f"/v0/blob/{sha(DISK)}", headers=site.alice.headers)
    assert whole.status_code == 200 and whole.content == DISK


def test_blob_delete_only_when_unused(site):
    for blob in (KERNEL, INITRD):
        upload(site.admin, blob)
    register(site.admin, "pub", None)
    site.admin.error("DELETE", f"/blob/{sha(KERNEL)}", None, 409, "BlockedError")
    site.alice.error("DELETE", f"/blob/{sha(KERNEL)}", None, 401, "AuthorizationError")
    site.admin.ok("DELETE", "/image/pub")
    site.admin.ok("DELETE", f"/blob/{sha(KERNEL)}")
    assert not AppState.of(site.client.app).blobs.has(sha(KERNEL))
    site.admin.error("DELETE", f"/blob/{sha(KERNEL)}", None, 404, "NotFoundError")


def test_client_library_uploads_registers_and_downloads(site, tmp_path):
    from rhaas.client import Client

    files = {}
    for name, data in (("vmlinuz", KERNEL), ("initrd", INITRD), ("disk", DISK)):
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    with Client("http://testserver", "alice", "alicepw", http=site.client) as c:
        digests = {name: c.image.upload(path)["sha256"] for name, path in files.items()}
        c.image.register("a-os", project="p1", kernel=digests["vmlinuz"], initrd=digests["initrd"],
                         disk=digests["disk"])  # fmt: skip
        assert c.image.list() == ["a-os"]
        assert b"".join(c.image.download(digests["disk"])) == DISK
        assert b"".join(c.image.download(digests["disk"], (0, 9))) == DISK[:10]
