"""Agent credentials are scoped to one deploy and one return, and a return counts as fast only with the
crash kernel's evidence. Through the API, with the test speaking the agent's protocol (agent_helpers).

A deploy's hand-out replaces the agent's secret (the enrolment's or a network boot's dies); ``kexec``
done kills the deploy's secret; what the customer's OS can read (the return payload, the crash kernel's
command line) holds only the deploy's return token, good for one return check-in while that node's
return runs, and answered with a fresh secret. A ``ready`` check-in in the middle of a fast return (the
guest reset itself and the node booted the FPBL from the network) is recorded as an unexpected reset.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_helpers import DISK, Agent, deploy, enroll, machine, network_boot, prov_images, sha, state
from api_helpers import Api, make_api, populate_site

from rhaas.lab.polling import wait_for


@pytest.fixture
def prov(db_url: str) -> Iterator[Api]:
    overrides = {
        "provisioning__enabled": True,
        "provisioning__agent_url": "http://10.0.2.2:5000",
        "provisioning__return_timeout": 60.0,
        "provisioning__tick_seconds": 0.05,
    }
    with make_api(db_url, **overrides) as api:
        populate_site(api)
        prov_images(api)
        yield api


def ready(api: Api, node: str) -> Agent:
    """Enrol ``node``, its FPBL checks in, and p1 gets it."""
    agent = enroll(api, node)
    agent.checkin()
    api.alice.ok("POST", "/project/p1/connect_node", {"node": node})
    return agent


def as_(agent: Agent, credential: str) -> Agent:
    """Another agent of the same node, presenting ``credential``."""
    other = Agent.__new__(Agent)
    other.client, other.node, other.return_token = agent.client, agent.node, None
    other.use(credential)
    return other


def bearer(agent: Agent) -> str:
    return agent.headers["Authorization"].removeprefix("Bearer ")


def blob(agent: Agent) -> int:
    url = f"/agent/v1/nodes/{agent.node}/blobs/{sha(DISK)}"
    return agent.client.get(url, headers=agent.headers).status_code


def detach(api: Api, node: str, bmc: str) -> None:
    machine(bmc).power = "on"
    nmis = machine(bmc).nmis
    api.alice.ok("POST", "/project/p1/detach_node", {"node": node})
    wait_for("the NMI", lambda: machine(bmc).nmis == nmis + 1, 10.0, every=0.02)


def finish_return(agent: Agent) -> dict:
    item = agent.work()
    assert item["action"] == "wipe", item
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    return item


def last_job(api: Api, node: str) -> dict:
    return api.admin.ok("GET", f"/node/{node}/provisioning")["jobs"][-1]


def test_a_deploys_hand_out_kills_the_enrolment_secret(prov):
    agent = ready(prov, "n1")
    enrolled = as_(agent, bearer(agent))
    prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)
    item = agent.work()
    assert item["action"] == "deploy" and item["secret"] and item["return_token"]
    assert item["secret"] != item["return_token"]
    enrolled.call("GET", "work", status=401)
    enrolled.report(item["job"], "download-kernel", "start", status=401)
    assert blob(enrolled) == 401
    assert blob(agent) == 200  # the agent works on with the secret it was handed
    agent.report(item["job"], "download-kernel", "start")


def test_a_deploys_hand_out_kills_the_network_boots_secret(prov):
    agent = enroll(prov, "n2")
    network_boot(prov, agent, 2)
    agent.checkin()
    booted = as_(agent, bearer(agent))
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n2"})
    prov.alice.ok("POST", "/node/n2/provision", {"image": "a-os"}, status=202)
    assert agent.work()["action"] == "deploy"
    booted.call("GET", "work", status=401)
    booted.checkin(status=401)


def test_kexec_done_kills_the_deploys_secret(prov):
    agent = ready(prov, "n1")
    job = deploy(prov, agent, "n1")
    assert state(prov, "n1") == "deployed"
    agent.call("GET", "work", status=401)
    agent.checkin(status=401)
    agent.report(job, "kexec", "done", status=401)
    assert blob(agent) == 401


def test_the_return_token_is_good_for_one_return_checkin_only(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    assert agent.return_token
    token = as_(agent, agent.return_token)
    token.checkin("return", status=401)  # the customer's OS reading it before its node is given back
    token.call("GET", "work", status=401)
    assert blob(token) == 401
    detach(prov, "n1", "bmc1")
    token.call("GET", "work", status=401)  # a check-in's credential, for nothing else
    answer = agent.checkin("return")
    assert answer["secret"] and answer["secret"] != bearer(token)
    token.checkin("return", status=401)  # once: dead now
    finish_return(agent)
    assert state(prov, "n1") == "ready"
    token.checkin("ready", status=401)


def test_an_old_return_token_opens_nothing_of_the_next_customer(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    a_token = as_(agent, agent.return_token or "")
    detach(prov, "n1", "bmc1")
    agent.checkin("return")
    finish_return(agent)
    assert last_job(prov, "n1")["path"] == "fast"

    # Customer B gets the node; the agent idles in the return FPBL and is handed B's deploy.
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)
    for mode in ("ready", "return"):
        a_token.checkin(mode, status=401)
    a_token.call("GET", "work", status=401)  # B's work
    assert blob(a_token) == 401  # B's disk image
    assert agent.work()["action"] == "deploy"
    a_token.call("GET", "work", status=401)
    assert blob(a_token) == 401


def test_a_fast_return_with_the_crash_kernels_evidence_stays_fast(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    detach(prov, "n1", "bmc1")
    agent.checkin("return")
    finish_return(agent)
    job = last_job(prov, "n1")
    assert (job["status"], job["path"]) == ("DONE", "fast")
    checkin = next(p for p in job["phases"] if p["phase"] == "checkin")
    assert "crash kernel armed for this deploy" in checkin["detail"]


def test_a_ready_checkin_mid_fast_return_is_an_unexpected_reset(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    boots = machine("bmc1").boots
    detach(prov, "n1", "bmc1")
    # The guest rebooted itself: the node booted the FPBL from the network (a fresh secret), no NMI's
    # crash kernel checked in.
    network_boot(prov, agent, 1)
    agent.checkin("ready")
    assert state(prov, "n1") == "returning"
    job = last_job(prov, "n1")
    assert job["path"] == "unexpected-reset"
    reset = next(p for p in job["phases"] if p["phase"] == "unexpected-reset")
    assert reset["detail"].startswith("unexpected reset: the full FPBL booted")
    finish_return(agent)  # the return goes on from there: wipe, ready
    assert state(prov, "n1") == "ready"
    history = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"]
    assert [(j["kind"], j["status"], j["path"]) for j in history] == [
        ("deploy", "DONE", "fast"),
        ("return", "DONE", "unexpected-reset"),
    ]
    assert any("unexpected reset" in p["detail"] for p in history[1]["phases"])
    assert machine("bmc1").boots == boots, "no BMC asked for that boot"


def test_a_return_checkin_without_elfcorehdr_is_not_fast(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    detach(prov, "n1", "bmc1")
    agent.use(agent.return_token or "")
    body = {"mode": "return", "boot_id": "b", "elfcorehdr": False}
    answer = agent.call("POST", "checkin", body)
    agent.use(answer["secret"])
    finish_return(agent)
    job = last_job(prov, "n1")
    assert (job["status"], job["path"]) == ("DONE", "unexpected-reset")


def test_an_agent_restarted_in_the_return_fpbl_keeps_the_return_fast(prov):
    agent = ready(prov, "n1")
    deploy(prov, agent, "n1")
    detach(prov, "n1", "bmc1")
    agent.use(agent.return_token or "")
    body = {"mode": "return", "boot_id": "crash-kernel-boot", "elfcorehdr": True}
    agent.use(agent.call("POST", "checkin", body)["secret"])
    agent.call("POST", "checkin", body)  # its agent restarted: same kernel, the secret it was handed
    finish_return(agent)
    job = last_job(prov, "n1")
    assert (job["status"], job["path"]) == ("DONE", "fast")
