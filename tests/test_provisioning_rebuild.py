"""Rebuild: provisioning a node that already runs an OS replaces it in one request — its return (NMI,
wipe, verified) and then the new deploy, with no firmware boot and no call between — and the node stays in
its project throughout. The test speaks the agent's protocol (the real agent runs the same return and
deploy on the lab: `rhaas demo`, test_demo.py)."""

from __future__ import annotations

from agent_helpers import Agent, deploy, enroll, machine, state
from api_helpers import Api

from rhaas.lab.polling import wait_for


def _deployed(prov: Api, node: str) -> Agent:
    agent = enroll(prov, node)
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": node})
    deploy(prov, agent, node)
    return agent


def _jobs(prov: Api, node: str) -> list[dict]:
    return prov.admin.ok("GET", f"/node/{node}/provisioning")["jobs"]


def test_provisioning_a_running_node_returns_wipes_and_deploys_it_in_one_request(prov):
    agent = _deployed(prov, "n1")
    bmc = machine("bmc1")
    bmc.power = "on"
    nmis, boots = bmc.nmis, bmc.boots
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    assert prov.alice.ok("GET", f"/provision_job/{job}")["status"] == "QUEUED"
    assert state(prov, "n1") == "returning"
    assert "n1" in prov.alice.ok("GET", "/project/p1/nodes"), "a rebuilt node stays in its project"
    wait_for("the NMI", lambda: bmc.nmis == nmis + 1, 10.0, every=0.02)

    # The return FPBL: wipe, verified; the waiting deploy starts at once, handed to the same agent.
    agent.checkin("return")
    item = agent.work()
    assert item["action"] == "wipe"
    agent.report(item["job"], "wipe", "done")
    assert prov.alice.ok("GET", f"/provision_job/{job}")["status"] == "QUEUED", (
        "not before the wipe is verified"
    )
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    assert state(prov, "n1") == "deploying"
    assert "n1" not in prov.admin.ok("GET", "/nodes/free")
    handed = agent.work()
    assert (handed["action"], handed["job"]) == ("deploy", job)
    agent.report(job, "kexec", "done")
    assert state(prov, "n1") == "deployed"

    history = _jobs(prov, "n1")
    assert [(j["kind"], j["status"], j["path"]) for j in history] == [
        ("deploy", "DONE", "fast"), ("return", "DONE", "fast"), ("deploy", "DONE", "fast"),
    ]  # fmt: skip
    rebuild = [p for p in history[1]["phases"] if p["phase"] == "rebuild"]
    assert [p["state"] for p in rebuild] == ["start", "done"] and job in rebuild[0]["detail"]
    assert bmc.boots == boots, "no firmware boot"


def test_a_rebuild_is_refused_while_the_node_returns_and_for_another_project(prov):
    _deployed(prov, "n1")
    queued = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    before = [(j["id"], j["kind"]) for j in _jobs(prov, "n1")]  # the ticker stamps the return meanwhile
    msg = prov.alice.error("POST", "/node/n1/provision", {"image": "a-os"}, 409, "BlockedError")
    assert "returning" in msg
    prov.bob.error("POST", "/node/n1/provision", {"image": "a-os"}, 401, "AuthorizationError")
    assert [(j["id"], j["kind"]) for j in _jobs(prov, "n1")] == before
    assert prov.alice.ok("GET", f"/provision_job/{queued}")["status"] == "QUEUED"


def test_a_node_leaving_its_project_mid_rebuild_cancels_the_waiting_deploy(prov):
    agent = _deployed(prov, "n1")
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "ERROR" and "left its project" in shown["error"]
    agent.checkin("return")
    item = agent.work()
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    assert state(prov, "n1") == "ready"
    assert agent.work()["action"] == "wait", "nothing deploys on a node that left the project"
    assert "n1" in prov.admin.ok("GET", "/nodes/free")


def test_a_rebuild_whose_return_fails_ends_its_deploy_in_error(prov):
    _deployed(prov, "n2")
    bmc = machine("bmc2")
    bmc.power = "on"
    job = prov.alice.ok("POST", "/node/n2/provision", {"image": "a-os"}, status=202)["job_id"]
    # No return FPBL checks in, and none boots from the network after the fallback's power cycle either.
    wait_for("the return's end", lambda: _jobs(prov, "n2")[-2]["status"] == "ERROR", 20.0, every=0.05)
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "ERROR" and "return before this rebuild failed" in shown["error"]
    assert state(prov, "n2") == "error"
