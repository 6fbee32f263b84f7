"""The authorization matrix shared by every level: the route table, who may call what, and the check.

A case names one call (method, path, body), the least privileged role allowed to make it and the status
that role gets. `check_case` makes every refused role's call (each must get 401 in HIL's error shape and
change nothing, as a snapshot of the databases shows) and then the allowed one. `covered_routes` maps the
cases onto the OpenAPI document's routes the way the router does (first match in registration order), so
a test can insist that the cases and the routes are the same set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

#: member is in p1, other is in p2 (and not p1), anon has no credentials, admin is an administrator.
ROLES = ("member", "other", "anon", "admin")
OBM = {"type": "mock", "host": "bmc9", "user": "u", "password": "p"}
EMPTY = hashlib.sha256(b"").hexdigest()  # the blob a body-less PUT uploads
BLOB_A, BLOB_B = hashlib.sha256(b"kernel").hexdigest(), hashlib.sha256(b"spare").hexdigest()
#: The one chunk of whole-disk image disk1 (p1's), and the body that registers disk1 once it is uploaded.
CHUNK = b"chunk"
CHUNK_A = hashlib.sha256(CHUNK).hexdigest()
DISK1 = {
    "project": "p1",
    "disk": {
        "format": "raw",
        "virtual_size": len(CHUNK),
        "logical_sha256": CHUNK_A,
        "extents": [{"offset": 0, "length": len(CHUNK), "sha256": CHUNK_A}],
    },
}
#: A chunk upload's body is raw bytes; the callers send a case's body as JSON: the string's JSON form.
CHUNK_PUT = hashlib.sha256(b'"a chunk"').hexdigest()


class Case(NamedTuple):
    method: str
    path: str  # may hold {sid} (a networking action of n1), {job} (a provision job of n1), {group} (its)
    body: Any
    least: str  # the least privileged role allowed: "member", "other", "anon" or "admin"
    status: int  # what that role gets
    error: str = "BadArgumentError"  # the error type, when status is an error
    why: str = ""  # why the case differs from the base instance's (at a recursive level)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


# The base instance's matrix (tests/test_api_authz.py builds its fixture).
CASES = [
    Case("GET", "/projects", None, "admin", 200),
    Case("PUT", "/project/p9", None, "admin", 200),
    Case("DELETE", "/project/pe", None, "admin", 200),
    Case("POST", "/project/p1/connect_node", {"node": "n2"}, "member", 200),
    Case("POST", "/project/p1/detach_node", {"node": "n3"}, "member", 200),
    Case("GET", "/project/p1/nodes", None, "member", 200),
    Case("GET", "/project/p1/networks", None, "member", 200),
    Case("GET", "/nodes/free", None, "other", 200),
    Case("GET", "/nodes/all", None, "other", 200),
    Case("PUT", "/node/n9", {"obm": OBM}, "admin", 200),
    Case("DELETE", "/node/nx", None, "admin", 200),
    Case("GET", "/node/n1", None, "member", 200),
    Case("PUT", "/node/n1/nic/eth5", {"macaddr": "52:54:00:00:05:05"}, "admin", 200),
    Case("DELETE", "/node/n4/nic/eth0", None, "admin", 200),
    Case("PUT", "/node/n1/metadata/x", {"value": 1}, "admin", 200),
    Case("DELETE", "/node/n1/metadata/m", None, "admin", 200),
    Case("PUT", "/node/n1/obm", {"enabled": False}, "member", 200),
    Case("PUT", "/node/n1/obm_credentials", {"user": "u2", "password": "new"}, "admin", 200),
    Case("POST", "/node/n1/power_on", None, "member", 200),
    Case("POST", "/node/n1/power_off", None, "member", 200),
    Case("POST", "/node/n1/power_cycle", {"force": True}, "member", 200),
    Case("POST", "/node/n1/power_nmi", None, "member", 200),
    Case("GET", "/node/n1/power_status", None, "member", 200),
    Case("PUT", "/node/n1/boot_device", {"bootdev": "pxe"}, "member", 200),
    Case("GET", "/node/n1/console", None, "member", 200),
    Case("GET", "/networks", None, "other", 200),
    Case("PUT", "/network/new", {"owner": "p1", "access": "p1", "net_id": ""}, "member", 200),
    Case("PUT", "/network/newpub", {"owner": "admin", "access": "", "net_id": ""}, "admin", 200),
    Case("DELETE", "/network/net2", None, "member", 200),
    Case("GET", "/network/net1", None, "member", 200),
    Case("GET", "/network/net1/attachments", None, "member", 200),
    Case("PUT", "/network/net2/access/p2", None, "member", 200),
    Case("DELETE", "/network/net3/access/p2", None, "other", 200),
    Case("POST", "/node/n3/nic/eth0/connect_network", {"network": "net2"}, "member", 202),
    Case("POST", "/node/n1/nic/eth0/detach_network", {"network": "net1"}, "member", 202),
    Case("GET", "/networking_action/{sid}", None, "member", 200),
    Case("GET", "/switches", None, "admin", 200),
    Case("PUT", "/switch/swx", {"type": "mock"}, "admin", 200),
    Case("DELETE", "/switch/swe", None, "admin", 200),
    Case("GET", "/switch/sw0", None, "admin", 200),
    Case("PUT", "/switch/sw0/port/gi1/0/8", None, "admin", 200),
    Case("DELETE", "/switch/sw0/port/gi1/0/9", None, "admin", 200),
    Case("GET", "/switch/sw0/port/gi1/0/1", None, "admin", 200),
    Case("GET", "/switch/sw0/port/gi1/0/1/state", None, "admin", 200),
    Case("POST", "/switch/sw0/port/gi1/0/9/connect_nic", {"node": "n4", "nic": "eth1"}, "admin", 200),
    Case("POST", "/switch/sw0/port/gi1/0/4/detach_nic", None, "admin", 200),
    Case("POST", "/switch/sw0/port/gi1/0/1/revert", None, "admin", 200),
    Case("GET", "/auth/basic/users", None, "admin", 200),
    Case("PUT", "/auth/basic/user/dave", {"password": "pw"}, "admin", 200),
    Case("DELETE", "/auth/basic/user/carol", None, "admin", 200),
    Case("PATCH", "/auth/basic/user/carol", {"is_admin": True}, "admin", 200),
    Case("POST", "/auth/basic/user/carol/add_project", {"project": "p1"}, "admin", 200),
    Case("POST", "/auth/basic/user/carol/remove_project", {"project": "p2"}, "admin", 200),
    Case("GET", "/active_extensions", None, "other", 200),
    Case("POST", "/project/p1/connect_nodes", {"count": 1}, "member", 200),
    Case("GET", "/images", None, "other", 200),
    Case("PUT", "/image/new", {"project": "p1", "kernel": BLOB_A, "initrd": BLOB_A}, "member", 200),
    Case("GET", "/image/img1", None, "member", 200),
    Case("DELETE", "/image/img1", None, "member", 200),
    Case("PUT", f"/blob/{EMPTY}", None, "other", 200),
    Case("GET", f"/blob/{BLOB_A}", None, "member", 200),
    Case("DELETE", f"/blob/{BLOB_B}", None, "admin", 200),
    Case("PUT", f"/chunk/{CHUNK_PUT}", "a chunk", "other", 200),
    Case("GET", f"/chunk/{CHUNK_A}", None, "member", 200),
    Case("POST", "/chunks/missing", {"sha256": [CHUNK_A]}, "other", 200),
    Case("POST", "/chunks/prune", {"min_age": 0}, "admin", 200),
    Case("GET", "/image/disk1/manifest", None, "member", 200),
    Case("PUT", "/node/n2/fpbl", {}, "admin", 200),
    Case("POST", "/node/n3/provision", {"image": "img1"}, "member", 202),
    Case("GET", "/node/n1/provisioning", None, "member", 200),
    Case("GET", "/provision_job/{job}", None, "member", 200),
    Case("POST", "/provision_group", {"nodes": ["n3"], "image": "img1"}, "member", 202),
    Case("GET", "/provision_group/{group}", None, "member", 200),
    Case("GET", "/pool", None, "admin", 200),
    # On a base instance the pool routes answer 400 ("no upstream") to admins; others are refused first.
    Case("POST", "/pool/grow", {"count": 1}, "admin", 400),
    Case("POST", "/pool/shrink", {"count": 1}, "admin", 400),
    Case("POST", "/pool/reconcile", {"fix": False}, "admin", 400),
]


def allowed_roles(least: str) -> set[str]:
    """The roles that may make a call whose least privileged allowed role is ``least``.

    A route for project members is refused to members of other projects: "other" is allowed only where
    any authenticated caller is.
    """
    return {
        "admin": {"admin"},
        "member": {"member", "admin"},
        "other": {"member", "other", "admin"},
        "anon": set(ROLES),
    }[least]


class Calls(Protocol):
    """What `check_case` needs of a role's caller (tests/conftest.py's ``Caller``)."""

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any: ...

    def error(self, method: str, path: str, body: Any, status: int, type_: str) -> str: ...


def check_case(case: Case, callers: Mapping[str, Calls], snapshot: Callable[[], object], path: str) -> Any:
    """Every refused role gets 401 and changes nothing; then ``case.least`` gets ``case.status``.

    ``path`` is ``case.path`` with its placeholders filled in; ``snapshot`` returns the whole state the
    refusals must not change (every database involved, as nested dicts). A least privileged call that
    gets an error must not change anything either. Returns the allowed call's answer (its parsed body,
    or its error message).
    """
    before = snapshot()
    for role in ROLES:
        if role not in allowed_roles(case.least):
            callers[role].error(case.method, path, case.body, 401, "AuthorizationError")
            after = snapshot()
            assert after == before, f"{role}'s refused {case.id} changed {changed(before, after)}"
    if case.status < 400:
        return callers[case.least].ok(case.method, path, case.body, status=case.status)
    message = callers[case.least].error(case.method, path, case.body, case.status, case.error)
    after = snapshot()
    assert after == before, f"{case.id}, answered {case.status}, changed {changed(before, after)}"
    return message


def changed(before: object, after: object, where: str = "") -> list[str]:
    """Where two snapshots differ: the paths of the innermost dict keys whose values differ."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return [where or "everything"] if before != after else []
    return [
        place
        for key in sorted(set(before) | set(after), key=str)
        for place in changed(before.get(key), after.get(key), f"{where}/{key}" if where else str(key))
    ]


