"""The HIL master double answers on the wire as HIL master does (see hil_double's docstring): these are
the behaviours a recursive rhaas depends on, checked through plain HTTP and through rhaas's client."""

from __future__ import annotations

import time

import httpx
import pytest
from hil_double import HilDouble

from rhaas.client import Client
from rhaas.errors import AuthorizationError, BlockedError, NotFoundError, UpstreamError, ValidationError
from rhaas.lab.polling import wait_for


def site(hil: HilDouble) -> None:
    hil.add_project("proj")
    hil.add_user("bot", "botpw", "proj")
    hil.add_node("n1", ("eth0", "52:54:00:00:00:01", "gi1/0/1"))
    hil.add_node("n2", ("eth0", "52:54:00:00:00:02", "gi1/0/2"))


def http(hil: HilDouble, user: str = "admin", password: str = "adminpw") -> httpx.Client:
    return httpx.Client(base_url=hil.url + "/v0", auth=(user, password), timeout=10)


def test_routes_it_lacks_answer_html_404_and_wrong_methods_html_405(hil):
    site(hil)
    with http(hil) as c:
        for method, path in (("POST", "/node/n1/power_nmi"), ("POST", "/project/proj/connect_nodes")):
            r = c.request(method, path, json={"count": 1})
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), r.text
            assert "<title>404 Not Found</title>" in r.text
        r = c.delete("/nodes/free")
        assert r.status_code == 405 and "<title>405 Method Not Allowed</title>" in r.text
        assert "GET" in r.headers["allow"]
    # rhaas's client reads them as an upstream that answered without HIL's error body.
    with Client(hil.url, "bot", "botpw") as client:
        with pytest.raises(UpstreamError, match="HTTP 404"):
            client.project.connect_nodes("proj", 1)
        with pytest.raises(UpstreamError, match="HTTP 404"):
            client.node.power_nmi("n1")


def test_arguments_are_checked_before_authentication_and_errors_are_hils(hil):
    site(hil)
    with http(hil, "nobody", "x") as c:
        # ?wait= (rhaas's long poll) is an unknown argument: 400 before anyone is authenticated.
        r = c.get("/networking_action/abc", params={"wait": "1"})
        assert r.status_code == 400 and r.json() == {
            "type": "ValidationError",
            "msg": "Request arguments are not valid for this request",
        }
        r = c.get("/nodes/free")  # an unknown user name is a 404, as in HIL
        assert r.status_code == 404 and r.json()["type"] == "NotFoundError"
    assert httpx.get(hil.url + "/v0/nodes/free").json()["type"] == "AuthorizationError"
    with Client(hil.url, "bot", "botpw") as client:
        with pytest.raises(ValidationError):
            client.node.show_networking_action("abc", wait=1)
        with pytest.raises(AuthorizationError):
            client.extensions.list_active()  # admin only, as in HIL
        assert client.node.list("free") == ["n1", "n2"]
    with Client(hil.url, "admin", "adminpw") as admin:
        assert admin.extensions.list_active() == [
            "hil.ext.auth.database",
            "hil.ext.network_allocators.vlan_pool",
            "hil.ext.switches.mock",
        ]


def test_connect_is_202_and_applied_later_by_the_daemon(hil):
    site(hil)
    hil.daemon.pause()
    with Client(hil.url, "bot", "botpw") as client:
        client.project.connect("proj", "n1")
        client.network.create("net", "proj", "proj", "")
        vlan = client.network.show("net")["channels"][1]
        r = client._conn.http.post(
            hil.url + "/v0/node/n1/nic/eth0/connect_network", json={"network": "net"}, auth=("bot", "botpw")
        )
        assert r.status_code == 202
        sid = r.json()["status_id"]
        action = client.node.show_networking_action(sid)
        assert action == {
            "status": "PENDING",
            "node": "n1",
            "nic": "eth0",
            "type": "modify_port",
            "channel": "vlan/native",
            "new_network": "net",
        }
        assert client.node.show("n1")["nics"][0]["networks"] == {}  # HIL shows what the daemon applied
        with pytest.raises(BlockedError, match="already active"):
            client.node.detach_network("n1", "eth0", "net")
        hil.daemon.resume()
        assert client.wait_networking_action(sid, 10)["status"] == "DONE"
        assert client.node.show("n1")["nics"][0]["networks"] == {"vlan/native": "net"}
        assert hil.state.port_log[-1] == ("sw0", "gi1/0/1", "vlan/native", vlan.split("/")[1])
        # The finished action is forgotten when the NIC's next one is queued, as in HIL.
        nxt = client.node.detach_network("n1", "eth0", "net")["status_id"]
        with pytest.raises(NotFoundError):
            client.node.show_networking_action(sid)
        assert client.wait_networking_action(nxt, 10)["status"] == "DONE"


def test_power_calls_are_307_redirects_to_obmd_which_has_no_nmi(hil):
    site(hil)
    with Client(hil.url, "bot", "botpw") as client:
        client.project.connect("proj", "n1")
        with pytest.raises(BlockedError, match="OBM is not enabled"):
            client.node.power_cycle("n1")
        client.node.enable_obm("n1")
        with http(hil, "bot", "botpw") as c:
            r = c.post("/node/n1/power_cycle", json={"force": True})
            assert r.status_code == 307
            assert r.headers["location"].startswith(hil.obmd.url + "/node/n1/power_cycle?token=")
        client.node.set_bootdev("n1", "pxe")
        client.node.power_cycle("n1", force=True)
        assert client.node.power_status("n1") == {"power_status": "on"}
        assert hil.obmd_calls("n1") == ["boot_device pxe", "power_cycle force=True"]
        with pytest.raises(UpstreamError, match="HTTP 404"):
            client.node.power_nmi("n1")
        client.node.disable_obm("n1")
        with pytest.raises(BlockedError, match="OBM is not enabled"):
            client.node.power_on("n1")
        client.project.detach("proj", "n1")
        assert hil.free_nodes() == ["n1", "n2"]


def test_the_api_restarts_on_its_port_while_the_daemon_applies_what_was_queued(hil):
    site(hil)
    with Client(hil.url, "bot", "botpw", timeout=5) as client:
        client.project.connect("proj", "n1")
        client.network.create("net", "proj", "proj", "")
        hil.daemon.pause()
        sid = client.node.connect_network("n1", "eth0", "net", "vlan/native")["status_id"]
        url = hil.url
        hil.stop_api()
        with pytest.raises(UpstreamError, match="cannot be reached"):
            client.node.list("free")
        hil.daemon.resume()
        applied = {"vlan/native": "net"}
        wait_for("the daemon to apply it", lambda: hil.nic_networks("n1", "eth0") == applied, 10)
        hil.start_api()
        assert hil.url == url
        assert client.node.show_networking_action(sid)["status"] == "DONE"


def test_each_request_costs_hils_delay_and_they_are_served_one_at_a_time(hil):
    site(hil)
    hil.delay = 0.2
    with Client(hil.url, "bot", "botpw") as client:
        start = time.monotonic()
        for _ in range(3):
            client.node.list("free")
        elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 3.0, elapsed
