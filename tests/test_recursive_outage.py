"""Network actions of a recursive instance over an upstream whose API goes away and comes back.

The upstream is a base rhaas whose networking worker runs as its own process (``serve-networks``), as
HIL's networking daemon does: stopping its API leaves the worker applying what it had accepted. The
recursive instance retries what failed transiently within ``[upstream] action_timeout``, reads the NIC
back before giving up, and its background reconciler (``reconcile_interval``, short here) repairs what
is left, so every scenario ends with both levels agreeing and no manual step.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from recursion_helpers import Level, ok, start_level, wait_done

from rhaas.db.models import DONE, PENDING, NetworkingAction
from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.lab.polling import wait_for

pytestmark = pytest.mark.slow


@dataclass
class Site:
    base: Level
    mid: Level
    carol: httpx.Client
    vlan: str
    mid_log: Path


@contextmanager
def two_levels(tmp_path: Path, db_url: str, action_timeout: float) -> Iterator[Site]:
    """A base (API and networking worker as two processes; a switch taking 2 s per change) and a
    recursive instance on it whose customer carol holds n1 and owns network cnet. Every process is
    stopped, by PID, however the test ends."""
    started: list[Level] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        base = start_level(db_url, tmp_path / "l1.log", None, "", "", "--no-worker")
        started.append(base)
        with (tmp_path / "daemon.log").open("ab") as out:
            command = [sys.executable, "-m", "rhaas.admin", "serve-networks", "--database", db_url]
            daemon = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        switch = {"type": "mock", "delay": 2.0, "state_file": str(tmp_path / "switch.json")}  # two processes
        ok(base.admin.put("/switch/slow", json=switch))
        ok(
            base.admin.put(
                "/node/n1", json={"obm": {"type": "mock", "host": "b1", "user": "u", "password": "p"}}
            )
        )
        ok(base.admin.put("/node/n1/nic/eth0", json={"macaddr": "52:54:00:00:00:01"}))
        ok(base.admin.put("/switch/slow/port/p1"))
        ok(base.admin.post("/switch/slow/port/p1/connect_nic", json={"node": "n1", "nic": "eth0"}))
        ok(base.admin.put("/project/reseller2"))
        base.user("l2bot", "l2bot-pw", "reseller2")
        config = tmp_path / "l2.toml"
        config.write_text(f"[upstream]\naction_timeout = {action_timeout}\nreconcile_interval = 1\n")
        db = f"sqlite:///{tmp_path / 'l2.sqlite3'}"
        mid = start_level(db, tmp_path / "l2.log", base, "reseller2", "l2bot", "--config", str(config))
        started.append(mid)
        ok(mid.admin.put("/project/cust"))
        carol = mid.user("carol", "carolpw", "cust")
        ok(carol.post("/project/cust/connect_nodes", json={"count": 1}))
        ok(carol.put("/network/cnet", json={"owner": "cust", "access": "cust", "net_id": ""}))
        vlan = ok(carol.get("/network/cnet"))["channels"][1].split("/")[1]
        yield Site(base, mid, carol, vlan, tmp_path / "l2.log")
    finally:
        for level in reversed(started):
            level.close()
            level.server.stop()
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def base_actions(base: Level) -> list[str]:
    """The statuses of the base's networking actions, oldest first (read from its database)."""
    engine = make_engine(base.server.db_url)
    try:
        with make_sessionmaker(engine)() as db:
            return [a.status for a in db.query(NetworkingAction).order_by(NetworkingAction.id)]
    finally:
        engine.dispose()


def port(base: Level) -> dict:
    return ok(base.admin.get("/switch/slow/port/p1/state"))  # type: ignore[no-any-return]


def in_sync(mid: Level) -> bool:
    drift = ok(mid.admin.post("/pool/reconcile", json={"fix": False}))
    return not any(v for k, v in drift.items() if k != "fixed")


