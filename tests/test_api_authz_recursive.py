"""The authorization matrix at recursion levels 2 and 3: every route × member, other, anon, admin, called
on a recursive instance (real servers on loopback) whose nodes come from its upstream.

The base instance's table (`authz_matrix.CASES`) is reused; `RECURSIVE` replaces the cases that differ
here, each saying why. A refused call must change nothing at the level called nor at any level below it
(`Stack.snapshot`: every level's database and image store, and the base's switch ports, before and
after each refused call).

Servers cost seconds to start, so one stack is built per level and shared by all its cases: no case's
success may break another's preconditions (each works on objects of its own; see `build_site`), and a
case that starts a networking action waits for it to end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from api_helpers import Caller
from authz_matrix import (
    BLOB_A,
    CASES,
    CHUNK,
    CHUNK_A,
    DISK1,
    OBM,
    Case,
    api_routes,
    check_case,
    covered_routes,
)
from dbdump import dump
from recursion_helpers import Level, ok, start_level
from sqlalchemy.orm import Session, sessionmaker

from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.lab.servers import free_port

pytestmark = pytest.mark.slow

#: Why many cases name other objects here: the base test builds a fresh site per case, this one shares it.
SHARED = "the cases share one site here, and the base case's object is changed by another case"

#: Base case (method, path) → the case(s) run instead at a recursive level.
RECURSIVE: dict[tuple[str, str], list[Case]] = {
    ("POST", "/project/p1/detach_node"): [
        Case("POST", "/project/p1/detach_node", {"node": "n6"}, "member", 200, why=f"n3: {SHARED}")
    ],
    ("PUT", "/node/n9"): [
        Case("PUT", "/node/n9", {"obm": OBM}, "admin", 200),
        # A node powered through the upstream is imported from it (pool grow), never registered.
        Case(
            "PUT",
            "/node/nu",
            {"obm": {"type": "upstream", "upstream": "x", "node": "nu"}},
            "admin",
            400,
            why="upstream OBMs are rhaas's own",
        ),
    ],
    ("PUT", "/node/n1/nic/eth5"): [
        Case(
            "PUT",
            "/node/nl/nic/eth5",
            {"macaddr": "52:54:00:00:05:05"},
            "admin",
            200,
            why="nl is this level's own node: a NIC on it changes nothing upstream",
        )
    ],
    ("PUT", "/node/n1/obm"): [
        Case("PUT", "/node/n1/obm", {"enabled": True}, "member", 200, why="the power cases need it on")
    ],
    ("PUT", "/node/n1/obm_credentials"): [
        Case(
            "PUT",
            "/node/n1/obm_credentials",
            {"user": "u2", "password": "new"},
            "admin",
            400,
            why="n1 is powered through the upstream: it has no BMC credentials here",
        )
    ],
    ("DELETE", "/network/net2"): [
        Case("DELETE", "/network/net4", None, "member", 200, why=f"net2: {SHARED}")
    ],
    # The switch of a recursive instance is its upstream: a port is a node's NIC there ("node/nic").
    ("PUT", "/switch/swx"): [
        Case("PUT", "/switch/swx", {"type": "mock"}, "admin", 200),
        Case("PUT", "/switch/swu", {"type": "upstream", "upstream": "x"}, "admin", 400, why="rhaas's own"),
    ],
    ("GET", "/switch/sw0"): [Case("GET", "/switch/upstream", None, "admin", 200)],
    ("PUT", "/switch/sw0/port/gi1/0/8"): [Case("PUT", "/switch/upstream/port/n5/eth9", None, "admin", 200)],
    ("DELETE", "/switch/sw0/port/gi1/0/9"): [
        Case("DELETE", "/switch/upstream/port/n5/eth8", None, "admin", 200)
    ],
    ("GET", "/switch/sw0/port/gi1/0/1"): [Case("GET", "/switch/upstream/port/n1/eth0", None, "admin", 200)],
    ("GET", "/switch/sw0/port/gi1/0/1/state"): [
        Case("GET", "/switch/upstream/port/n1/eth0/state", None, "admin", 200)  # read from the upstream
    ],
    ("POST", "/switch/sw0/port/gi1/0/9/connect_nic"): [
        Case("POST", "/switch/upstream/port/n5/eth1/connect_nic", {"node": "n5", "nic": "eth1"}, "admin", 200)
    ],
    ("POST", "/switch/sw0/port/gi1/0/4/detach_nic"): [
        Case("POST", "/switch/upstream/port/n5/eth2/detach_nic", None, "admin", 200)
    ],
    ("POST", "/switch/sw0/port/gi1/0/1/revert"): [
        Case("POST", "/switch/upstream/port/n5/eth0/revert", None, "admin", 200, why=f"n1: {SHARED}")
    ],
    ("PATCH", "/auth/basic/user/carol"): [
        Case("PATCH", "/auth/basic/user/erin", {"is_admin": True}, "admin", 200, why=f"carol: {SHARED}")
    ],
    ("POST", "/auth/basic/user/carol/add_project"): [
        Case("POST", "/auth/basic/user/erin/add_project", {"project": "p1"}, "admin", 200, why=SHARED)
    ],
    ("POST", "/auth/basic/user/carol/remove_project"): [
        Case("POST", "/auth/basic/user/erin/remove_project", {"project": "p2"}, "admin", 200, why=SHARED)
    ],
    ("DELETE", "/image/img1"): [Case("DELETE", "/image/img2", None, "member", 200, why=f"img1: {SHARED}")],
    ("PUT", "/node/n2/fpbl"): [Case("PUT", "/node/n7/fpbl", {}, "admin", 200, why=f"n2: {SHARED}")],
    # n3 is deploying by the provision case before (one site for every case; n6, p1's other node, left p1
    # by the detach_node case above): the member's call is refused for that, after the other roles' for
    # their access.
    ("POST", "/provision_group"): [
        Case(
            "POST",
            "/provision_group",
            {"nodes": ["n3"], "image": "img1"},
            "member",
            409,
            "BlockedError",
            why=f"n3: {SHARED}",
        )
    ],
    # A recursive instance has an upstream: its pool routes work (the base answers 400).
    ("POST", "/pool/grow"): [Case("POST", "/pool/grow", {"count": 1}, "admin", 200)],
    ("POST", "/pool/shrink"): [Case("POST", "/pool/shrink", {"count": 1}, "admin", 200)],
    ("POST", "/pool/reconcile"): [Case("POST", "/pool/reconcile", {"fix": False}, "admin", 200)],
}
RECURSIVE_CASES = [new for case in CASES for new in RECURSIVE.get((case.method, case.path), [case])]

#: Nodes of the base (level 1). The site at the top level imports all but UPSTREAM_ONLY; "free…" sort
#: before the others, so the cases that take any free node (connect_nodes, pool/shrink, and pool/grow
#: upstream) take those and no node another case needs.
NICS = {"n5": ("eth0", "eth1", "eth2")}
BASE_NODES = ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "free1", "free2", "free3")
#: n2 is claimed from the upstream by name by the connect_node case; free3 is what pool/grow takes.
UPSTREAM_ONLY = ("n2", "free3")
PROVISIONING = '[provisioning]\nenabled = true\nagent_url = "https://10.0.2.2:5000"\n'


@dataclass
class Stack:
    """Levels 1..depth; the matrix calls the top one, through its API only."""

    levels: list[Level]
    sessions: list[sessionmaker[Session]] = field(default_factory=list)
    http: httpx.Client | None = None
    callers: dict[str, Caller] = field(default_factory=dict)
    sid: str = ""
    job: str = ""
    group: str = ""
    #: The top level's provisioning-network listener (FPBL agents).
    agent_url: str = ""

    @property
    def top(self) -> Level:
        return self.levels[-1]

    def snapshot(self) -> dict[str, object]:
        """Every level's database and image store, and the base's switch ports: what a refused call
        anywhere in the stack must leave as it was."""
        state: dict[str, object] = {}
        for depth, (level, sessions) in enumerate(zip(self.levels, self.sessions, strict=True), 1):
            store = level.server.log_path.with_name(f"{level.server.log_path.stem}-images")
            files = sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []
            state[f"level {depth}"] = {"database": dump(sessions), "images": files}
        switch = self.levels[0].server.log_path.with_name("sw0.json")
        state["level 1 switch"] = json.loads(switch.read_text()) if switch.exists() else None
        return state


@pytest.fixture(scope="module", params=[2, 3], ids=["level2", "level3"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    depth: int = request.param
    tmp = tmp_path_factory.mktemp(f"authz-level{depth}")
    config = tmp / "provisioning.toml"
    agent_port = free_port()
    key = tmp / "agent-tls.pem"
    config.write_text(PROVISIONING + f'agent_listen = "127.0.0.1:{agent_port}"\nagent_tls_key = "{key}"\n')
    st = Stack([], agent_url=f"https://127.0.0.1:{agent_port}")
    try:
        base = start_level(f"sqlite:///{tmp / 'l1.sqlite3'}", tmp / "l1.log", None, "", "")
        st.levels.append(base)
        build_base(base)
        for level in range(2, depth + 1):
            below = st.levels[-1]
            project, bot = f"reseller{level}", f"l{level}bot"
            ok(below.admin.put(f"/project/{project}"))
            below.user(bot, f"{bot}-pw", project)  # the password start_level gives the level above
            extra = ("--config", str(config)) if level == depth else ()
            db = f"sqlite:///{tmp / f'l{level}.sqlite3'}"
            st.levels.append(start_level(db, tmp / f"l{level}.log", below, project, bot, *extra))
        st.sessions = [make_sessionmaker(make_engine(level.server.db_url)) for level in st.levels]
        st.http = httpx.Client(base_url=st.top.server.url, timeout=60)
        build_site(st)
        yield st
    finally:
        if st.http is not None:
            st.http.close()
        for sessions in st.sessions:
            sessions.kw["bind"].dispose()
        for level in reversed(st.levels):
            level.close()
            level.server.stop()


def build_base(base: Level) -> None:
    """A mock switch (its ports' state in sw0.json, for snapshots) with every node's NICs wired to it,
    mock BMCs."""
    state = base.server.log_path.with_name("sw0.json")
    ok(base.admin.put("/switch/sw0", json={"type": "mock", "state_file": str(state)}))
    port = 0
    for i, node in enumerate(BASE_NODES, 1):
        ok(base.admin.put(f"/node/{node}", json={"obm": {**OBM, "host": f"bmc{i}"}}))
        for nic in NICS.get(node, ("eth0",)):
            port += 1
            ok(base.admin.put(f"/node/{node}/nic/{nic}", json={"macaddr": f"52:54:00:00:{i:02x}:{port:02x}"}))
            ok(base.admin.put(f"/switch/sw0/port/gi1/0/{port}"))
            ok(base.admin.post(f"/switch/sw0/port/gi1/0/{port}/connect_nic", json={"node": node, "nic": nic}))


def enroll_ready(st: Stack, node: str) -> None:
    """Enrol a free node and check its agent in, as an FPBL would."""
    cmdline = st.callers["admin"].ok("PUT", f"/node/{node}/fpbl", {})["cmdline"]
    secret = dict(w.split("=", 1) for w in cmdline.split())["rhaas.secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"mode": "ready", "boot_id": "b1"}
    # The listener's certificate is self-signed (agents pin it; test_agent_trust.py proves that part).
    url = f"{st.agent_url}/agent/v1/nodes/{node}/checkin"
    httpx.post(url, json=body, headers=headers, verify=False).raise_for_status()


def build_site(st: Stack) -> None:
    """The base matrix's site, made through the top level's API, with one object per case that changes it.

    p1 holds n1 (enrolled, OBM on, powered, eth0 on net1, a deploy job), n3 (enrolled) and n6; n4, n5
    (three NICs), n7, free1 and free2 are held free; nx and nl are the top level's own mock nodes.
    """
    assert st.http is not None
    admin = Caller(st.http, "admin", "adminpw")
    for project in ("p1", "p2", "pe"):
        admin.ok("PUT", f"/project/{project}")
    users = {}
    for name, project in (("alice", "p1"), ("bob", "p2"), ("carol", "p2"), ("erin", "p2")):
        admin.ok("PUT", f"/auth/basic/user/{name}", {"password": f"{name}pw"})
        admin.ok("POST", f"/auth/basic/user/{name}/add_project", {"project": project})
        users[name] = Caller(st.http, name, f"{name}pw")
    alice = users["alice"]
    st.callers = {"admin": admin, "member": alice, "other": users["bob"], "anon": Caller(st.http)}
    # Connecting a node the pool does not hold claims it upstream by name (and imports it).
    for node in BASE_NODES:
        if node not in UPSTREAM_ONLY:
            admin.ok("POST", "/project/p2/connect_node", {"node": node})
            admin.ok("POST", "/project/p2/detach_node", {"node": node})
    assert admin.ok("GET", "/nodes/free") == sorted(set(BASE_NODES) - set(UPSTREAM_ONLY))
    for node in ("n1", "n3"):
        enroll_ready(st, node)
    admin.ok("PUT", "/node/nx", {"obm": OBM})
    admin.ok("PUT", "/node/nl", {"obm": {**OBM, "host": "bmc8"}})
    admin.ok("PUT", "/switch/swe", {"type": "mock"})
    admin.ok("PUT", "/switch/upstream/port/n5/eth8")
    admin.ok("POST", "/switch/upstream/port/n5/eth1/detach_nic")
    admin.ok("PUT", "/node/n1/metadata/m", {"value": "v"})
    for node in ("n1", "n3", "n6"):
        alice.ok("POST", "/project/p1/connect_node", {"node": node})
    alice.ok("PUT", "/node/n1/obm", {"enabled": True})
    alice.ok("POST", "/node/n1/power_on")
    for net in ("net1", "net2", "net3", "net4"):
        alice.ok("PUT", f"/network/{net}", {"owner": "p1", "access": "p1", "net_id": ""})
    alice.ok("PUT", "/network/net3/access/p2")
    st.sid = alice.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "net1"}, status=202)[
        "status_id"
    ]
    assert finished(alice, st.sid)["status"] == "DONE"
    for data in (b"kernel", b"spare"):
        digest = hashlib.sha256(data).hexdigest()
        st.http.put(f"/v0/blob/{digest}", content=data, headers=alice.headers).raise_for_status()
    for image in ("img1", "img2"):
        alice.ok("PUT", f"/image/{image}", {"project": "p1", "kernel": BLOB_A, "initrd": BLOB_A})
    st.http.put(f"/v0/chunk/{CHUNK_A}", content=CHUNK, headers=alice.headers).raise_for_status()
    alice.ok("PUT", "/image/disk1", DISK1)
    group = alice.ok("POST", "/provision_group", {"nodes": ["n1"], "image": "img1"}, status=202)
    st.job, st.group = group["jobs"]["n1"], group["group_id"]
    snapshot = st.snapshot()
    for depth in range(1, len(st.levels) + 1):  # the snapshot sees every level's nodes
        assert len(snapshot[f"level {depth}"]["database"]["node"]) >= len(BASE_NODES) - len(UPSTREAM_ONLY)
    vlan = alice.ok("GET", "/network/net1")["channels"][1].removeprefix("vlan/")
    assert snapshot["level 1 switch"]["sw0"]["gi1/0/1"] == {"native": vlan, "tagged": []}  # net1 reached it


def finished(caller: Caller, status_id: str) -> dict[str, Any]:
    """A networking action, once it is no longer PENDING (long-polled: rhaas answers when it ends)."""
    action = caller.ok("GET", f"/networking_action/{status_id}?wait=30")
    assert action["status"] != "PENDING", action
    return dict(action)


def test_every_route_is_in_the_matrix(stack):
    routes = api_routes(httpx.get(stack.top.server.url + "/openapi.json", timeout=30).json())
    assert len(routes) > 50
    assert set(RECURSIVE) <= {(case.method, case.path) for case in CASES}, "an override replaces nothing"
    assert covered_routes(routes, RECURSIVE_CASES) == set(routes)


@pytest.mark.parametrize("case", RECURSIVE_CASES, ids=[case.id for case in RECURSIVE_CASES])
def test_authorization(stack, case):
    path = case.path.format(sid=stack.sid, job=stack.job, group=stack.group)
    answer = check_case(case, stack.callers, stack.snapshot, path)
    if isinstance(answer, dict) and "status_id" in answer:
        # The next case's snapshots must not see this action (nor its upstream's) still running.
        assert finished(stack.callers["admin"], answer["status_id"])["status"] == "DONE"
