"""Switches, ports and NIC wiring (admin-only routes)."""


def test_switch_register_show_delete(api):
    admin = api.admin
    admin.ok("PUT", "/switch/sw1", {"type": "mock", "hostname": "h", "username": "u", "password": "p"})
    admin.ok("PUT", "/switch/sw2", {"type": "http://schema.massopencloud.org/haas/v0/switches/mock"})
    assert admin.ok("GET", "/switches") == ["sw1", "sw2"]
    admin.error("PUT", "/switch/sw1", {"type": "mock"}, 409, "DuplicateError")
    admin.error("PUT", "/switch/sw3", {"type": "cisco-9000"}, 400, "BadArgumentError")
    admin.error("PUT", "/switch/sw3", {"type": "mock", "speed": 9}, 400, "ValidationError")
    admin.error("PUT", "/switch/sw3", {}, 400, "ValidationError")
    admin.ok("PUT", "/switch/sw1/port/gi1/0/1")
    admin.ok("PUT", "/switch/sw1/port/te1/2")
    assert admin.ok("GET", "/switch/sw1") == {
        "capabilities": ["nativeless-trunk-mode"],
        "name": "sw1",
        "ports": [{"label": "gi1/0/1"}, {"label": "te1/2"}],
    }
    assert "ports" in admin.error("DELETE", "/switch/sw1", None, 409, "BlockedError")
    admin.ok("DELETE", "/switch/sw2")
    admin.error("GET", "/switch/sw2", None, 404, "NotFoundError")


def test_ports(api):
    admin = api.admin
    admin.ok("PUT", "/switch/sw1", {"type": "mock"})
    admin.ok("PUT", "/switch/sw1/port/gi1/0/1")
    admin.error("PUT", "/switch/sw1/port/gi1/0/1", None, 409, "DuplicateError")
    admin.error("PUT", "/switch/sw1/port/bad%20port", None, 400, "BadArgumentError")
    admin.error("PUT", "/switch/nope/port/x", None, 404, "NotFoundError")
    assert admin.ok("GET", "/switch/sw1/port/gi1/0/1") == {}
    admin.error("GET", "/switch/sw1/port/gi1/0/9", None, 404, "NotFoundError")
    admin.ok("DELETE", "/switch/sw1/port/gi1/0/1")
    admin.error("DELETE", "/switch/sw1/port/gi1/0/1", None, 404, "NotFoundError")


def test_connect_and_detach_nic(site):
    admin = site.admin
    admin.ok("PUT", "/switch/sw0/port/gi1/0/9")
    admin.ok("PUT", "/node/n1/nic/eth1", {"macaddr": "52:54:00:00:01:01"})
    body = {"node": "n1", "nic": "eth1"}
    admin.error("POST", "/switch/sw0/port/gi1/0/1/connect_nic", body, 409, "DuplicateError")  # port taken
    admin.error(
        "POST", "/switch/sw0/port/gi1/0/9/connect_nic", {"node": "n1", "nic": "eth0"}, 409, "DuplicateError"
    )  # nic taken
    admin.error(
        "POST", "/switch/sw0/port/gi1/0/9/connect_nic", {"node": "n1", "nic": "x"}, 404, "NotFoundError"
    )
    admin.ok("POST", "/switch/sw0/port/gi1/0/9/connect_nic", body)
    assert admin.ok("GET", "/switch/sw0/port/gi1/0/9") == {"node": "n1", "nic": "eth1", "networks": {}}
    assert "connected" in admin.error("DELETE", "/switch/sw0/port/gi1/0/9", None, 409, "BlockedError")
    admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    admin.error("POST", "/switch/sw0/port/gi1/0/9/detach_nic", None, 409, "BlockedError")
    admin.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    admin.ok("POST", "/switch/sw0/port/gi1/0/9/detach_nic")
    admin.error("POST", "/switch/sw0/port/gi1/0/9/detach_nic", None, 404, "NotFoundError")
    admin.error("POST", "/switch/sw0/port/gi1/0/9/revert", None, 404, "NotFoundError")


def test_switch_routes_are_admin_only(site):
    for caller in (site.alice, site.anon):
        caller.error("GET", "/switches", None, 401, "AuthorizationError")
        caller.error("GET", "/switch/sw0", None, 401, "AuthorizationError")
        caller.error("GET", "/switch/sw0/port/gi1/0/1/state", None, 401, "AuthorizationError")


def test_mock_switch_takes_only_hil_mock_port_names(api):
    """HIL's mock switch refuses other port names; a HIL script relying on that refusal behaves the same."""
    admin = api.admin
    admin.ok("PUT", "/switch/sw1", {"type": "mock"})
    for port in ("gi1/0/11", "te1/0/12", "gi1/12", "te1/3"):
        admin.ok("PUT", f"/switch/sw1/port/{port}")
    for port in ("badport", "p1", "eth0", "gi1", "ge1/0/1", "gi1/0/1/2", "gi1/x", "Gi1/0/1", "gi１/0/1"):
        msg = admin.error("PUT", f"/switch/sw1/port/{port}", None, 400, "BadArgumentError")
        assert msg.startswith("Invalid port name. Valid port names for this switch are of the form gi1/0/11")
    assert [p["label"] for p in admin.ok("GET", "/switch/sw1")["ports"]] == sorted(
        ["gi1/0/11", "te1/0/12", "gi1/12", "te1/3"]
    )
