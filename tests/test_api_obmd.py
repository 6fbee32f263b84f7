"""Nodes registered with HIL master's obmd form: registration, OBM enable/disable (node tokens from obmd),
power, boot device and console driven through obmd, and both tokens kept secret."""

from __future__ import annotations

import pytest
from api_helpers import Api
from dbdump import dump
from obmd_helpers import obmd_form

from rhaas.db.models import Node
from rhaas.lab.obmd import FakeObmd


def register(site: Api, obmd: FakeObmd, name: str = "o1", project: str | None = "p1") -> dict[str, str]:
    """Register node ``name`` (obmd form) with a wired NIC, in ``project``; its obmd form."""
    form = obmd_form(obmd, name)
    site.admin.ok("PUT", f"/node/{name}", {"obmd": form, "metadata": {"rack": "r3"}})
    site.admin.ok("PUT", f"/node/{name}/nic/eth0", {"macaddr": "52:54:00:aa:00:01"})
    if project:
        site.admin.ok("POST", f"/project/{project}/connect_node", {"node": name})
    return form


def stored(site: Api, name: str) -> Node:
    with site.sessions() as db:
        node = db.query(Node).filter_by(label=name).one()
        db.expunge(node)
        return node


def test_registration_takes_exactly_one_obm_form(site: Api, obmd: FakeObmd) -> None:
    admin = site.admin
    form = obmd_form(obmd, "o1")
    mock = {"type": "mock", "host": "h", "user": "u", "password": "p"}
    before = dump(site.sessions)
    bad: list[tuple[object, int, str]] = [
        ({"obmd": form, "obm": mock}, 400, "ValidationError"),
        ({}, 400, "ValidationError"),
        ({"metadata": {}}, 400, "ValidationError"),
        ({"obmd": {"uri": form["uri"]}}, 400, "ValidationError"),
        ({"obmd": {**form, "type": "ipmi"}}, 400, "ValidationError"),
        ({"obmd": {**form, "uri": "ftp://h/node/o1"}}, 400, "ValidationError"),
        ({"obmd": {**form, "uri": "http://h/node/o1?token=x"}}, 400, "ValidationError"),
        ({"obmd": {**form, "admin_token": 5}}, 400, "ValidationError"),
        ({"obmd": "http://h/node/o1"}, 400, "ValidationError"),
        ({"obm": {"type": "obmd", **form}}, 400, "BadArgumentError"),
    ]
    for body, status, kind in bad:
        msg = admin.error("PUT", "/node/o1", body, status, kind)
        assert form["admin_token"] not in msg
    assert "exactly one of 'obm'" in admin.error("PUT", "/node/o1", {}, 400, "ValidationError")
    assert dump(site.sessions) == before, "a refused registration changes nothing"
    site.alice.error("PUT", "/node/o1", {"obmd": form}, 401, "AuthorizationError")
    site.anon.error("PUT", "/node/o1", {"obmd": form}, 401, "AuthorizationError")
    admin.ok("PUT", "/node/o1", {"obmd": form, "metadata": {"rack": "r3"}})
    assert admin.error("PUT", "/node/o1", {"obmd": form}, 409, "DuplicateError") == "Node o1 already exists."
    node = stored(site, "o1")
    assert (node.obm_type, node.obm_enabled) == ("obmd", False)
    assert node.obm_settings == {**form, "token": None}
    assert admin.ok("GET", "/node/o1") == {
        "metadata": {"rack": '"r3"'}, "name": "o1", "nics": [], "project": None,
    }  # fmt: skip


def test_obm_enable_and_disable_get_and_revoke_a_node_token(site: Api, obmd: FakeObmd) -> None:
    register(site, obmd)
    alice, bob = site.alice, site.bob
    bob.error("PUT", "/node/o1/obm", {"enabled": True}, 401, "AuthorizationError")
    assert obmd.calls == []
    alice.ok("PUT", "/node/o1/obm", {"enabled": True})
    token = obmd.machines["o1"].token
    assert token and stored(site, "o1").obm_settings["token"] == token
    assert obmd.calls == [("POST", "/node/o1/token")]
    alice.ok("PUT", "/node/o1/obm", {"enabled": True})  # again: a fresh token, as HIL asks obmd
    assert obmd.machines["o1"].token != token
    assert stored(site, "o1").obm_settings["token"] == obmd.machines["o1"].token
    site.admin.error("POST", "/project/p1/detach_node", {"node": "o1"}, 409, "BlockedError")
    alice.ok("PUT", "/node/o1/obm", {"enabled": False})
    assert obmd.machines["o1"].token is None
    node = stored(site, "o1")
    assert (node.obm_enabled, node.obm_settings["token"]) == (False, None)
    alice.ok("PUT", "/node/o1/obm", {"enabled": False})  # idempotent
    assert obmd.calls[-2:] == [("DELETE", "/node/o1/token")] * 2
    msg = alice.error("GET", "/node/o1/power_status", None, 409, "BlockedError")
    assert msg.startswith("OBM is not enabled")