def connect_and_stop_the_base_api(site: Site) -> str:
    """Ask the recursive instance to connect n1, wait until the change is in flight at the base, then
    kill the base's API (its networking worker goes on) and wait until that worker has applied it."""
    sid = ok(site.carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)["status_id"]
    wait_for(
        "the change to be in flight at the base", lambda: PENDING in base_actions(site.base), 10, every=0.02
    )
    site.base.server.stop(signal.SIGKILL)
    wait_for("the base's worker to apply it, API down", lambda: base_actions(site.base)[-1:] == [DONE], 30)
    return sid


def test_upstream_api_stopped_mid_connect_the_action_ends_done_once_it_is_back(tmp_path, db_url):
    with two_levels(tmp_path, db_url, action_timeout=60) as site:
        sid = connect_and_stop_the_base_api(site)
        # Down for now: still being retried, not given up on.
        assert ok(site.carol.get(f"/networking_action/{sid}"))["status"] == PENDING
        site.base.server.start()
        action = wait_done(site.carol, sid, timeout=60)
        assert action["status"] == "DONE", action
        assert port(site.base) == {"native": site.vlan, "tagged": []}
        assert ok(site.carol.get("/node/n1"))["nics"][0]["networks"] == {"vlan/native": "cnet"}
        assert in_sync(site.mid)


def test_an_action_issued_while_the_upstream_is_down_succeeds_when_it_is_back(tmp_path, db_url):
    with two_levels(tmp_path, db_url, action_timeout=60) as site:
        site.base.server.stop()
        sid = ok(site.carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)[
            "status_id"
        ]
        wait_for("a failed try", lambda: "switch change failed (attempt 2" in site.mid_log.read_text(), 30)
        assert ok(site.carol.get(f"/networking_action/{sid}"))["status"] == PENDING
        site.base.server.start()
        action = wait_done(site.carol, sid, timeout=60)
        assert action["status"] == "DONE", action
        assert port(site.base) == {"native": site.vlan, "tagged": []}
        assert in_sync(site.mid)


def test_a_refusal_upstream_is_not_retried(tmp_path, db_url):
    with two_levels(tmp_path, db_url, action_timeout=60) as site:
        # The base's operator takes n1 back: the base now refuses (409, in HIL's shape) to connect it.
        ok(site.base.admin.post("/project/reseller2/detach_node", json={"node": "n1"}))
        sid = ok(site.carol.post("/node/n1/nic/eth0/connect_network", json={"network": "cnet"}), 202)[
            "status_id"
        ]
        action = wait_done(site.carol, sid, timeout=30)
        assert action["status"] == "ERROR", action
        assert "ProjectMismatchError" in action["error"], action
        assert "refused after 1 attempt(s)" in action["error"], action
        assert base_actions(site.base) == []
        assert ok(site.carol.get("/node/n1"))["nics"][0]["networks"] == {}


def test_upstream_away_past_the_action_timeout_error_then_background_repair(tmp_path, db_url):
    """The base's worker applies the change after its API stopped, and the API stays away longer than
    the recursive instance waits: the action ends in ERROR (the NIC could not be read back), and once
    the base is back the background reconciler makes it agree with what was committed, unasked."""
    with two_levels(tmp_path, db_url, action_timeout=3) as site:
        sid = connect_and_stop_the_base_api(site)
        action = wait_done(site.carol, sid, timeout=60)
        assert action["status"] == "ERROR", action
        assert site.base.server.url in action["error"] and "could not be read back" in action["error"], action
        assert ok(site.carol.get("/node/n1"))["nics"][0]["networks"] == {}
        site.base.server.start()
        repaired = "reconcile: n1/eth0 made to carry"  # logged once the base has done the change
        wait_for(
            "the reconciler to repair the base", lambda: repaired in site.mid_log.read_text(), 60, every=0.2
        )
        assert port(site.base) == {"native": None, "tagged": []}
        assert in_sync(site.mid)
