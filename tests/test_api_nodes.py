"""Nodes: registration, NICs, metadata, OBM enable/disable, power and boot device (mock BMC)."""

from rhaas.drivers.obm.mock import MockOBM

OBM = {"type": "mock", "host": "bmc9", "user": "u", "password": "p"}


def test_register_show_delete_node(api):
    admin = api.admin
    admin.ok("PUT", "/node/x1", {"obm": OBM, "metadata": {"rack": 3, "owner": {"team": "ec528"}}})
    assert admin.ok("GET", "/nodes/all") == ["x1"]
    assert admin.ok("GET", "/nodes/free") == ["x1"]
    shown = admin.ok("GET", "/node/x1")
    assert shown == {
        "metadata": {"owner": '{"team": "ec528"}', "rack": "3"},
        "name": "x1",
        "nics": [],
        "project": None,
    }
    assert "secret" not in str(shown) and "password" not in str(shown)
    admin.error("PUT", "/node/x1", {"obm": OBM}, 409, "DuplicateError")
    admin.ok("DELETE", "/node/x1")
    admin.error("GET", "/node/x1", None, 404, "NotFoundError")
    admin.error("DELETE", "/node/x1", None, 404, "NotFoundError")


def test_register_node_accepts_hil_type_urls_and_refuses_bad_obm(api):
    admin = api.admin
    hil_ipmi = {"type": "http://schema.massopencloud.org/haas/v0/obm/ipmi", "host": "10.0.0.1", "user": "u"}
    hil_ipmi["password"] = "p"
    admin.ok("PUT", "/node/h1", {"obm": hil_ipmi})
    admin.ok("PUT", "/node/h2", {"obm": {**OBM, "type": "http://schema.massopencloud.org/haas/v0/obm/mock"}})
    assert "Unknown OBM type" in admin.error(
        "PUT", "/node/h3", {"obm": {**OBM, "type": "nope"}}, 400, "BadArgumentError"
    )
    admin.error("PUT", "/node/h3", {"obm": {"type": "ipmi", "host": "h"}}, 400, "ValidationError")
    admin.error("PUT", "/node/h3", {"obm": {**OBM, "port": 99999}}, 400, "ValidationError")
    admin.error("PUT", "/node/h3", {"obm": {**OBM, "colour": "red"}}, 400, "ValidationError")
    admin.error("PUT", "/node/h3", {}, 400, "ValidationError")
    assert admin.ok("GET", "/nodes/all") == ["h1", "h2"]


def test_delete_node_is_blocked_by_project_and_nics(site):
    admin = site.admin
    assert "NICs" in admin.error("DELETE", "/node/n1", None, 409, "BlockedError")
    admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    assert "project" in admin.error("DELETE", "/node/n1", None, 409, "BlockedError")


def test_nics(site):
    admin = site.admin
    admin.ok("PUT", "/node/n1/nic/eth1", {"macaddr": "52:54:00:aa:bb:cc"})
    nics = admin.ok("GET", "/node/n1")["nics"]
    assert [n["label"] for n in nics] == ["eth0", "eth1"]
    assert nics[1] == {
        "label": "eth1",
        "macaddr": "52:54:00:aa:bb:cc",
        "networks": {},
        "port": None,
        "switch": None,
    }
    admin.error("PUT", "/node/n1/nic/eth1", {"macaddr": "52:54:00:aa:bb:cd"}, 409, "DuplicateError")
    admin.error("PUT", "/node/n1/nic/eth2", {"macaddr": "not-a-mac"}, 400, "BadArgumentError")
    admin.error("PUT", "/node/nope/nic/eth2", {"macaddr": "52:54:00:aa:bb:cd"}, 404, "NotFoundError")
    admin.ok("DELETE", "/node/n1/nic/eth1")
    admin.error("DELETE", "/node/n1/nic/eth1", None, 404, "NotFoundError")
    admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    admin.error("DELETE", "/node/n1/nic/eth0", None, 409, "BlockedError")


