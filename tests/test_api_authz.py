"""The authorization matrix: every route × admin, project member, member of another project, anonymous.

For each route, the callers who may not call it get 401 and change nothing; the least privileged caller
who may call it succeeds.
"""

import hashlib

import pytest
from conftest import make_api
from dbdump import dump

ROLES = ("member", "other", "anon", "admin")  # from least to most privileged; member is in p1
OBM = {"type": "mock", "host": "bmc9", "user": "u", "password": "p"}
EMPTY = hashlib.sha256(b"").hexdigest()  # the blob a body-less PUT uploads
BLOB_A, BLOB_B = hashlib.sha256(b"kernel").hexdigest(), hashlib.sha256(b"spare").hexdigest()

# (method, path, body, least privileged allowed role, success status)
CASES = [
    ("GET", "/projects", None, "admin", 200),
    ("PUT", "/project/p9", None, "admin", 200),
    ("DELETE", "/project/pe", None, "admin", 200),
    ("POST", "/project/p1/connect_node", {"node": "n2"}, "member", 200),
    ("POST", "/project/p1/detach_node", {"node": "n3"}, "member", 200),
    ("GET", "/project/p1/nodes", None, "member", 200),
    ("GET", "/project/p1/networks", None, "member", 200),
    ("GET", "/nodes/free", None, "other", 200),
    ("GET", "/nodes/all", None, "other", 200),
    ("PUT", "/node/n9", {"obm": OBM}, "admin", 200),
    ("DELETE", "/node/nx", None, "admin", 200),
    ("GET", "/node/n1", None, "member", 200),
    ("PUT", "/node/n1/nic/eth5", {"macaddr": "52:54:00:00:05:05"}, "admin", 200),
    ("DELETE", "/node/n4/nic/eth0", None, "admin", 200),
    ("PUT", "/node/n1/metadata/x", {"value": 1}, "admin", 200),
    ("DELETE", "/node/n1/metadata/m", None, "admin", 200),
    ("PUT", "/node/n1/obm", {"enabled": False}, "member", 200),
    ("PUT", "/node/n1/obm_credentials", {"user": "u2", "password": "new"}, "admin", 200),
    ("POST", "/node/n1/power_on", None, "member", 200),
    ("POST", "/node/n1/power_off", None, "member", 200),
    ("POST", "/node/n1/power_cycle", {"force": True}, "member", 200),
    ("POST", "/node/n1/power_nmi", None, "member", 200),
    ("GET", "/node/n1/power_status", None, "member", 200),
    ("PUT", "/node/n1/boot_device", {"bootdev": "pxe"}, "member", 200),
    ("GET", "/node/n1/console", None, "member", 200),
    ("GET", "/networks", None, "other", 200),
    ("PUT", "/network/new", {"owner": "p1", "access": "p1", "net_id": ""}, "member", 200),
    ("PUT", "/network/newpub", {"owner": "admin", "access": "", "net_id": ""}, "admin", 200),
    ("DELETE", "/network/net2", None, "member", 200),
    ("GET", "/network/net1", None, "member", 200),
    ("GET", "/network/net1/attachments", None, "member", 200),
    ("PUT", "/network/net2/access/p2", None, "member", 200),
    ("DELETE", "/network/net3/access/p2", None, "other", 200),
    ("POST", "/node/n3/nic/eth0/connect_network", {"network": "net2"}, "member", 202),
    ("POST", "/node/n1/nic/eth0/detach_network", {"network": "net1"}, "member", 202),
    ("GET", "/networking_action/{sid}", None, "member", 200),
    ("GET", "/switches", None, "admin", 200),
    ("PUT", "/switch/swx", {"type": "mock"}, "admin", 200),
    ("DELETE", "/switch/swe", None, "admin", 200),
    ("GET", "/switch/sw0", None, "admin", 200),
    ("PUT", "/switch/sw0/port/gi1/0/8", None, "admin", 200),
    ("DELETE", "/switch/sw0/port/gi1/0/9", None, "admin", 200),
    ("GET", "/switch/sw0/port/gi1/0/1", None, "admin", 200),
    ("GET", "/switch/sw0/port/gi1/0/1/state", None, "admin", 200),
    ("POST", "/switch/sw0/port/gi1/0/9/connect_nic", {"node": "n4", "nic": "eth1"}, "admin", 200),
    ("POST", "/switch/sw0/port/gi1/0/4/detach_nic", None, "admin", 200),
    ("POST", "/switch/sw0/port/gi1/0/1/revert", None, "admin", 200),
    ("GET", "/auth/basic/users", None, "admin", 200),
    ("PUT", "/auth/basic/user/dave", {"password": "pw"}, "admin", 200),
    ("DELETE", "/auth/basic/user/carol", None, "admin", 200),
    ("PATCH", "/auth/basic/user/carol", {"is_admin": True}, "admin", 200),
    ("POST", "/auth/basic/user/carol/add_project", {"project": "p1"}, "admin", 200),
    ("POST", "/auth/basic/user/carol/remove_project", {"project": "p2"}, "admin", 200),
    ("GET", "/active_extensions", None, "admin", 200),
    ("POST", "/project/p1/connect_nodes", {"count": 1}, "member", 200),
    ("GET", "/images", None, "other", 200),
    ("PUT", "/image/new", {"project": "p1", "kernel": BLOB_A, "initrd": BLOB_A}, "member", 200),
    ("GET", "/image/img1", None, "member", 200),
    ("DELETE", "/image/img1", None, "member", 200),
    ("PUT", f"/blob/{EMPTY}", None, "other", 200),
    ("GET", f"/blob/{BLOB_A}", None, "member", 200),
    ("DELETE", f"/blob/{BLOB_B}", None, "admin", 200),
    ("PUT", "/node/n2/fpbl", {}, "admin", 200),
    ("POST", "/node/n3/provision", {"image": "img1"}, "member", 202),
    ("GET", "/node/n1/provisioning", None, "member", 200),
    ("GET", "/provision_job/{job}", None, "member", 200),
    ("GET", "/pool", None, "admin", 200),
    # On a base instance the pool routes answer 400 ("no upstream") to admins; others are refused first.
    ("POST", "/pool/grow", {"count": 1}, "admin", 400),
    ("POST", "/pool/shrink", {"count": 1}, "admin", 400),
    ("POST", "/pool/reconcile", {"fix": False}, "admin", 400),
]


