"""The recursive suite over HIL master (the HIL double, see hil_double): rhaas → rhaas → HIL.

What a real HIL master showed by hand, now in tests: growing the pool without a node filter (HIL has no
``connect_nodes``: its HTML 404 must not end in 502), all-or-nothing claims, OBM enable/disable reaching
the upstream, long polls and NMIs not tried where the upstream lists no such extension.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hil_double import HilDouble
from recursion_helpers import Level, ok, start_level, wait_done

from rhaas.backends.upstream import CONNECT_NODES, Upstream
from rhaas.config import UpstreamSettings

pytestmark = pytest.mark.slow


def hil_site(hil: HilDouble, nodes: int = 4) -> None:
    """Nodes n1..n<nodes> on HIL's mock switch; project reseller2 with its bot l2bot; project other."""
    for i in range(1, nodes + 1):
        hil.add_node(f"n{i}", ("eth0", f"52:54:00:00:00:0{i}", f"gi1/0/{i}"))
    for project in ("reseller2", "other"):
        hil.add_project(project)
    hil.add_user("l2bot", "l2bot-pw", "reseller2")


@pytest.fixture
def over_hil(tmp_path: Path, hil: HilDouble) -> Iterator[tuple[HilDouble, Level, Level]]:
    """HIL (4 nodes) ← level 2 (rhaas, project reseller2 there) ← level 3 (rhaas, project reseller3 at
    level 2), whose customer carol is in project cust. Both servers are stopped however the test ends."""
    hil_site(hil)
    started: list[Level] = []
    try:
        mid = start_level(
            f"sqlite:///{tmp_path / 'l2.sqlite3'}", tmp_path / "l2.log", hil.url, "reseller2", "l2bot"
        )
        started.append(mid)
        ok(mid.admin.put("/project/reseller3"))
        mid.user("l3bot", "l3bot-pw", "reseller3")
        top = start_level(
            f"sqlite:///{tmp_path / 'l3.sqlite3'}", tmp_path / "l3.log", mid, "reseller3", "l3bot"
        )
        started.append(top)
        ok(top.admin.put("/project/cust"))
        top.user("carol", "carol-pw", "cust")
        yield hil, mid, top
    finally:
        for level in reversed(started):
            level.close()
            level.server.stop()


def test_three_levels_over_hil_claim_connect_power_release(over_hil):
    hil, mid, top = over_hil
    carol = top.users["carol"]

    # Level 3 grows with level 2's connect_nodes; level 2 claims from HIL one by one (HIL has no such call).
    nodes = ok(carol.post("/project/cust/connect_nodes", json={"count": 2}))
    assert len(nodes) == 2
    assert hil.project_nodes("reseller2") == sorted(nodes)
    assert not [p for _m, p, _s in hil.log if p.endswith("/connect_nodes")]  # HIL does not list it
    assert not [p for _m, p, _s in hil.log if "wait=" in p]

    # A network at level 3 is a network at HIL, applied by HIL's networking daemon.
    ok(carol.put("/network/cnet", json={"owner": "cust", "access": "cust", "net_id": ""}))
    vlan = ok(carol.get("/network/cnet"))["channels"][1].split("/")[1]
    for node in nodes:
        sid = ok(carol.post(f"/node/{node}/nic/eth0/connect_network", json={"network": "cnet"}), 202)
        assert wait_done(carol, sid["status_id"])["status"] == "DONE"
    for i in range(1, 5):
        carried = {net for net in hil.nic_networks(f"n{i}", "eth0").values()}
        vlans = {hil.state.networks[net].network_id for net in carried}
        assert vlans == ({vlan} if f"n{i}" in nodes else set()), i

    # OBM enable/disable is forwarded down to HIL (which fetches the node's token from obmd); power goes
    # through HIL's 307 to obmd.
    node = nodes[0]
    ok(carol.put(f"/node/{node}/obm", json={"enabled": True}))
    assert hil.state.nodes[node].token is not None
    ok(carol.post(f"/node/{node}/power_on"))
    assert ok(carol.get(f"/node/{node}/power_status")) == {"power_status": "on"}
    assert hil.obmd_calls(node) == ["power_on"]
    ok(carol.put(f"/node/{node}/obm", json={"enabled": False}))
    assert hil.state.nodes[node].token is None
    # An NMI is refused at level 2 without asking HIL, which has none.
    ok(carol.put(f"/node/{node}/obm", json={"enabled": True}))
    r = carol.post(f"/node/{node}/power_nmi")
    assert r.status_code == 502 and "rhaas.ext.power_nmi" in r.json()["msg"], r.text
    assert not [p for _m, p, _s in hil.log if "nmi" in p]
    ok(carol.put(f"/node/{node}/obm", json={"enabled": False}))

    # Release walks back down to HIL.
    for node in nodes:
        sid = ok(carol.post(f"/node/{node}/nic/eth0/detach_network", json={"network": "cnet"}), 202)
        assert wait_done(carol, sid["status_id"])["status"] == "DONE"
        ok(carol.post("/project/cust/detach_node", json={"node": node}))
    ok(carol.delete("/network/cnet"))
    assert sorted(ok(top.admin.post("/pool/shrink", json={"count": 2}))) == sorted(nodes)
    assert sorted(ok(mid.admin.post("/pool/shrink", json={"count": 2}))) == sorted(nodes)
    assert hil.free_nodes() == ["n1", "n2", "n3", "n4"]
    assert hil.state.networks == {}
    assert all(not hil.nic_networks(f"n{i}", "eth0") for i in range(1, 5))


