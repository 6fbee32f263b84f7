"""A recursive rhaas over the HIL master double (tests/hil_double.py) whose API goes away mid-connect.

HIL's networking daemon applies what its API accepted even while the API is down. The recursive
instance keeps retrying within ``[upstream] action_timeout`` and finds the change there once the API is
back: the action ends DONE, with both sides agreeing, and no manual step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hil_double import HilDouble
from recursion_helpers import ok, wait_done

from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def over_hil(tmp_path: Path) -> Iterator[tuple[HilDouble, Server, httpx.Client]]:
    """The HIL double (each switch change taking 1 s) holding n1 for project reseller, a recursive rhaas
    on it whose customer carol holds n1 and owns network cnet. Both are stopped however the test ends."""
    hil = HilDouble(switch_delay=1.0).start()
    server: Server | None = None
    try:
        hil.add_project("reseller")
        hil.add_user("bot", "botpw", "reseller")
        hil.add_node("n1", ("eth0", "52:54:00:00:00:01", "gi1/0/1"))
        config = tmp_path / "l2.toml"
        config.write_text("[upstream]\naction_timeout = 60\nreconcile_interval = 1\n")
        args = ["--upstream", hil.url, "--upstream-project", "reseller", "--upstream-user", "bot"]
        server = Server(
            f"sqlite:///{tmp_path / 'l2.sqlite3'}",
            tmp_path / "l2.log",
            "--vlans", "100-199", *args, "--config", str(config),
            env={"RHAAS_UPSTREAM_PASSWORD": "botpw"},
        ).start()  # fmt: skip
        with server.client("admin", "adminpw") as admin:
            ok(admin.put("/project/cust"))
            ok(admin.put("/auth/basic/user/carol", json={"password": "carolpw"}))
            ok(admin.post("/auth/basic/user/carol/add_project", json={"project": "cust"}))
        carol = server.client("carol", "carolpw")
        ok(carol.post("/project/cust/connect_node", json={"node": "n1"}))
        ok(carol.put("/network/cnet", json={"owner": "cust", "access": "cust", "net_id": ""}))
        yield hil, server, carol
        carol.close()
    finally:
        if server is not None:
            server.stop()
        hil.stop()


def hil_pending(hil: HilDouble) -> bool:
    with hil.state.lock:
        return any(a.status == "PENDING" for a in hil.state.actions.values())


def test_hil_api_stopped_mid_connect_the_action_ends_done_once_it_is_back(over_hil):
    hil, server, carol = over_hil
    sid = ok(carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)["status_id"]
    wait_for("the change to be queued at HIL", lambda: hil_pending(hil), 20, every=0.02)
    hil.stop_api()
    wait_for("HIL's daemon to apply it, API down", lambda: hil.nic_networks("n1", "eth0") != {}, 20)
    (upstream_label,) = hil.nic_networks("n1", "eth0").values()
    assert ok(carol.get(f"/networking_action/{sid}"))["status"] == "PENDING"  # retried, not given up on
    hil.start_api()
    action = wait_done(carol, sid, timeout=60)
    assert action["status"] == "DONE", action
    assert ok(carol.get("/node/n1"))["nics"][0]["networks"] == {"vlan/native": "cnet"}
    assert hil.nic_networks("n1", "eth0") == {"vlan/native": upstream_label}
    with server.client("admin", "adminpw") as admin:
        drift = ok(admin.post("/pool/reconcile", json={"fix": False}))
    assert not any(v for k, v in drift.items() if k != "fixed"), drift


def test_an_action_issued_while_hil_is_down_succeeds_when_it_is_back(over_hil):
    hil, server, carol = over_hil
    hil.stop_api()
    sid = ok(carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)["status_id"]
    log = Path(server.log_path)
    wait_for("a failed try", lambda: "switch change failed (attempt 2" in log.read_text(), 30)
    hil.start_api()
    action = wait_done(carol, sid, timeout=60)
    assert action["status"] == "DONE", action
    assert list(hil.nic_networks("n1", "eth0")) == ["vlan/native"]
