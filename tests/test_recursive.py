"""Three levels as real servers on loopback: base (mock switch) → recursive → recursive.

A level-3 customer claims nodes (the pools of levels 3 and 2 grow on demand), puts them on a network,
and the base's switch shows the VLAN on the right ports; release walks back down to the base. Projects
at every level cannot see or touch the customer's nodes.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dbdump import dump
from recursion_helpers import Level, ok, start_level, wait_done
from sqlalchemy import text

from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.lab.polling import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def levels(tmp_path: Path, db_url: str) -> Iterator[list[Level]]:
    """Level 1 on the test's database (SQLite or PostgreSQL); levels 2 and 3 on SQLite files."""
    started: list[Level] = []
    try:
        base = start_level(db_url, tmp_path / "l1.log", None, "", "")
        started.append(base)
        ok(base.admin.put("/switch/sw0", json={"type": "mock"}))
        for i in range(1, 5):
            ok(
                base.admin.put(
                    f"/node/n{i}",
                    json={"obm": {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}},
                )
            )
            ok(base.admin.put(f"/node/n{i}/nic/eth0", json={"macaddr": f"52:54:00:00:00:0{i}"}))
            ok(base.admin.put(f"/switch/sw0/port/gi1/0/{i}"))
            nic = {"node": f"n{i}", "nic": "eth0"}
            ok(base.admin.post(f"/switch/sw0/port/gi1/0/{i}/connect_nic", json=nic))
        # Each level gets the project (and bot) of the level above, and an unrelated project with a user.
        plan = [
            ("reseller2", "l2bot", "other1", "o1"),
            ("reseller3", "l3bot", "other2", "o2"),
            ("cust", "carol", "other3", "o3"),
        ]
        upstream: Level | None = None
        for depth, (project, member, other, outsider) in enumerate(plan, 1):
            if upstream is None:
                level = base
            else:
                db = f"sqlite:///{tmp_path / f'l{depth}.sqlite3'}"
                above = plan[depth - 2]
                level = start_level(db, tmp_path / f"l{depth}.log", upstream, above[0], above[1])
                started.append(level)
            for name in (project, other):
                ok(level.admin.put(f"/project/{name}"))
            level.user(member, f"{member}-pw", project)  # a bot password is what start_level expects
            level.user(outsider, f"{outsider}pw", other)
            upstream = level
        yield started
    finally:
        for level in reversed(started):
            level.close()
            level.server.stop()


def node_routes(node: str, project: str, network: str) -> list[tuple[str, str, object]]:
    """Every route that reads or changes a node held by ``project`` (or the project itself)."""
    return [
        ("GET", f"/node/{node}", None),
        ("GET", f"/project/{project}/nodes", None),
        ("GET", f"/project/{project}/networks", None),
        ("POST", f"/project/{project}/detach_node", {"node": node}),
        ("POST", f"/project/{project}/connect_nodes", {"count": 1}),
        ("POST", f"/node/{node}/nic/eth0/connect_network", {"network": network}),
        ("POST", f"/node/{node}/nic/eth0/detach_network", {"network": network}),
        ("GET", f"/network/{network}", None),
        ("GET", f"/network/{network}/attachments", None),
        ("DELETE", f"/network/{network}", None),
        ("PUT", f"/node/{node}/obm", {"enabled": True}),
        ("POST", f"/node/{node}/power_on", None),
        ("POST", f"/node/{node}/power_off", None),
        ("POST", f"/node/{node}/power_cycle", {"force": True}),
        ("POST", f"/node/{node}/power_nmi", None),
        ("GET", f"/node/{node}/power_status", None),
        ("PUT", f"/node/{node}/boot_device", {"bootdev": "pxe"}),
        ("GET", f"/node/{node}/console", None),
        ("PUT", f"/node/{node}/metadata/x", {"value": 1}),
        ("POST", "/pool/shrink", {"count": 1}),
        ("POST", "/pool/reconcile", {"fix": True}),
    ]


def port_state(base: Level, port: str) -> dict:
    return ok(base.admin.get(f"/switch/sw0/port/{port}/state"))  # type: ignore[return-value]


