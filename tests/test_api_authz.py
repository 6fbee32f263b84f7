"""The authorization matrix: every route × admin, project member, member of another project, anonymous.

For each route, the callers who may not call it get 401 and change nothing; the least privileged caller
who may call it succeeds. The table and the check are shared with the recursive levels' matrix
(tests/authz_matrix.py, tests/test_api_authz_recursive.py).
"""

import hashlib

import pytest
from api_helpers import make_api
from authz_matrix import BLOB_A, CASES, CHUNK, CHUNK_A, DISK1, OBM, api_routes, check_case, covered_routes
from dbdump import dump


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
    site.agent.post(f"/agent/v1/nodes/{node}/checkin", json=body, headers=headers).raise_for_status()


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
    site.client.put(f"/v0/chunk/{CHUNK_A}", content=CHUNK, headers=alice.headers).raise_for_status()
    alice.ok("PUT", "/image/disk1", DISK1)
    group = alice.ok("POST", "/provision_group", {"nodes": ["n1"], "image": "img1"}, status=202)
    site.job, site.group = group["jobs"]["n1"], group["group_id"]
    site.callers = {"admin": admin, "member": alice, "other": site.bob, "anon": site.anon}
    return site


def test_every_route_is_in_the_matrix(api):
    routes = api_routes(api.client.get("/openapi.json").json())
    assert len(routes) > 50
    assert covered_routes(routes, CASES) == set(routes)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_authorization(matrix, case):
    path = case.path.format(sid=matrix.sid, job=matrix.job, group=matrix.group)
    check_case(case, matrix.callers, lambda: dump(matrix.sessions), path)