@pytest.fixture
def api(db_url):
    """The site with fast provisioning enabled, so that its routes answer."""
    with make_api(db_url, provisioning__enabled=True, provisioning__agent_url="http://10.0.2.2:5000") as api:
        yield api


def enroll_ready(site, node):
    """Enrol a free node and check its agent in, as an FPBL would."""
    cmdline = site.admin.ok("PUT", f"/node/{node}/fpbl", {})["cmdline"]
    secret = dict(w.split("=", 1) for w in cmdline.split())["rhaas.secret"]
    body = {"mode": "ready", "boot_id": "b1"}
    headers = {"Authorization": f"Bearer {secret}"}
    site.client.post(f"/agent/v1/nodes/{node}/checkin", json=body, headers=headers).raise_for_status()


@pytest.fixture
def matrix(site):
    admin, alice = site.admin, site.alice
    for node in ("n1", "n3"):
        enroll_ready(site, node)
    for project in ("pe",):
        admin.ok("PUT", f"/project/{project}")
    admin.ok("PUT", "/node/nx", {"obm": OBM})
    admin.ok("PUT", "/switch/swe", {"type": "mock"})
    admin.ok("PUT", "/switch/sw0/port/gi1/0/9")
    admin.ok("PUT", "/node/n4/nic/eth1", {"macaddr": "52:54:00:00:04:01"})
    admin.ok("PUT", "/node/n1/metadata/m", {"value": "v"})
    admin.ok("PUT", "/auth/basic/user/carol", {"password": "pw"})
    admin.ok("POST", "/auth/basic/user/carol/add_project", {"project": "p2"})
    alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    alice.ok("POST", "/project/p1/connect_node", {"node": "n3"})
    alice.ok("PUT", "/node/n1/obm", {"enabled": True})
    alice.ok("POST", "/node/n1/power_on")
    for net in ("net1", "net2", "net3"):
        alice.ok("PUT", f"/network/{net}", {"owner": "p1", "access": "p1", "net_id": ""})
    alice.ok("PUT", "/network/net3/access/p2")
    sid = alice.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "net1"}, status=202)["status_id"]
    assert alice.wait_action(sid)["status"] == "DONE"
    site.sid = sid
    for data in (b"kernel", b"spare"):
        digest = hashlib.sha256(data).hexdigest()
        site.client.put(f"/v0/blob/{digest}", content=data, headers=alice.headers).raise_for_status()
    alice.ok("PUT", "/image/img1", {"project": "p1", "kernel": BLOB_A, "initrd": BLOB_A})
    site.job = alice.ok("POST", "/node/n1/provision", {"image": "img1"}, status=202)["job_id"]
    site.callers = {"admin": admin, "member": alice, "other": site.bob, "anon": site.anon}
    return site


def test_every_route_is_in_the_matrix(api):
    paths = api.client.get("/openapi.json").json()["paths"]
    # The FPBL agents' API (/agent/v1) authenticates nodes, not users: test_provisioning_api covers it.
    routes = {
        (method.upper(), path.removeprefix("/v0"))
        for path, ops in paths.items()
        if path.startswith("/v0/")
        for method in ops
    }
    assert len(routes) > 50
    covered = set()
    for method, path, *_ in CASES:
        for route_method, route_path in routes:
            if route_method == method and _matches(route_path, path):
                covered.add((route_method, route_path))
    assert routes - covered == set()


def _matches(template: str, path: str) -> bool:
    import re

    pattern = re.sub(r"\{port\}", ".+", template)  # port names may hold "/"
    pattern = re.sub(r"\{[^}]+\}", "[^/]+", pattern)
    return re.fullmatch(pattern, path) is not None


@pytest.mark.parametrize(
    ("method", "path", "body", "least", "status"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES]
)
def test_authorization(matrix, method, path, body, least, status):
    path = path.format(sid=matrix.sid, job=matrix.job)
    allowed = ROLES[ROLES.index(least) :] if least != "anon" else ROLES
    allowed = set(allowed) - ({"anon"} if least != "anon" else set())
    if least == "other":
        allowed = {"member", "other", "admin"}
    before = dump(matrix.sessions)
    for role in ROLES:
        if role in allowed:
            continue
        matrix.callers[role].error(method, path, body, 401, "AuthorizationError")
    assert dump(matrix.sessions) == before, "a refused request changed the database"
    if status < 400:
        matrix.callers[least].ok(method, path, body, status=status)
    else:
        matrix.callers[least].error(method, path, body, status, "BadArgumentError")