def test_power_boot_device_and_console_go_through_obmd(site: Api, obmd: FakeObmd) -> None:
    register(site, obmd)
    alice = site.alice
    alice.ok("PUT", "/node/o1/obm", {"enabled": True})
    machine = obmd.machines["o1"]
    assert alice.ok("GET", "/node/o1/power_status") == {"power_status": "off"}
    alice.ok("POST", "/node/o1/power_on")
    assert (machine.power, machine.boots) == ("on", 1)
    assert alice.ok("GET", "/node/o1/power_status") == {"power_status": "on"}
    alice.ok("POST", "/node/o1/power_cycle", {"force": True})
    assert machine.boots == 2
    alice.ok("PUT", "/node/o1/boot_device", {"bootdev": "pxe"})
    assert machine.bootdev == "pxe"
    alice.error("PUT", "/node/o1/boot_device", {"bootdev": "floppy"}, 400, "BadArgumentError")
    assert machine.bootdev == "pxe"
    alice.ok("POST", "/node/o1/power_off")
    assert machine.power == "off"
    assert "obmd has no call to send an NMI" in alice.error(
        "POST", "/node/o1/power_nmi", None, 502, "OBMError"
    )
    with alice.client.stream("GET", "/v0/node/o1/console", headers=alice.headers) as response:
        assert response.status_code == 200
        first = b""
        for chunk in response.iter_bytes():
            first += chunk
            if b"boot 2" in first:
                break
        assert b"reset: boot 2 from disk" in first
        alice.ok("PUT", "/node/o1/obm", {"enabled": False})  # revoking the token ends obmd's console
    site.bob.error("POST", "/node/o1/power_on", None, 401, "AuthorizationError")
    assert machine.boots == 2


def test_a_failing_obmd_is_a_502_and_leaves_the_obm_as_it_was(site: Api, obmd: FakeObmd) -> None:
    register(site, obmd)
    obmd.machines["o1"].fail = True
    msg = site.alice.error("PUT", "/node/o1/obm", {"enabled": True}, 502, "OBMError")
    assert obmd.node_uri("o1") in msg
    assert stored(site, "o1").obm_enabled is False
    obmd.machines["o1"].fail = False
    site.alice.ok("PUT", "/node/o1/obm", {"enabled": True})
    obmd.machines["o1"].fail = True
    site.alice.error("POST", "/node/o1/power_on", None, 502, "OBMError")
    site.alice.error("PUT", "/node/o1/obm", {"enabled": False}, 502, "OBMError")
    assert stored(site, "o1").obm_enabled is True, "obmd still holds a live token"


def test_tokens_never_come_back(site: Api, obmd: FakeObmd) -> None:
    form = register(site, obmd)
    site.alice.ok("PUT", "/node/o1/obm", {"enabled": True})
    token = obmd.machines["o1"].token
    assert token
    site.admin.error(
        "PUT", "/node/o1/obm_credentials", {"user": "u", "password": "p"}, 400, "BadArgumentError"
    )
    for caller in (site.admin, site.alice, site.bob, site.anon):
        for path in ("/v0/node/o1", "/v0/nodes/all", "/v0/project/p1/nodes", "/openapi.json"):
            text = caller.client.get(path, headers=caller.headers).text
            assert form["admin_token"] not in text and token not in text, (caller.user, path)
        for method, path in (("GET", "/node/o1/power_status"), ("POST", "/node/o1/power_on")):
            text = caller(method, path).text
            assert form["admin_token"] not in text and token not in text, (caller.user, path)


@pytest.mark.parametrize("enabled", [True, False])
def test_deleting_an_obmd_node_calls_no_obmd(site: Api, obmd: FakeObmd, enabled: bool) -> None:
    register(site, obmd, project=None)
    site.admin.ok("DELETE", "/node/o1/nic/eth0")
    if enabled:
        site.admin.ok("PUT", "/node/o1/obm", {"enabled": True})
    calls = list(obmd.calls)
    site.admin.ok("DELETE", "/node/o1")
    assert obmd.calls == calls
    assert "o1" not in site.admin.ok("GET", "/nodes/all")