def api_routes(openapi: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (method, path template) of every user route (under /v0, prefix dropped), in the router's order.

    The FPBL agents' API (/agent/v1) authenticates nodes, not users, and the network boot routes
    (/boot/v1) serve firmware that has no credentials: tests/test_provisioning_api.py covers them.
    """
    return [
        (method.upper(), path.removeprefix("/v0"))
        for path, ops in openapi["paths"].items()
        if path.startswith("/v0/")
        for method in ops
    ]


def route_of(routes: Iterable[tuple[str, str]], method: str, path: str) -> tuple[str, str] | None:
    """The route a call goes to: the first that matches, as in the router (None if none does)."""
    for route_method, template in routes:
        if route_method == method and _matches(template, path):
            return route_method, template
    return None


def covered_routes(routes: list[tuple[str, str]], cases: Iterable[Case]) -> set[tuple[str, str]]:
    """The routes the cases call; asserts that each case calls one."""
    covered = set()
    for case in cases:
        route = route_of(routes, case.method, case.path)
        assert route is not None, f"{case.id} is no route of the API"
        covered.add(route)
    return covered


def _matches(template: str, path: str) -> bool:
    parts = re.split(r"(\{[^}]+\})", template)
    # A port name may hold "/"; any other parameter is one path segment.
    pattern = "".join(
        (".+" if part == "{port}" else "[^/]+") if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.fullmatch(pattern, path) is not None