def test_nic_delete_unwires_its_port(site):
    admin = site.admin
    admin.ok("DELETE", "/node/n4/nic/eth0")
    assert admin.ok("GET", "/switch/sw0/port/gi1/0/4") == {}
    admin.ok("DELETE", "/switch/sw0/port/gi1/0/4")


def test_metadata(site):
    admin = site.admin
    admin.ok("PUT", "/node/n1/metadata/EK", {"value": "pk"})
    admin.ok("PUT", "/node/n1/metadata/n", {"value": [1, 2]})
    admin.ok("PUT", "/node/n1/metadata/EK", {"value": "pk2"})
    assert admin.ok("GET", "/node/n1")["metadata"] == {"EK": '"pk2"', "n": "[1, 2]"}
    admin.ok("DELETE", "/node/n1/metadata/EK")
    admin.error("DELETE", "/node/n1/metadata/EK", None, 404, "NotFoundError")
    admin.error("PUT", "/node/n1/metadata/x", {}, 400, "ValidationError")
    site.alice.error("PUT", "/node/n1/metadata/x", {"value": 1}, 401, "AuthorizationError")


def test_show_node_hides_wiring_from_non_admins_and_other_projects(site):
    site.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    shown = site.alice.ok("GET", "/node/n1")
    assert shown["nics"] == [{"label": "eth0", "macaddr": "52:54:00:00:00:01", "networks": {}}]
    site.bob.error("GET", "/node/n1", None, 401, "AuthorizationError")
    assert site.bob.ok("GET", "/node/n2")["project"] is None  # free nodes are visible to all


def test_power_needs_obm_enabled_and_drives_the_bmc(site):
    alice = site.alice
    alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    assert "OBM" in alice.error("POST", "/node/n1/power_on", None, 409, "BlockedError")
    alice.ok("PUT", "/node/n1/obm", {"enabled": True})
    alice.ok("PUT", "/node/n1/obm", {"enabled": True})  # idempotent
    assert alice.ok("GET", "/node/n1/power_status") == {"power_status": "off"}
    alice.ok("POST", "/node/n1/power_on")
    assert alice.ok("GET", "/node/n1/power_status") == {"power_status": "on"}
    alice.ok("PUT", "/node/n1/boot_device", {"bootdev": "pxe"})
    alice.ok("POST", "/node/n1/power_cycle", {"force": True})
    alice.ok("POST", "/node/n1/power_cycle")
    alice.ok("POST", "/node/n1/power_nmi")
    machine = MockOBM.machines["bmc1:623"]
    assert (machine.power, machine.bootdev, machine.boots, machine.nmis) == ("on", "pxe", 3, 1)
    console = alice("GET", "/node/n1/console")
    assert console.status_code == 200 and "NMI" in console.text
    alice.ok("POST", "/node/n1/power_off")
    assert alice.ok("GET", "/node/n1/power_status") == {"power_status": "off"}
    alice.error("PUT", "/node/n1/boot_device", {"bootdev": "floppy"}, 400, "BadArgumentError")
    alice.error("POST", "/node/n1/power_cycle", {"force": "yes"}, 400, "ValidationError")
    alice.error("PUT", "/node/n1/obm", {"enabled": "true"}, 400, "ValidationError")


def test_power_of_free_node_is_admin_only(site):
    site.alice.error("PUT", "/node/n2/obm", {"enabled": True}, 401, "AuthorizationError")
    site.admin.ok("PUT", "/node/n2/obm", {"enabled": True})
    site.alice.error("POST", "/node/n2/power_on", None, 401, "AuthorizationError")
    site.admin.ok("POST", "/node/n2/power_on")


def test_bmc_failure_is_a_502_naming_the_bmc(api):
    admin = api.admin
    admin.ok("PUT", "/node/x", {"obm": {**OBM, "host": "fail-bmc"}})
    admin.ok("PUT", "/node/x/obm", {"enabled": True})
    msg = admin.error("POST", "/node/x/power_on", None, 502, "OBMError")
    assert "fail-bmc" in msg