def test_three_levels_claim_connect_release(levels):
    base, mid, top = levels
    carol = top.users["carol"]

    # The level-3 customer asks for two nodes; the pools of levels 3 and 2 grow on demand.
    nodes = ok(carol.post("/project/cust/connect_nodes", json={"count": 2}))
    assert len(nodes) == 2
    assert sorted(ok(carol.get("/project/cust/nodes"))) == sorted(nodes)
    assert sorted(ok(mid.admin.get("/project/reseller3/nodes"))) == sorted(nodes)
    assert sorted(ok(base.admin.get("/project/reseller2/nodes"))) == sorted(nodes)
    shown = ok(carol.get(f"/node/{nodes[0]}"))
    assert shown["project"] == "cust" and shown["nics"][0]["label"] == "eth0"

    # A network at level 3 is a network at every level below, with the same VLAN.
    ok(carol.put("/network/cnet", json={"owner": "cust", "access": "cust", "net_id": ""}))
    vlan = ok(carol.get("/network/cnet"))["channels"][1].split("/")[1]
    for node in nodes:
        sid = ok(carol.post(f"/node/{node}/nic/eth0/connect_network", json={"network": "cnet"}), 202)[
            "status_id"
        ]
        assert wait_done(carol, sid)["status"] == "DONE"
    ports = {f"n{i}": f"gi1/0/{i}" for i in range(1, 5)}
    for node, port in ports.items():
        expected = {"native": vlan, "tagged": []} if node in nodes else {"native": None, "tagged": []}
        assert port_state(base, port) == expected, node
    assert ok(carol.get(f"/node/{nodes[0]}"))["nics"][0]["networks"] == {"vlan/native": "cnet"}

    # Power is forwarded all the way down to the base's BMC.
    ok(carol.put(f"/node/{nodes[0]}/obm", json={"enabled": True}))
    ok(carol.post(f"/node/{nodes[0]}/power_on"))
    assert ok(carol.get(f"/node/{nodes[0]}/power_status")) == {"power_status": "on"}
    ok(base.admin.put(f"/node/{nodes[0]}/obm", json={"enabled": True}))
    assert ok(base.admin.get(f"/node/{nodes[0]}/power_status")) == {"power_status": "on"}
    ok(carol.put(f"/node/{nodes[0]}/obm", json={"enabled": False}))

    # The authorization matrix at every level: another project's member and an anonymous caller are
    # refused every route that touches the customer's nodes, and change nothing.
    for level, other, project in ((base, "o1", "reseller2"), (mid, "o2", "reseller3"), (top, "o3", "cust")):
        client = level.users[other]
        anon = httpx.Client(base_url=level.server.url + "/v0", timeout=30)
        (network,) = ok(level.admin.get(f"/project/{project}/networks"))  # its name at this level
        before = dump(make_sessionmaker(make_engine(level.server.db_url)))
        for caller in (client, anon):
            for method, path, body in node_routes(nodes[0], project, network):
                r = caller.request(method, path, json=body)
                assert r.status_code == 401, (level.server.url, caller is anon, method, path, r.text)
                assert r.json()["type"] == "AuthorizationError"
        assert dump(make_sessionmaker(make_engine(level.server.db_url))) == before
        anon.close()
        assert not set(nodes) & set(ok(client.get("/nodes/free")))
    # The instance at level 2 is itself only a project member at level 1.
    l2bot = base.users["l2bot"]
    assert l2bot.get("/switches").status_code == 401
    assert l2bot.get("/node/n1").status_code in (200, 401)

    # Release walks back down.
    for node in nodes:
        sid = ok(carol.post(f"/node/{node}/nic/eth0/detach_network", json={"network": "cnet"}), 202)[
            "status_id"
        ]
        assert wait_done(carol, sid)["status"] == "DONE"
        ok(carol.post("/project/cust/detach_node", json={"node": node}))
    for port in ports.values():
        assert port_state(base, port) == {"native": None, "tagged": []}
    assert sorted(ok(top.admin.get("/nodes/free"))) == sorted(nodes)
    ok(carol.delete("/network/cnet"))
    assert ok(mid.admin.get("/networks")) == {}
    # A node the admin registered here (it sorts first) is not the upstream's: shrink leaves it.
    obm = {"type": "mock", "host": "local-bmc", "user": "u", "password": "p"}
    ok(top.admin.put("/node/a-local", json={"obm": obm}))
    assert sorted(ok(top.admin.post("/pool/shrink", json={"count": 3}))) == sorted(nodes)
    assert ok(top.admin.get("/nodes/all")) == ["a-local"]
    ok(top.admin.delete("/node/a-local"))
    assert sorted(ok(mid.admin.post("/pool/shrink", json={"count": 2}))) == sorted(nodes)
    assert ok(base.admin.get("/nodes/free")) == ["n1", "n2", "n3", "n4"]
    assert ok(base.admin.get("/project/reseller2/nodes")) == []


