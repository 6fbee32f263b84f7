"""Isolation through the API on a real Open vSwitch: two namespaces ping each other exactly when the API
has put both of their ports on the same network."""

from __future__ import annotations

from ovs_fixtures import bridge_fixture, hosts_fixture, needs_ovs, ovs_fixture  # noqa: F401

from rhaas.lab import netns


def connect(caller, node, network):
    sid = caller.ok("POST", f"/node/{node}/nic/eth0/connect_network", {"network": network}, status=202)
    action = caller.wait_action(sid["status_id"])
    assert action["status"] == "DONE", action


def detach(caller, node, network):
    sid = caller.ok("POST", f"/node/{node}/nic/eth0/detach_network", {"network": network}, status=202)
    action = caller.wait_action(sid["status_id"])
    assert action["status"] == "DONE", action


@needs_ovs
def test_ping_follows_the_api(api, ovs, bridge, hosts):
    admin = api.admin
    a = hosts(bridge, "10.77.0.1/24")
    b = hosts(bridge, "10.77.0.2/24")
    admin.ok("PUT", "/switch/sw", {"type": "ovs", "bridge": bridge, "db": ovs.db_url})
    for i, host in enumerate((a, b), 1):
        admin.ok("PUT", f"/switch/sw/port/{host.port}")
        admin.ok(
            "PUT", f"/node/n{i}", {"obm": {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}}
        )
        admin.ok("PUT", f"/node/n{i}/nic/eth0", {"macaddr": f"52:54:00:00:77:0{i}"})
        admin.ok("POST", f"/switch/sw/port/{host.port}/connect_nic", {"node": f"n{i}", "nic": "eth0"})
        # A new OVS port trunks every VLAN: revert it, as an operator would when wiring a node.
        assert (
            admin.wait_action(admin.ok("POST", f"/switch/sw/port/{host.port}/revert")["status_id"])["status"]
            == "DONE"
        )
    assert netns.isolated(a.netns, "10.77.0.2"), "empty ports must not reach each other"

    admin.ok("PUT", "/project/p")
    for node in ("n1", "n2"):
        admin.ok("POST", "/project/p/connect_node", {"node": node})
    admin.ok("PUT", "/network/red", {"owner": "p", "access": "p", "net_id": ""})
    admin.ok("PUT", "/network/blue", {"owner": "p", "access": "p", "net_id": ""})

    connect(admin, "n1", "red")
    assert netns.isolated(a.netns, "10.77.0.2"), "only one side is on red"
    connect(admin, "n2", "red")
    assert netns.ping(a.netns, "10.77.0.2", count=1, deadline=5), "both on red: must reach"
    assert admin.ok("GET", f"/switch/sw/port/{a.port}/state") == {"native": "100", "tagged": []}

    detach(admin, "n2", "red")
    assert netns.isolated(a.netns, "10.77.0.2"), "n2 detached: must not reach"
    connect(admin, "n2", "blue")
    assert netns.isolated(a.netns, "10.77.0.2"), "red and blue are isolated"
    detach(admin, "n1", "red")
    connect(admin, "n1", "blue")
    assert netns.ping(a.netns, "10.77.0.2", count=1, deadline=5), "both on blue: must reach"
