"""HIL master's own CLI sequence, replayed against a base rhaas with the exact requests HIL's client sends.

The sequence is that of a reference run of HIL master's CLI against a real HIL (mock switch, obmd nodes,
database auth): each step is the CLI command, the HTTP call HIL's client makes for it (method, path, JSON
body sent without a Content-Type) and the answer real HIL gave, derived from the CLI's output and exit
code: a status and a JSON body, or a status and HIL's error type. The obmd at the other end is the fake
obmd (its power answers are its own, as the reference run's stand-in's were).

Where rhaas deliberately differs from HIL, the step says so (``differs``):

- ``node metadata add`` then ``metadata delete``: HIL answered 200 to the add, stored nothing, and then
  404 to the delete; rhaas stores the value and deletes it.
- power calls: HIL answers 307 to ``<obmd uri>/<call>?token=<node token>`` and its client follows; rhaas
  makes the call to obmd itself, so the node token never leaves the server. The CLI sees the same final
  answer (200, and obmd's ``{"power_status": …}``).
- error messages are rhaas's own where HIL's say less (the status and the error type are HIL's).

CLI-only failures make no HTTP call and are left out: ``hil network list`` crashing on a public network
(its answer is checked here), and ``hil user set-admin cu1 true`` (a usage error, exit code 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from api_helpers import Api, Caller

from rhaas.lab.obmd import FakeObmd

MOCK = "http://schema.massopencloud.org/haas/v0/switches/mock"
PORT_FORMS = (
    "Invalid port name. Valid port names for this switch are of the form gi1/0/11, te1/0/12, gi1/12, or te1/3"
)
ANY = object()  # a value the step does not pin (an allocated VLAN, a status id)


def matches(expected: Any, actual: Any) -> bool:
    """``actual`` equals ``expected`` where ``expected`` is not ANY (recursively through dicts/lists)."""
    if expected is ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and set(expected) == set(actual)
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


class Replay:
    """Runs steps as HIL's client would, as admin or as cu1, and checks each answer."""

    def __init__(self, api: Api, obmd: FakeObmd) -> None:
        self.api, self.obmd = api, obmd
        self.callers: dict[str, Caller] = {"admin": api.admin}
        self.status_ids: dict[str, str] = {}

    def __call__(
        self,
        command: str,
        method: str,
        path: str,
        body: Any = None,
        status: int = 200,
        answer: Any = None,
        *,
        error: str | None = None,
        msg: str | Callable[[str], bool] | None = None,
        who: str = "admin",
    ) -> Any:
        response = self.callers[who](method, path, body)
        where = f"$ hil {command}  ({who}: {method} {path})"
        assert response.status_code == status, (where, response.status_code, response.text)
        data = response.json() if response.content else None
        if error is not None:
            assert set(data) == {"type", "msg"} and data["type"] == error, (where, data)
            if isinstance(msg, str):
                assert data["msg"] == msg, (where, data)
            elif msg is not None:
                assert msg(data["msg"]), (where, data)
        else:
            assert matches(answer, data), (where, answer, data)
        return data

    def action(self, command: str, status_id: str, answer: dict[str, Any], who: str = "admin") -> None:
        """``networking-action show``: wait until HIL's daemon would have applied it, then compare."""
        self.callers[who].wait_action(status_id)
        self(command, "GET", f"/networking_action/{status_id}", answer=answer, who=who)


def show(name: str, project: str | None, networks: dict[str, str], port: str | None, metadata: Any) -> Any:
    nic: dict[str, Any] = {"label": "eth0", "macaddr": f"52:54:00:aa:00:0{name[-1]}", "networks": networks}
    if port is not None:
        nic |= {"port": port, "switch": "cswx"}
    return {"metadata": metadata, "name": name, "nics": [nic], "project": project}