def test_upstream_down_is_a_clear_error_and_changes_nothing(levels, tmp_path):
    base, mid, _top = levels
    ok(mid.admin.post("/pool/grow", json={"count": 1}))
    sessions = make_sessionmaker(make_engine(mid.server.db_url))
    before = dump(sessions)
    base.server.stop()
    try:
        r = mid.admin.post("/pool/grow", json={"count": 1})
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "UpstreamUnavailableError" and base.server.url in r.json()["msg"]
        r = mid.admin.put("/network/x", json={"owner": "admin", "access": "", "net_id": ""})
        assert r.status_code == 503 and r.json()["type"] == "UpstreamUnavailableError"
        assert dump(sessions) == before
    finally:
        base.server.start()
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
    assert drift == {
        "untracked_upstream_nodes": [],
        "nodes_gone_upstream": [],
        "networks_gone_upstream": [],
        "nics_out_of_sync": [],
        "nics_missing_upstream": [],
        "fixed": False,
    }


def test_reconcile_finds_and_fixes_a_node_taken_away_upstream(levels):
    base, mid, _top = levels
    (node,) = ok(mid.admin.post("/pool/grow", json={"count": 1}))
    # The base's operator takes the node back behind level 2's back.
    ok(base.admin.post("/project/reseller2/detach_node", json={"node": node}))
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
    assert drift["nodes_gone_upstream"] == [node]
    assert node in ok(mid.admin.get("/nodes/all"))
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": True}))
    assert drift["fixed"] is True
    assert node not in ok(mid.admin.get("/nodes/all"))
    assert ok(mid.admin.post("/pool/reconcile", json={"fix": False}))["nodes_gone_upstream"] == []


def test_reconcile_reports_a_nic_registered_only_here(levels):
    """An admin of the recursive instance registers a NIC its upstream node lacks: reconcile says so (it
    used to answer 502, asking the upstream for a NIC it does not have) and changes nothing."""
    _base, mid, _top = levels
    (node,) = ok(mid.admin.post("/pool/grow", json={"count": 1}))
    ok(mid.admin.put(f"/node/{node}/nic/eth9", json={"macaddr": "52:54:00:00:09:09"}))
    for fix in (False, True):
        drift = ok(mid.admin.post("/pool/reconcile", json={"fix": fix}))
        assert drift["nics_missing_upstream"] == [f"{node}/eth9"], drift
        assert drift["nics_out_of_sync"] == [] and drift["nodes_gone_upstream"] == [], drift
    assert "eth9" in {n["label"] for n in ok(mid.admin.get(f"/node/{node}"))["nics"]}


@pytest.fixture
def slow_two_levels(tmp_path: Path, db_url: str) -> Iterator[tuple[Level, Level, httpx.Client, str]]:
    """A base whose switch takes 2 s per change, a recursive instance on it holding one node of a
    customer that has a network. Both servers are stopped however the test ends."""
    started: list[Level] = []
    try:
        base = start_level(db_url, tmp_path / "l1.log", None, "", "")
        started.append(base)
        ok(base.admin.put("/switch/slow", json={"type": "mock", "delay": 2.0}))
        obm = {"type": "mock", "host": "b1", "user": "u", "password": "p"}
        ok(base.admin.put("/node/n1", json={"obm": obm}))
        ok(base.admin.put("/node/n1/nic/eth0", json={"macaddr": "52:54:00:00:00:01"}))
        ok(base.admin.put("/switch/slow/port/gi1/0/1"))
        ok(base.admin.post("/switch/slow/port/gi1/0/1/connect_nic", json={"node": "n1", "nic": "eth0"}))
        ok(base.admin.put("/project/reseller2"))
        base.user("l2bot", "l2bot-pw", "reseller2")
        db = f"sqlite:///{tmp_path / 'l2.sqlite3'}"
        mid = start_level(db, tmp_path / "l2.log", base, "reseller2", "l2bot")
        started.append(mid)
        ok(mid.admin.put("/project/cust"))
        carol = mid.user("carol", "carolpw", "cust")
        ok(carol.post("/project/cust/connect_nodes", json={"count": 1}))
        ok(carol.put("/network/cnet", json={"owner": "cust", "access": "cust", "net_id": ""}))
        vlan = ok(carol.get("/network/cnet"))["channels"][1].split("/")[1]
        yield base, mid, carol, vlan
    finally:
        for level in reversed(started):
            level.close()
            level.server.stop()


def connect_and_wait_for_the_base(base: Level, carol: httpx.Client) -> str:
    """Ask level 2 to connect n1 and return once its change is in flight at the base."""
    sid = ok(carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)["status_id"]
    wait_for("level 2's change in flight at the base", lambda: _base_has_pending(base), 10, every=0.02)
    return sid


