"""A return whose wipe takes longer than the return's deadline: while the return FPBL reports the wipe
going on, the deadline moves with it, so a slow disk is not turned into a power cycle (and a wipe again,
and again); the node shows the wipe's progress meanwhile."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from agent_helpers import Agent, deploy, enroll, machine, prov_images, state
from api_helpers import Api, make_api, populate_site

from rhaas.core.provisioning import protocol
from rhaas.lab.polling import wait_for

RETURN_TIMEOUT = 1.0


@pytest.fixture
def prov(db_url: str) -> Iterator[Api]:
    overrides = {
        "provisioning__enabled": True,
        "provisioning__agent_url": "http://10.0.2.2:5000",
        "provisioning__return_timeout": RETURN_TIMEOUT,
        "provisioning__tick_seconds": 0.05,
    }
    with make_api(db_url, **overrides) as api:
        populate_site(api)
        prov_images(api)
        yield api


def returning(api: Api) -> tuple[Agent, str]:
    """n1 deployed for p1 and given back; its return FPBL checked in and holds the wipe: (agent, job)."""
    agent = enroll(api, "n1")
    agent.checkin()
    api.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    deploy(api, agent, "n1")
    machine("bmc1").power = "on"
    nmis = machine("bmc1").nmis
    api.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    wait_for("the NMI", lambda: machine("bmc1").nmis == nmis + 1, 10.0, every=0.02)
    agent.checkin("return")
    item = agent.work()
    assert item["action"] == "wipe", item
    return agent, item["job"]


def test_a_wipe_that_reports_progress_outlives_the_return_deadline_and_stays_fast(prov):
    agent, job = returning(prov)
    boots = machine("bmc1").boots
    agent.report(job, "wipe", "start")
    until = time.monotonic() + 3 * RETURN_TIMEOUT  # the disk takes three deadlines to zero
    done = 0
    while time.monotonic() < until:
        done += 1
        agent.report(job, "wipe", "start", progress={"done": done, "total": 100})
        shown = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
        assert shown["path"] == "fast", "a slow wipe is not a hang: no reboot path"
        assert shown["phases"][-1]["progress"] == {"done": done, "total": 100}, "the wipe's progress shows"
        time.sleep(0.2)  # the disk's own pace, not a wait for a condition
    for phase in ("wipe", "verify-wipe", "ready"):
        agent.report(job, phase, "done")
    ended = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    assert (ended["status"], ended["path"]) == ("DONE", "fast")
    assert state(prov, "n1") == "ready" and machine("bmc1").boots == boots, "no power cycle"


def test_a_return_fpbl_that_falls_silent_mid_wipe_still_meets_the_deadline(prov, monkeypatch):
    monkeypatch.setattr(protocol, "WIPE_GRACE", dt.timedelta(seconds=0.5))
    agent, job = returning(prov)
    boots = machine("bmc1").boots
    agent.report(job, "wipe", "start")
    # No more reports: the grace runs out, the deadline passes, and the return takes the reboot path.
    wait_for("the reboot path", lambda: machine("bmc1").boots == boots + 1, 10.0, every=0.05)
    shown = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    assert shown["path"] == "reboot" and ("fallback", "start") in [
        (p["phase"], p["state"]) for p in shown["phases"]
    ]