def test_pool_grow_without_a_filter_on_hil_at_hils_speed(tmp_path, hil):
    """HIL's ~200 ms per request: `pool grow 1` works (it used to end in 502 on HIL's HTML 404)."""
    hil_site(hil)
    hil.delay = 0.2
    mid = start_level(
        f"sqlite:///{tmp_path / 'l2.sqlite3'}", tmp_path / "l2.log", hil.url, "reseller2", "l2bot"
    )
    try:
        (node,) = ok(mid.admin.post("/pool/grow", json={"count": 1}))
        assert hil.project_nodes("reseller2") == [node]
        assert ok(mid.admin.get("/pool"))["nodes"] == 1
        drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
        assert not any(v for k, v in drift.items() if k != "fixed"), drift
    finally:
        mid.close()
        mid.server.stop()


def test_a_claim_of_five_with_one_free_leaves_hil_as_it_was(tmp_path, hil):
    hil_site(hil)
    for name in ("n1", "n2", "n3"):
        hil.state.nodes[name].project = "other"
    mid = start_level(
        f"sqlite:///{tmp_path / 'l2.sqlite3'}", tmp_path / "l2.log", hil.url, "reseller2", "l2bot"
    )
    try:
        ok(mid.admin.put("/project/cust"))
        carol = mid.user("carol", "carol-pw", "cust")
        before = {name: node.project for name, node in hil.state.nodes.items()}
        r = carol.post("/project/cust/connect_nodes", json={"count": 5})
        assert r.status_code == 409, r.text
        assert r.json()["type"] == "AllocationError" and "5 asked for" in r.json()["msg"]
        assert {name: node.project for name, node in hil.state.nodes.items()} == before
        assert hil.free_nodes() == ["n4"]
        assert ok(mid.admin.get("/nodes/all")) == []
        assert ok(carol.get("/project/cust/nodes")) == []
        # A claim the pool can serve still works afterwards.
        assert ok(carol.post("/project/cust/connect_nodes", json={"count": 1})) == ["n4"]
    finally:
        mid.close()
        mid.server.stop()


def test_an_extension_listed_but_refused_is_not_tried_again(hil):
    """An upstream that lists connect_nodes but answers it with HIL's HTML 404 (a proxy, a half-upgraded
    site): the claim falls back to one by one, and the extension is not asked for again."""
    hil_site(hil)
    hil.add_user("l2bot-admin", "pw", "reseller2", admin=True)  # HIL lists extensions to admins only
    hil.extensions.append(CONNECT_NODES)
    settings = UpstreamSettings(url=hil.url, project="reseller2", user="l2bot-admin", password="pw")
    up = Upstream(settings)
    try:
        assert up.claim(1) == ["n1"]
        assert up.claim(1) == ["n2"]
        calls = [(m, p, s) for m, p, s in hil.log if p.endswith("/connect_nodes")]
        assert calls == [("POST", "/v0/project/reseller2/connect_nodes", 404)]
        assert "refused rhaas.ext.connect_nodes" in (up.lacks(CONNECT_NODES) or "")
    finally:
        up.client.close()