def test_recursive_instance_killed_mid_action_completes_it_after_restart(slow_two_levels):
    base, mid, carol, vlan = slow_two_levels
    sid = connect_and_wait_for_the_base(base, carol)
    mid.server.stop(signal.SIGKILL)
    mid.server.start()
    assert wait_done(carol, sid)["status"] == "DONE"
    assert port_state_of(base, "slow", "gi1/0/1") == {"native": vlan, "tagged": []}
    assert ok(carol.get("/node/n1"))["nics"][0]["networks"] == {"vlan/native": "cnet"}
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
    assert not any(v for k, v in drift.items() if k != "fixed"), drift


def test_upstream_killed_mid_action_and_restarted_the_action_ends_done(slow_two_levels):
    """The base dies with the change in flight; the recursive instance retries until it is back (its
    own worker then finishes what it had accepted), and the action ends DONE with both levels agreeing.
    What happens when the upstream stays away longer is in test_recursive_outage.py."""
    base, mid, carol, vlan = slow_two_levels
    sid = connect_and_wait_for_the_base(base, carol)
    base.server.stop(signal.SIGKILL)
    base.server.start()
    assert wait_done(carol, sid, timeout=90)["status"] == "DONE"
    assert port_state_of(base, "slow", "gi1/0/1") == {"native": vlan, "tagged": []}
    assert ok(carol.get("/node/n1"))["nics"][0]["networks"] == {"vlan/native": "cnet"}
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
    assert not any(v for k, v in drift.items() if k != "fixed"), drift


def port_state_of(base: Level, switch: str, port: str) -> dict:
    return ok(base.admin.get(f"/switch/{switch}/port/{port}/state"))  # type: ignore[return-value]


def _base_has_pending(base: Level) -> bool:
    from rhaas.db.models import PENDING, NetworkingAction

    sessions = make_sessionmaker(make_engine(base.server.db_url))
    try:
        with sessions() as db:
            return db.query(NetworkingAction).filter(NetworkingAction.status == PENDING).count() > 0
    finally:
        sessions.kw["bind"].dispose()


def test_reconcile_leaves_a_nic_the_fpbl_holds_on_the_provisioning_network(levels, tmp_path):
    """While a node deploys, its FPBL holds the NIC on the provisioning network whatever the project has
    attached (those attachments reach the switch once the OS is up). Reconcile must count that as in sync:
    'repairing' it to the customer's network cut a deploying agent off mid-download."""
    base, mid, _top = levels
    (node,) = ok(mid.admin.post("/pool/grow", json={"count": 1}))
    for name in ("prov", "cust-net"):
        ok(mid.admin.put(f"/network/{name}", json={"owner": "admin", "access": "reseller3", "net_id": ""}))
    vlans = {n: ok(mid.admin.get(f"/network/{n}"))["channels"][1].split("/")[1] for n in ("prov", "cust-net")}
    ok(mid.admin.post("/project/reseller3/connect_node", json={"node": node}))
    sid = ok(mid.admin.post(f"/node/{node}/nic/eth0/connect_network", json={"network": "cust-net"}), 202)
    assert wait_done(mid.admin, sid["status_id"])["status"] == "DONE"
    # The FPBL owns the node (as provisioning's worker left it): its NIC carries the provisioning VLAN.
    upstream = {
        v: next(n for n in ok(base.admin.get("/project/reseller2/networks"))
                if ok(base.admin.get(f"/network/{n}"))["channels"][1] == f"vlan/{v}")
        for v in vlans.values()
    }  # fmt: skip
    for verb, vlan in (("detach_network", vlans["cust-net"]), ("connect_network", vlans["prov"])):
        sid = ok(base.admin.post(f"/node/{node}/nic/eth0/{verb}", json={"network": upstream[vlan]}), 202)
        assert wait_done(base.admin, sid["status_id"])["status"] == "DONE"
    engine = make_engine(f"sqlite:///{tmp_path / 'l2.sqlite3'}")
    with make_sessionmaker(engine)() as db:
        node_id = db.execute(text("SELECT id FROM node WHERE label = :n"), {"n": node}).scalar_one()
        db.execute(
            text("INSERT INTO node_provisioning (node_id, state, secret_sha256, facts, vlan, nic, port_dirty,"
                 " boot_pending, disk_zeroed) VALUES (:id, 'deploying', 'x', '{}', :vlan, 'eth0', 0, 0, 0)"),
            {"id": node_id, "vlan": vlans["prov"]},
        )  # fmt: skip
        db.commit()
    engine.dispose()
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": True}))
    assert drift["nics_out_of_sync"] == [], drift
    held = ok(base.admin.get(f"/node/{node}"))["nics"][0]["networks"]
    assert held == {"vlan/native": upstream[vlans["prov"]]}, (
        "the FPBL's NIC stayed on the provisioning network"
    )