def test_hil_master_cli_sequence(api: Api, obmd: FakeObmd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hil = Replay(api, obmd)
    # Set-up of the reference run: a project and a switch that were there before.
    hil("project create reseller", "PUT", "/project/reseller")
    hil("switch register sw0 mock h u p", "PUT", "/switch/sw0",
        {"type": MOCK, "hostname": "h", "username": "u", "password": "p"})  # fmt: skip
    for n in (1, 2):
        obmd.add(f"cn{n}")
    uri = {n: obmd.node_uri(f"cn{n}") for n in (1, 2)}

    hil("project create cp1", "PUT", "/project/cp1")
    hil("project create cp2", "PUT", "/project/cp2")
    hil("project list", "GET", "/projects", answer=["cp1", "cp2", "reseller"])
    hil("switch register cswx mock mockhost mockuser mockpass", "PUT", "/switch/cswx",
        {"hostname": "mockhost", "username": "mockuser", "password": "mockpass", "type": MOCK})  # fmt: skip
    hil("switch list", "GET", "/switches", answer=["cswx", "sw0"])
    hil("port register cswx gi1/0/11", "PUT", "/switch/cswx/port/gi1/0/11")
    hil("port register cswx gi1/0/12", "PUT", "/switch/cswx/port/gi1/0/12")
    hil("port register cswx badport", "PUT", "/switch/cswx/port/badport", None, 400, error="BadArgumentError",
        msg=PORT_FORMS)  # fmt: skip
    hil("switch show cswx", "GET", "/switch/cswx", answer={
        "capabilities": ["nativeless-trunk-mode"], "name": "cswx",
        "ports": [{"label": "gi1/0/11"}, {"label": "gi1/0/12"}]})  # fmt: skip
    hil("node register cn1 …", "PUT", "/node/cn1", {"obmd": {"uri": uri[1], "admin_token": obmd.admin_token}})
    hil("node register cn2 …", "PUT", "/node/cn2", {"obmd": {"uri": uri[2], "admin_token": obmd.admin_token}})
    hil("node register cn1 …", "PUT", "/node/cn1", {"obmd": {"uri": uri[1], "admin_token": obmd.admin_token}},
        409, error="DuplicateError", msg="Node cn1 already exists.")  # fmt: skip
    hil("node nic register cn1 eth0 …", "PUT", "/node/cn1/nic/eth0", {"macaddr": "52:54:00:aa:00:01"})
    hil("node nic register cn2 eth0 …", "PUT", "/node/cn2/nic/eth0", {"macaddr": "52:54:00:aa:00:02"})
    hil("port nic add cswx gi1/0/11 cn1 eth0", "POST", "/switch/cswx/port/gi1/0/11/connect_nic",
        {"node": "cn1", "nic": "eth0"})  # fmt: skip
    hil("port nic add cswx gi1/0/12 cn2 eth0", "POST", "/switch/cswx/port/gi1/0/12/connect_nic",
        {"node": "cn2", "nic": "eth0"})  # fmt: skip
    hil("port show cswx gi1/0/11", "GET", "/switch/cswx/port/gi1/0/11",
        answer={"node": "cn1", "nic": "eth0", "networks": {}})  # fmt: skip
    hil("node list free", "GET", "/nodes/free", answer=["cn1", "cn2"])
    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", None, {}, "gi1/0/11", {}))
    hil("node metadata add cn1 rack r3", "PUT", "/node/cn1/metadata/rack", {"value": "r3"})
    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", None, {}, "gi1/0/11", {"rack": '"r3"'}))
    # differs: HIL answered 404 here (its add had stored nothing); rhaas deletes what it stored.
    hil("node metadata delete cn1 rack", "DELETE", "/node/cn1/metadata/rack")
    hil("project node add cp1 cn1", "POST", "/project/cp1/connect_node", {"node": "cn1"})
    hil("project node add cp1 cn1", "POST", "/project/cp1/connect_node", {"node": "cn1"}, 409,
        error="BlockedError", msg=lambda m: "already owned by a project" in m)  # fmt: skip
    hil("project node add cp1 nosuchnode", "POST", "/project/cp1/connect_node", {"node": "nosuchnode"}, 404,
        error="NotFoundError", msg="Node nosuchnode does not exist.")  # fmt: skip
    hil("project node list cp1", "GET", "/project/cp1/nodes", answer=["cn1"])
    hil("user create cu1 cu1pw regular", "PUT", "/auth/basic/user/cu1",
        {"password": "cu1pw", "is_admin": False})  # fmt: skip
    hil("user project add cu1 cp1", "POST", "/auth/basic/user/cu1/add_project", {"project": "cp1"})
    hil.callers["cu1"] = Caller(api.client, "cu1", "cu1pw")

    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", "cp1", {}, None, {}), who="cu1")
    hil("node show cn2", "GET", "/node/cn2", answer=show("cn2", None, {}, None, {}), who="cu1")
    hil("project node list cp1", "GET", "/project/cp1/nodes", answer=["cn1"], who="cu1")
    hil("project list", "GET", "/projects", None, 401, error="AuthorizationError",
        msg="This operation is administrator-only.", who="cu1")  # fmt: skip
    hil("network create cnet1 cp1", "PUT", "/network/cnet1", {"owner": "cp1", "access": "cp1", "net_id": ""},
        who="cu1")  # fmt: skip
    shown = hil("network show cnet1", "GET", "/network/cnet1", who="cu1", answer={
        "access": ["cp1"], "channels": ["vlan/native", ANY], "connected-nodes": {}, "name": "cnet1",
        "owner": "cp1"})  # fmt: skip
    vlan = shown["channels"][1].removeprefix("vlan/")
    hil("network create cnet2 cp2", "PUT", "/network/cnet2", {"owner": "cp2", "access": "cp2", "net_id": ""},
        401, error="AuthorizationError", who="cu1")  # fmt: skip
    hil("network create cpub admin --access ''", "PUT", "/network/cpub",
        {"owner": "admin", "access": "", "net_id": ""})  # fmt: skip
    hil("network create cnetid admin --net-id 150 --access ''", "PUT", "/network/cnetid",
        {"owner": "admin", "access": "", "net_id": "150"})  # fmt: skip
    networks = hil("network list (the CLI crashes; the answer is fine)", "GET", "/networks", answer={
        "cnet1": {"network_id": vlan, "projects": ["cp1"]}, "cpub": {"network_id": ANY, "projects": None},
        "cnetid": {"network_id": "150", "projects": None}})  # fmt: skip
    assert networks["cpub"]["network_id"] not in (vlan, "150")
    hil("project list-networks cp1", "GET", "/project/cp1/networks", answer=["cnet1"])

    connect = {"network": "cnet1", "channel": "vlan/native"}
    sid = hil("node network connect cn1 eth0 cnet1 vlan/native", "POST", "/node/cn1/nic/eth0/connect_network",
              connect, 202, {"status_id": ANY}, who="cu1")["status_id"]  # fmt: skip
    hil("node network connect cn1 eth0 cnet1 vlan/native", "POST", "/node/cn1/nic/eth0/connect_network",
        connect, 409, error="BlockedError")  # fmt: skip
    hil.action(f"networking-action show {sid}", sid, {"node": "cn1", "nic": "eth0", "new_network": "cnet1",
               "type": "modify_port", "channel": "vlan/native", "status": "DONE"})  # fmt: skip
    attached = {"vlan/native": "cnet1"}
    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", "cp1", attached, None, {}), who="cu1")
    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", "cp1", attached, "gi1/0/11", {}))
    cnet1 = {"access": ["cp1"], "channels": ["vlan/native", f"vlan/{vlan}"],
             "connected-nodes": {"cn1": ["eth0"]}, "name": "cnet1", "owner": "cp1"}  # fmt: skip
    hil("network show cnet1", "GET", "/network/cnet1", answer=cnet1)
    attachment = {"cn1": {"channel": "vlan/native", "nic": "eth0", "project": "cp1"}}
    hil("network list-attachments cnet1", "GET", "/network/cnet1/attachments", answer=attachment)
    hil("network list-attachments cnet1 --project cp1", "GET", "/network/cnet1/attachments?project=cp1",
        answer=attachment)  # fmt: skip
    hil("port show cswx gi1/0/11", "GET", "/switch/cswx/port/gi1/0/11",
        answer={"node": "cn1", "nic": "eth0", "networks": attached})  # fmt: skip
    hil("network grant-access cnet1 cp2", "PUT", "/network/cnet1/access/cp2")
    hil("network show cnet1", "GET", "/network/cnet1", answer=cnet1 | {"access": ["cp1", "cp2"]})
    hil("network revoke-access cnet1 cp2", "DELETE", "/network/cnet1/access/cp2")
    hil("node network connect cn1 eth0 cpub vlan/150", "POST", "/node/cn1/nic/eth0/connect_network",
        {"network": "cpub", "channel": "vlan/150"}, 400, error="BadArgumentError")  # fmt: skip
    hil("node network connect cn1 eth0 cnet2 vlan/native", "POST", "/node/cn1/nic/eth0/connect_network",
        {"network": "cnet2", "channel": "vlan/native"}, 404, error="NotFoundError",
        msg="Network cnet2 does not exist.")  # fmt: skip

    machine = obmd.machines["cn1"]
    hil("node obm enable cn1", "PUT", "/node/cn1/obm", {"enabled": True})
    token = machine.token
    assert token is not None
    # differs: HIL answers 307 to obmd (its client follows); rhaas asks obmd itself. Same final answer.
    hil("node power status cn1", "GET", "/node/cn1/power_status", answer={"power_status": "off"})
    hil("node power on cn1", "POST", "/node/cn1/power_on")
    hil("node power status cn1", "GET", "/node/cn1/power_status", answer={"power_status": "on"})
    hil("node bootdev cn1 pxe", "PUT", "/node/cn1/boot_device", {"bootdev": "pxe"})
    assert (machine.power, machine.boots, machine.bootdev) == ("on", 1, "pxe")
    hil("node obm disable cn1", "PUT", "/node/cn1/obm", {"enabled": False})
    assert machine.token is None
    hil("node power status cn1", "GET", "/node/cn1/power_status", None, 409, error="BlockedError",
        msg=lambda m: m.startswith("OBM is not enabled"))  # fmt: skip
    hil("project node remove cp1 cn1", "POST", "/project/cp1/detach_node", {"node": "cn1"}, 409,
        error="BlockedError")  # fmt: skip
    sid = hil("node network detach cn1 eth0 cnet1", "POST", "/node/cn1/nic/eth0/detach_network",
              {"network": "cnet1"}, 202, {"status_id": ANY}, who="cu1")["status_id"]  # fmt: skip
    hil.action(f"networking-action show {sid}", sid, {"node": "cn1", "nic": "eth0", "new_network": None,
               "type": "modify_port", "channel": "vlan/native", "status": "DONE"})  # fmt: skip
    hil("node show cn1", "GET", "/node/cn1", answer=show("cn1", "cp1", {}, "gi1/0/11", {}))
    hil("project node remove cp1 cn1", "POST", "/project/cp1/detach_node", {"node": "cn1"})
    for net in ("cnet1", "cpub", "cnetid"):
        hil(f"network delete {net}", "DELETE", f"/network/{net}")
    hil("user project remove cu1 cp1", "POST", "/auth/basic/user/cu1/remove_project", {"project": "cp1"})
    hil("user delete cu1", "DELETE", "/auth/basic/user/cu1")
    sid = hil("port revert cswx gi1/0/11", "POST", "/switch/cswx/port/gi1/0/11/revert",
              answer={"status_id": ANY})["status_id"]  # fmt: skip
    hil.callers["admin"].wait_action(sid)
    hil("port nic remove cswx gi1/0/11", "POST", "/switch/cswx/port/gi1/0/11/detach_nic")
    hil("port nic remove cswx gi1/0/12", "POST", "/switch/cswx/port/gi1/0/12/detach_nic")
    hil("port delete cswx gi1/0/11", "DELETE", "/switch/cswx/port/gi1/0/11")
    hil("port delete cswx gi1/0/12", "DELETE", "/switch/cswx/port/gi1/0/12")
    hil("node nic delete cn1 eth0", "DELETE", "/node/cn1/nic/eth0")
    hil("node delete cn1", "DELETE", "/node/cn1")
    hil("node delete cn2", "DELETE", "/node/cn2", None, 409, error="BlockedError")
    hil("switch delete cswx", "DELETE", "/switch/cswx")
    hil("project delete cp1", "DELETE", "/project/cp1")
    hil("project delete cp2", "DELETE", "/project/cp2")
    hil("project list", "GET", "/projects", answer=["reseller"])

    # obmd was only asked for tokens and told to power on and boot from PXE; no secret reached a log.
    assert ("POST", "/node/cn1/token") in obmd.calls and ("DELETE", "/node/cn1/token") in obmd.calls
    assert not any(path.startswith("/node/cn2") for _, path in obmd.calls)
    assert obmd.admin_token not in caplog.text and token not in caplog.text
