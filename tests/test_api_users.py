"""Database users and authentication."""

from api_helpers import Caller


def test_users_crud(api):
    admin = api.admin
    admin.ok("PUT", "/project/p1")
    admin.ok("PUT", "/auth/basic/user/alice", {"password": "pw"})
    admin.error("PUT", "/auth/basic/user/alice", {"password": "pw"}, 409, "DuplicateError")
    admin.ok("POST", "/auth/basic/user/alice/add_project", {"project": "p1"})
    admin.error("POST", "/auth/basic/user/alice/add_project", {"project": "p1"}, 409, "DuplicateError")
    admin.error("POST", "/auth/basic/user/alice/add_project", {"project": "nope"}, 404, "NotFoundError")
    assert admin.ok("GET", "/auth/basic/users") == {
        "admin": {"is_admin": True, "projects": []},
        "alice": {"is_admin": False, "projects": ["p1"]},
    }
    admin.ok("PATCH", "/auth/basic/user/alice", {"is_admin": True})
    assert admin.ok("GET", "/auth/basic/users")["alice"]["is_admin"] is True
    admin.error("PATCH", "/auth/basic/user/admin", {"is_admin": False}, 409, "IllegalStateError")
    admin.error("PATCH", "/auth/basic/user/alice", {}, 400, "ValidationError")
    admin.ok("POST", "/auth/basic/user/alice/remove_project", {"project": "p1"})
    admin.error("POST", "/auth/basic/user/alice/remove_project", {"project": "p1"}, 404, "NotFoundError")
    admin.ok("DELETE", "/auth/basic/user/alice")
    admin.error("DELETE", "/auth/basic/user/alice", None, 404, "NotFoundError")
    admin.error("PUT", "/auth/basic/user/bob", {"password": 5}, 400, "ValidationError")


def test_unknown_user_and_wrong_password_look_the_same(api):
    api.admin.ok("PUT", "/auth/basic/user/alice", {"password": "right"})
    unknown = Caller(api.client, "mallory", "x")("GET", "/nodes/all")
    wrong = Caller(api.client, "alice", "wrong")("GET", "/nodes/all")
    anonymous = api.anon("GET", "/nodes/all")
    assert unknown.status_code == wrong.status_code == anonymous.status_code == 401
    assert unknown.json() == wrong.json() == anonymous.json()
    assert unknown.json()["type"] == "AuthorizationError"
    garbage = api.client.get("/v0/nodes/all", headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401


def test_password_change_takes_effect_at_once_despite_the_cache(api):
    api.admin.ok("PUT", "/auth/basic/user/alice", {"password": "old"})
    old = Caller(api.client, "alice", "old")
    old.ok("GET", "/nodes/all")  # now cached
    api.admin.ok("PATCH", "/auth/basic/user/alice", {"password": "new"})
    assert old("GET", "/nodes/all").status_code == 401
    Caller(api.client, "alice", "new").ok("GET", "/nodes/all")


def test_password_is_verified_once_then_cached(api, monkeypatch):
    """HIL paid ~120 ms of KDF on every request; rhaas verifies once and remembers for a while. Counted,
    not timed: the machine's load must not decide this test."""
    from rhaas.api import auth

    api.admin.ok("PUT", "/auth/basic/user/carol", {"password": "carol-pw"})
    verified: list[str] = []
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        verified.append(password)
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    carol = Caller(api.client, "carol", "carol-pw")
    for _ in range(20):
        carol.ok("GET", "/nodes/all")
    assert verified == ["carol-pw"], f"{len(verified)} KDF verifications for 20 requests"
    wrong = Caller(api.client, "carol", "wrong")
    assert wrong("GET", "/nodes/all").status_code == 401
    assert verified == ["carol-pw", "wrong"], "a wrong password must be checked, not served from the cache"


def test_users_cannot_escalate(api):
    api.admin.ok("PUT", "/auth/basic/user/alice", {"password": "pw"})
    alice = Caller(api.client, "alice", "pw")
    alice.error("PATCH", "/auth/basic/user/alice", {"is_admin": True}, 401, "AuthorizationError")
    alice.error(
        "PUT", "/auth/basic/user/eve", {"password": "pw", "is_admin": True}, 401, "AuthorizationError"
    )
    alice.error("GET", "/auth/basic/users", None, 401, "AuthorizationError")
    alice.ok("PATCH", "/auth/basic/user/alice", {"password": "pw2"})  # own password: allowed
