"""The fast-provisioning lifecycle through the API and the agent API, with the test speaking the agent's
protocol over HTTP (the FPBL agent itself, in a real QEMU node, is proven in test_fpbl.py and the lab
tests). Mock BMCs record the NMIs and power cycles the server sends."""

from __future__ import annotations

import hashlib
import time

import pytest
from agent_helpers import (
    DISK,
    INITRD,
    KERNEL,
    Agent,
    deploy,
    enroll,
    machine,
    network_boot,
    prov_images,
    sha,
    state,
)
from api_helpers import Api, make_api, populate_site
from dbdump import dump

from rhaas.api.state import AppState
from rhaas.lab.polling import wait_for
from rhaas.notify import work_key


def test_enrolled_node_is_not_free_until_its_agent_checks_in(prov):
    agent = enroll(prov, "n1")
    assert state(prov, "n1") == "booting"
    assert "n1" not in prov.admin.ok("GET", "/nodes/free")
    msg = prov.alice.error("POST", "/project/p1/connect_node", {"node": "n1"}, 409, "BlockedError")
    assert "n1" in msg
    agent.checkin()
    assert state(prov, "n1") == "ready"
    assert "n1" in prov.admin.ok("GET", "/nodes/free")
    assert agent.work()["action"] == "wait"


def test_agent_authentication(prov):
    agent = enroll(prov, "n1")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWRtaW46YWRtaW5wdw=="}):
        response = prov.agent.get("/agent/v1/nodes/n1/work", headers=headers)
        assert response.status_code == 401 and response.json()["type"] == "AuthorizationError"
    # Another node's secret, and nodes not enrolled, get the same answer.
    assert prov.agent.get("/agent/v1/nodes/n2/work", headers=agent.headers).status_code == 401
    assert prov.agent.get("/agent/v1/nodes/nope/work", headers=agent.headers).status_code == 401
    # Enrolling again rotates the secret.
    new = enroll(prov, "n1")
    assert prov.agent.get("/agent/v1/nodes/n1/work", headers=agent.headers).status_code == 401
    new.checkin()


def test_deploy_then_return_by_nmi_then_reassign(prov):
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = deploy(prov, agent, "n1")
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "DONE" and shown["path"] == "fast" and shown["image"] == "a-os"
    assert [p["phase"] for p in shown["phases"]][-1] == "kexec"
    assert state(prov, "n1") == "deployed"
    prov.bob.error("GET", f"/provision_job/{job}", None, 401, "AuthorizationError")

    # The customer gives the node back: NMI through the BMC, then the return FPBL wipes it.
    bmc = machine("bmc1")
    bmc.power = "on"
    nmis, boots = bmc.nmis, bmc.boots
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    assert state(prov, "n1") == "returning"
    assert "n1" not in prov.admin.ok("GET", "/nodes/free")
    prov.bob.error("POST", "/project/p2/connect_node", {"node": "n1"}, 409, "BlockedError")
    wait_for("the NMI", lambda: bmc.nmis == nmis + 1, 10.0, every=0.02)
    agent.checkin("return")
    item = agent.work()
    assert item == {
        "action": "wipe", "job": item["job"], "policy": "full", "verify": "sample", "scrub_memory": False
    }  # fmt: skip
    agent.report(item["job"], "wipe", "start")
    agent.report(item["job"], "wipe", "done")
    assert state(prov, "n1") == "returning"
    assert agent.work()["action"] == "wipe"  # not wiped-and-verified yet: still returning
    agent.report(item["job"], "verify-wipe", "done", detail="first and last MiB read back as zeros")
    agent.report(item["job"], "restore-memory", "done")
    agent.checkin("ready")
    assert state(prov, "n1") == "ready"
    agent.report(item["job"], "ready", "done")  # the full FPBL's last word, after its check-in
    assert "n1" in prov.admin.ok("GET", "/nodes/free")
    history = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"]
    assert [(j["kind"], j["status"], j["path"]) for j in history] == [
        ("deploy", "DONE", "fast"),
        ("return", "DONE", "fast"),
    ]
    assert {"nmi", "checkin", "wipe", "verify-wipe"} <= {p["phase"] for p in history[1]["phases"]}
    assert bmc.boots == boots  # no firmware boot on the fast path

    # Reassign: another project gets it and provisions again.
    prov.bob.ok("POST", "/project/p2/connect_node", {"node": "n1"})
    prov.bob.error("POST", "/node/n1/provision", {"image": "a-os"}, 401, "AuthorizationError")


def test_the_instances_wipe_policy_and_memory_scrub_reach_the_return_fpbl(db_url):
    overrides = {"provisioning__enabled": True, "provisioning__agent_url": "http://10.0.2.2:5000"}
    overrides |= {"provisioning__wipe_policy": "discard", "provisioning__memory_scrub": True}
    overrides |= {"provisioning__wipe_verify": "full"}
    with make_api(db_url, **overrides, provisioning__tick_seconds=0.05) as api:
        populate_site(api)
        prov_images(api)
        agent = enroll(api, "n1")
        agent.checkin()
        api.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
        deploy(api, agent, "n1")
        machine("bmc1").power = "on"
        api.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
        agent.checkin("return")
        item = agent.work()
        assert item == {
            "action": "wipe", "job": item["job"], "policy": "discard", "verify": "full", "scrub_memory": True
        }  # fmt: skip


def test_return_falls_back_to_reboot_when_no_fpbl_checks_in(prov):
    agent = enroll(prov, "n2")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n2"})
    deploy(prov, agent, "n2")
    bmc = machine("bmc2")
    bmc.power = "on"
    boots = bmc.boots
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n2"})

    # The customer unloaded the crash kernel: the NMI brings no return FPBL; past the deadline the node
    # is power cycled into a network boot. The worker records the cycle after the BMC's answer: wait for
    # the record too, or the FPBL below could check in before it.
    def fell_back():
        job = prov.admin.ok("GET", "/node/n2/provisioning")["jobs"][-1]
        cycled = any(p["phase"] == "power-cycle" and p["state"] == "done" for p in job["phases"])
        return job["path"] == "reboot" and bmc.boots == boots + 1 and cycled

    wait_for("the reboot fallback", fell_back, 15.0, every=0.02)
    assert bmc.bootdev == "pxe"
    network_boot(prov, agent, 2)
    agent.checkin("ready")  # the FPBL, booted by firmware this time
    item = agent.work()
    assert item["action"] == "wipe"
    agent.report(item["job"], "verify-wipe", "done")
    agent.checkin("ready")
    jobs = prov.admin.ok("GET", "/node/n2/provisioning")["jobs"]
    assert (jobs[-1]["status"], jobs[-1]["path"]) == ("DONE", "reboot")
    assert {"fallback", "power-cycle"} <= {p["phase"] for p in jobs[-1]["phases"]}
    assert state(prov, "n2") == "ready"


@pytest.mark.parametrize("return_path", ["reboot"])
def test_an_instance_can_return_by_reboot_only(prov, return_path):
    agent = enroll(prov, "n3")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n3"})
    deploy(prov, agent, "n3")
    bmc = machine("bmc3")
    bmc.power = "on"
    nmis, boots = bmc.nmis, bmc.boots
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n3"})
    wait_for("the power cycle", lambda: bmc.boots == boots + 1, 10.0, every=0.02)
    assert bmc.nmis == nmis and bmc.bootdev == "pxe"
    network_boot(prov, agent, 3)
    agent.checkin("ready")
    item = agent.work()
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    ret = prov.admin.ok("GET", "/node/n3/provisioning")["jobs"][-1]
    assert (ret["status"], ret["path"]) == ("DONE", "reboot")
    assert "fallback" not in {p["phase"] for p in ret["phases"]}


def test_a_failed_deploy_is_recoverable_by_return(prov):
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    agent.work()
    agent.report(job, "verify", "error", detail="sha256 mismatch: got 00ff…, want 12ab…")
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "ERROR" and "sha256 mismatch" in shown["error"]
    assert state(prov, "n1") == "error"
    agent.report(job, "kexec", "start", status=409)  # an ended job takes no more reports
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    item = agent.work()  # the FPBL never left: it wipes straight away, then says it is ready
    assert item["action"] == "wipe"
    agent.report(item["job"], "ready", "done")
    assert state(prov, "n1") == "returning"  # not before the wipe is verified
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    assert state(prov, "n1") == "ready"


def test_agent_sees_only_its_own_deploy_blobs(prov):
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    url = f"/agent/v1/nodes/n1/blobs/{sha(DISK)}"
    assert prov.agent.get(url, headers=agent.headers).status_code == 404  # no deploy yet
    prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)
    item = agent.work()
    assert item["disk"]["url"] == f"http://testserver{url}"
    whole = prov.agent.get(url, headers=agent.headers)
    assert whole.status_code == 200 and whole.content == DISK
    part = prov.agent.get(url, headers={**agent.headers, "Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == DISK[100:]
    other = enroll(prov, "n2")
    assert prov.agent.get(f"/agent/v1/nodes/n2/blobs/{sha(DISK)}", headers=other.headers).status_code == 404
    assert prov.agent.get(url, headers=other.headers).status_code == 401


def test_provision_refusals_change_nothing(prov):
    agent = enroll(prov, "n1")
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n2"})
    before = dump(prov.sessions)
    prov.alice.error(
        "POST", "/node/n2/provision", {"image": "a-os"}, 409, "IllegalStateError"
    )  # not enrolled
    prov.alice.error("POST", "/node/n1/provision", {"image": "a-os"}, 409, "ProjectMismatchError")  # free
    prov.alice.error("POST", "/node/n2/provision", {"image": "nope"}, 404, "NotFoundError")
    prov.alice.error("POST", "/node/n2/provision", {"image": 1}, 400, "ValidationError")
    prov.bob.error("POST", "/node/n2/provision", {"image": "a-os"}, 401, "AuthorizationError")
    prov.alice.error("PUT", "/node/n1/fpbl", {}, 401, "AuthorizationError")
    prov.admin.error("PUT", "/node/n2/fpbl", {}, 409, "BlockedError")  # in a project
    prov.admin.error("PUT", "/node/n1/fpbl", {"agent_url": "ftp://x"}, 400, "BadArgumentError")
    bad = [{"mode": "sideways", "boot_id": "x"}, {"boot_id": "x"}, {"mode": "ready", "boot_id": "x", "z": 1}]
    for body in bad:
        agent.call("POST", "checkin", body, status=400)
    agent.call("POST", "report", {"job": "nope", "phase": "x", "state": "done", "at": 1.0}, status=404)
    assert dump(prov.sessions) == before


def test_provisioning_is_off_by_default(site):
    site.admin.error("PUT", "/node/n1/fpbl", {}, 409, "IllegalStateError")
    site.alice.error("POST", "/node/n1/provision", {"image": "x"}, 409, "IllegalStateError")
    response = site.agent.get("/agent/v1/nodes/n1/work", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401 and response.json()["type"] == "AuthorizationError"


def test_an_agent_restarted_mid_deploy_ends_the_deploy_in_error_and_the_node_is_recoverable(prov):
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    agent.work()
    agent.report(job, "download-disk", "start", progress={"done": 1000, "total": len(DISK)})
    agent.checkin()  # killed mid-download, restarted by the FPBL's init: it checks in afresh
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "ERROR" and "checked in again" in shown["error"]
    assert state(prov, "n1") == "error"
    # Provisioning it again rebuilds it (return, wipe, then deploy); leaving the project cancels that
    # deploy, and the return goes on.
    rebuilt = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    assert state(prov, "n1") == "returning"
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    assert prov.alice.ok("GET", f"/provision_job/{rebuilt}")["status"] == "ERROR"
    item = agent.work()
    assert item["action"] == "wipe"
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    assert state(prov, "n1") == "ready"


def test_a_deploy_that_restores_memory_first_is_handed_out_again_to_the_full_fpbl(prov):
    """The return FPBL (crash kernel) finds an image too big for its memory and boots the full FPBL: the
    full FPBL's check-in is expected, not an agent restart, and it gets the same deploy."""
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    deploy(prov, agent, "n1")
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    agent.checkin("return")  # after the NMI: the node will idle in this crash kernel
    wipe = agent.work()["job"]
    for phase in ("wipe", "verify-wipe", "restore-memory", "ready"):
        agent.report(wipe, phase, "done")
    assert state(prov, "n1") == "ready"
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    assert agent.work()["job"] == job
    agent.report(
        job, "restore-memory", "start", detail="the image needs more memory than the return FPBL has"
    )
    agent.report(job, "restore-memory", "done", detail="jumping into the full FPBL")
    agent.checkin("ready")
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "RUNNING", shown
    assert (shown["phases"][-1]["phase"], shown["phases"][-1]["detail"]) == (
        "checkin", "the full FPBL checked in, with the node's memory")  # fmt: skip
    item = agent.work()
    assert (item["action"], item["job"]) == ("deploy", job)
    agent.report(job, "download-kernel", "start")
    agent.checkin("ready")  # now a restart mid-deploy: the deploy ends in error as always
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "ERROR" and "checked in again during the deploy" in shown["error"], shown
    assert state(prov, "n1") == "error"


def test_a_return_queued_before_a_restart_is_carried_out_after_it(db_url):
    """The server goes down between the detach and the NMI: the next server's ticker sends it."""
    settings = {"provisioning__enabled": True, "provisioning__agent_url": "http://10.0.2.2:5000"}
    with make_api(db_url, **settings) as first:
        AppState.of(first.client.app).ticker.stop()  # as if the process died after its commits
        populate_site(first)
        agent = enroll(first, "n1")
        agent.checkin()
        first.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
        for blob in (KERNEL, INITRD):
            headers = {**first.alice.headers, "Content-Type": "application/octet-stream"}
            first.client.put(f"/v0/blob/{sha(blob)}", content=blob, headers=headers).raise_for_status()
        first.alice.ok("PUT", "/image/a-os", {"project": "p1", "kernel": sha(KERNEL), "initrd": sha(INITRD)})
        deploy_without_disk = first.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)
        agent.work()
        agent.report(deploy_without_disk["job_id"], "kexec", "done")
        bmc = machine("bmc1")
        bmc.power = "on"
        nmis = bmc.nmis
        first.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
        assert bmc.nmis == nmis
    with make_api(db_url, **settings, provisioning__tick_seconds=0.05) as second:
        wait_for("the NMI after the restart", lambda: bmc.nmis == nmis + 1, 10.0, every=0.02)
        jobs = second.admin.ok("GET", "/node/n1/provisioning")["jobs"]
        assert jobs[-1]["kind"] == "return" and jobs[-1]["status"] == "RUNNING"


def deploy_then_detach(prov: Api, node: str) -> Agent:
    """Enrol ``node``, deploy it for p1, and give it back (the return starts); its agent."""
    agent = enroll(prov, node)
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": node})
    deploy(prov, agent, node)
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": node})
    return agent


def last_job_phases(prov: Api, node: str) -> list[tuple[str, str]]:
    job = prov.admin.ok("GET", f"/node/{node}/provisioning")["jobs"][-1]
    return [(p["phase"], p["state"]) for p in job["phases"]]


def test_an_upstream_refusing_the_nmi_is_recorded_and_the_fallback_follows(prov, monkeypatch):
    """On a recursive instance the OBM is the upstream's API, whose refusals are UpstreamErrors."""
    from rhaas.errors import UpstreamError

    class RefusingUpstream:
        name, address = "upstream", "http://hil.example:5000"
        calls: list[str] = []

        def nmi_unavailable(self) -> None:
            return None

        def send_nmi(self) -> None:
            self.calls.append("nmi")
            raise UpstreamError("upstream http://hil.example:5000 refused the NMI: OBMError: no answer")

        def set_bootdev(self, bootdev: str) -> None:
            self.calls.append(f"bootdev {bootdev}")

        def power_cycle(self, force: bool = False) -> None:
            self.calls.append("cycle")

    monkeypatch.setattr(AppState.of(prov.client.app).ticker, "obm_for", lambda node: RefusingUpstream())
    deploy_then_detach(prov, "n1")

    def phases():
        return set(last_job_phases(prov, "n1"))

    wait_for("the failed NMI recorded", lambda: ("nmi", "error") in phases(), 10.0, every=0.02)
    wait_for("the fallback", lambda: ("power-cycle", "done") in phases(), 15.0, every=0.05)
    assert RefusingUpstream.calls == ["nmi", "bootdev pxe", "cycle"]


def test_behind_a_hil_upstream_a_return_takes_the_reboot_path_from_the_start(prov, monkeypatch, hil):
    """HIL master and its obmd have no NMI: the ticker learns it from the upstream's extensions and power
    cycles at once, without trying an NMI, and the job's history says why."""
    from recursion_helpers import UpstreamDrivers

    from rhaas.backends.upstream import Upstream
    from rhaas.config import UpstreamSettings

    hil.add_project("reseller")
    hil.add_user("bot", "botpw", "reseller")
    hil.add_node("n1", ("eth0", "52:54:00:00:00:01", "gi1/0/1"))
    up = Upstream(UpstreamSettings(url=hil.url, project="reseller", user="bot", password="botpw"))
    try:
        assert up.claim(1) == ["n1"]
        drivers = UpstreamDrivers(up)
        monkeypatch.setattr(AppState.of(prov.client.app).ticker, "obm_for", lambda node: drivers.obm("n1"))
        agent = deploy_then_detach(prov, "n1")
        wait_for("the power cycle", lambda: ("power-cycle", "done") in last_job_phases(prov, "n1"), 15.0)
    finally:
        up.client.close()
    job = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    assert job["path"] == "reboot"
    assert [(p["phase"], p["state"]) for p in job["phases"]] == [
        ("reboot-path", "start"),
        ("power-cycle", "done"),
    ]
    assert "rhaas.ext.power_nmi" in job["phases"][0]["detail"], job["phases"][0]
    assert hil.obmd_calls("n1") == ["boot_device pxe", "power_cycle force=True"]
    assert not [path for _m, path, _s in hil.log if "nmi" in path]  # the NMI was never tried
    network_boot(prov, agent, 1)  # the reboot path goes on as usual
    agent.checkin("ready")
    item = agent.work()
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    assert prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]["status"] == "DONE"


class ScriptedBMC:
    """A BMC for the ticker whose NMI and boot-device calls run ``on_nmi`` and ``on_bootdev`` (which may
    raise, as a BMC that did not answer), recording every call in ``calls``."""

    name, address = "ipmi", "bmc.example"

    def __init__(self, on_nmi=lambda n: None, on_bootdev=lambda n: None) -> None:
        self.calls: list[str] = []
        self.on_nmi, self.on_bootdev = on_nmi, on_bootdev

    def nmi_unavailable(self) -> None:
        return None

    def send_nmi(self) -> None:
        self.calls.append("nmi")
        self.on_nmi(self.calls.count("nmi"))

    def set_bootdev(self, bootdev: str) -> None:
        self.calls.append(f"bootdev {bootdev}")
        self.on_bootdev(self.calls.count(f"bootdev {bootdev}"))

    def power_cycle(self, force: bool = False) -> None:
        self.calls.append("cycle")


def no_answer(what: str):
    """What a BMC that did not answer ``what`` raises."""
    from rhaas.errors import OBMError

    return OBMError(f"IPMI BMC at bmc.example: no answer to {what} after 8.0 s")


def test_a_power_cycle_the_bmc_did_not_answer_is_tried_again(prov, monkeypatch):
    """A BMC that misses one call (a busy machine, a lost UDP packet) must not leave the return stuck
    until its deadline: the reboot path tries the power cycle again."""
    from rhaas.core.provisioning import clock

    monkeypatch.setattr(clock, "RETRY_SECONDS", 0.2)

    def deaf(what: str):
        def fail(_n: int) -> None:
            raise no_answer(what)

        return fail

    def first_deaf(n: int) -> None:
        if n == 1:
            raise no_answer("set boot device pxe")

    bmc = ScriptedBMC(on_nmi=deaf("NMI"), on_bootdev=first_deaf)
    monkeypatch.setattr(AppState.of(prov.client.app).ticker, "obm_for", lambda node: bmc)
    agent = deploy_then_detach(prov, "n1")

    def phases():
        return last_job_phases(prov, "n1")

    wait_for("the second power cycle", lambda: ("power-cycle", "done") in phases(), 15.0, every=0.05)
    # The NMI failed three times, so the fallback came then (not at the deadline); the first power
    # cycle failed and the second went through; nothing was called more than that.
    assert bmc.calls == ["nmi", "nmi", "nmi", "bootdev pxe", "bootdev pxe", "cycle"]
    seen = phases()
    assert seen.count(("nmi", "error")) == clock.NMI_TRIES == 3
    assert (
        len(seen) - seen[::-1].index(("nmi", "error")) - 1
        < seen.index(("fallback", "start"))
        < seen.index(("power-cycle", "error"))
    )
    network_boot(prov, agent, 1)
    agent.checkin("ready")
    item = agent.work()
    agent.report(item["job"], "verify-wipe", "done")
    agent.report(item["job"], "ready", "done")
    ret = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    assert (ret["status"], ret["path"]) == ("DONE", "reboot")


def test_an_nmi_the_bmc_missed_once_is_sent_again_and_the_return_stays_fast(prov, monkeypatch):
    """One lost NMI (a busy BMC, a lost UDP packet) must not cost the node a firmware boot: the NMI is
    sent again after `clock.RETRY_SECONDS`, on the fast path, and no power cycle is ever asked for."""
    from rhaas.core.provisioning import clock

    monkeypatch.setattr(clock, "RETRY_SECONDS", 0.2)

    def deaf_once(n: int) -> None:
        if n == 1:
            raise no_answer("NMI")

    bmc = ScriptedBMC(on_nmi=deaf_once)
    monkeypatch.setattr(AppState.of(prov.client.app).ticker, "obm_for", lambda node: bmc)
    deploy_then_detach(prov, "n1")
    wait_for("the second NMI", lambda: ("nmi", "done") in last_job_phases(prov, "n1"), 15.0, every=0.05)
    job = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    phases = [(p["phase"], p["state"]) for p in job["phases"]]
    assert phases[-2:] == [("nmi", "error"), ("nmi", "done")], phases
    assert (job["path"], job["status"], bmc.calls) == ("fast", "RUNNING", ["nmi", "nmi"])
    retried = job["phases"][-1]["at"] - job["phases"][-2]["at"]
    assert retried >= clock.RETRY_SECONDS, retried


def test_an_nmi_whose_answer_was_lost_is_not_sent_again_once_the_return_fpbl_checked_in(prov, monkeypatch):
    """The BMC may deliver an NMI and lose its answer: if the return FPBL checked in meanwhile, the
    return carries on on the fast path, with no second NMI and no power cycle."""
    from rhaas.core.provisioning import clock

    monkeypatch.setattr(clock, "RETRY_SECONDS", 0.2)

    def delivered_unanswered(_n: int) -> None:
        agent.checkin("return")  # the return FPBL is up before the answer came
        raise no_answer("NMI")

    bmc = ScriptedBMC(on_nmi=delivered_unanswered)
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    deploy(prov, agent, "n1")
    monkeypatch.setattr(AppState.of(prov.client.app).ticker, "obm_for", lambda node: bmc)
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    wait_for("the NMI's failure", lambda: ("nmi", "error") in last_job_phases(prov, "n1"), 15.0, every=0.05)
    item = agent.work()
    assert item["action"] == "wipe", item
    agent.report(item["job"], "wipe", "done")
    agent.report(item["job"], "verify-wipe", "done")
    agent.checkin("ready")
    agent.report(item["job"], "ready", "done")
    job = prov.admin.ok("GET", "/node/n1/provisioning")["jobs"][-1]
    assert (job["path"], job["status"], bmc.calls) == ("fast", "DONE", ["nmi"])
    assert ("fallback", "start") not in last_job_phases(prov, "n1")


def test_a_phase_stamped_by_the_ticker_while_an_agent_report_is_open_is_not_lost(prov, db_url):
    """A job's phases are read, appended to and written back. The ticker's NMI record and an agent's
    report at the same moment (a node still in the FPBL wipes at once) must both stay: the second writer
    waits for the first one's lock, then appends to what it committed."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time (BEGIN IMMEDIATE): the two cannot interleave there")
    import threading

    from sqlalchemy import select, text

    from rhaas.core.provisioning import jobs
    from rhaas.db.models import Node, ProvisionJob
    from rhaas.worker import provisioning as ticker

    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    deploy(prov, agent, "n1")
    prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    with prov.sessions() as db:
        node = db.scalar(select(Node).where(Node.label == "n1"))
        job = jobs.open_job(db, node)
        assert job is not None and job.kind == "return"
        job_id, node_id = job.id, node.id
        db.rollback()

    with prov.sessions() as report_db:  # the agent's report, held open
        job = jobs.open_job(report_db, report_db.get(Node, node_id), for_update=True)
        jobs.stamp(job, "verify-wipe", "done")
        recorder = threading.Thread(target=ticker.record, args=(prov.sessions, job_id, "nmi", "done", "sent"))
        recorder.start()
        with prov.sessions() as watch:  # until the ticker's transaction waits for the report's lock
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"

            def waiting() -> bool:
                watch.rollback()  # a fresh snapshot of pg_stat_activity
                return bool(watch.scalar(text(query)))

            wait_for("the ticker's stamp to wait for the report's lock", waiting, 10, every=0.01)
        report_db.commit()
    recorder.join(10)
    with prov.sessions() as db:
        phases = [(p["phase"], p["state"]) for p in db.get(ProvisionJob, job_id).phases]
    assert ("verify-wipe", "done") in phases and ("nmi", "done") in phases, phases


def test_a_held_work_request_answers_as_soon_as_a_provision_queues_work(prov):
    import threading

    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    got: dict = {}

    def hold() -> None:
        started = time.monotonic()
        got["answer"] = agent.call("GET", "work?wait=20")
        got["at"] = time.monotonic()
        got["held"] = got["at"] - started

    holder = threading.Thread(target=hold)
    holder.start()
    notifier = AppState.of(prov.client.app).notifier
    wait_for("the request to be held", lambda: notifier.waiting(work_key("n1")), 10)
    provisioned = time.monotonic()
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    holder.join(20)
    assert (got["answer"]["action"], got["answer"]["job"]) == ("deploy", job)
    assert got["at"] - provisioned < 1.5, "answered when the work was queued, not at the next recheck"
    assert not notifier.waiting(), "nothing left waiting"


def test_a_held_work_request_with_nothing_to_do_answers_wait_after_its_time(prov):
    agent = enroll(prov, "n1")
    agent.checkin()
    started = time.monotonic()
    answer = agent.call("GET", "work?wait=0.6")
    held = time.monotonic() - started
    assert answer == {"action": "wait", "poll_after": 0}, "it waited here: ask again at once"
    assert 0.6 <= held < 3, held
    assert agent.call("GET", "work") == {"action": "wait", "poll_after": 1.0}, "no wait: answered at once"


@pytest.mark.parametrize("query", ["wait=x", "wait=-1", "wait=nan", "wait=inf", "wait=1&wait=2", "hold=1"])
def test_a_bad_wait_is_refused_before_any_work_is_handed_out(prov, query):
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = prov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    answer = agent.call("GET", f"work?{query}", status=400)
    assert answer["type"] == "ValidationError" and (
        "wait=" in answer["msg"] or "unknown 'hold'" in answer["msg"]
    )
    shown = prov.alice.ok("GET", f"/provision_job/{job}")
    assert shown["status"] == "PENDING" and shown["phases"] == [], "nothing handed out"
    assert agent.call("GET", "work?wait=100")["job"] == job, "a long wait is cut, not refused"


# -- whole-disk images ---------------------------------------------------------------------------------
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPrcnJ8nCk/4Ez0kWhmYBn/EyjD4Q+fCkTPcYv6V7Crq alice@laptop"
MIB = 1 << 20


def whole_disk(api: Api, name: str, windows: dict[int, bytes], size: int, project: str = "p1") -> list[str]:
    """Register a whole-disk image of ``size`` bytes holding ``windows`` (offset → 4 MiB of data) as the
    project's member; the chunks' digests."""
    caller = api.alice if project == "p1" else api.bob
    logical = bytearray(size)
    for offset, data in windows.items():
        logical[offset : offset + len(data)] = data
        headers = {**caller.headers, "Content-Type": "application/octet-stream"}
        caller.client.put(f"/v0/chunk/{sha(data)}", content=data, headers=headers).raise_for_status()
    extents = [{"offset": o, "length": len(d), "sha256": sha(d)} for o, d in sorted(windows.items())]
    manifest = {
        "format": "raw",
        "virtual_size": size,
        "logical_sha256": sha(bytes(logical)),
        "extents": extents,
    }
    caller.ok("PUT", f"/image/{name}", {"project": project, "disk": manifest, "cmdline": "console=ttyS0"})
    return [sha(d) for _, d in sorted(windows.items())]


def test_a_whole_disk_deploy_hands_out_its_extents_its_chunks_and_the_first_boot_seed(prov):
    chunks = whole_disk(prov, "debian", {0: b"A" * 4 * MIB, 8 * MIB: b"B" * 4 * MIB}, 16 * MIB)
    other = whole_disk(prov, "elsewhere", {0: b"C" * 4 * MIB}, 8 * MIB, project="p2")
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    body = {"image": "debian", "ssh_keys": [KEY + "\n"], "user_data": "#cloud-config\npackages: [htop]\n",
            "cmdline": "console=ttyS0 quiet"}  # fmt: skip
    job = prov.alice.ok("POST", "/node/n1/provision", body, status=202)["job_id"]
    item = agent.work()
    image = item["image"]
    assert item["action"] == "deploy" and item["job"] == job and "kernel" not in item
    assert image["virtual_size"] == 16 * MIB and not image["zeroed"], "a new node's disk is not known zero"
    assert [(e["offset"], e["sha256"]) for e in image["extents"]] == [(0, chunks[0]), (8 * MIB, chunks[1])]
    assert item["boot"] == {"cmdline": "console=ttyS0 quiet"}, "the request's command line wins"
    assert item["seed"] == {"instance_id": job, "hostname": "n1", "ssh_keys": [KEY],
                            "user_data": "#cloud-config\npackages: [htop]\n"}  # fmt: skip

    url = image["chunk_url"].replace("http://testserver", "").replace("{sha256}", chunks[1])
    got = agent.client.get(url, headers=agent.headers)
    assert got.status_code == 200 and got.content == b"B" * 4 * MIB
    for digest in (other[0], sha(b"nothing")):  # another image's chunk, or none: not this deploy's
        refused = agent.client.get(url.replace(chunks[1], digest), headers=agent.headers)
        assert refused.status_code == 404 and refused.json()["type"] == "NotFoundError"
    stranger = agent.client.get(url, headers={"Authorization": "Bearer not-the-secret"})
    assert stranger.status_code == 401
    assert prov.client.get(url).status_code == 404, "the customer API does not serve agents' routes"


def test_bad_first_boot_data_is_refused_and_queues_nothing(prov):
    whole_disk(prov, "debian", {0: b"A" * 4 * MIB}, 8 * MIB)
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    before = dump(prov.sessions)
    for extra, kind, words in (
        ({"ssh_keys": ["not a key"]}, "BadArgumentError", "SSH public key"),
        ({"ssh_keys": [KEY + "\nssh-rsa AAAA injected"]}, "BadArgumentError", "SSH public key"),
        ({"kernel": "boot/vmlinuz"}, "BadArgumentError", "absolute path"),
        ({"user_data": "x" * (64 * 1024 + 1)}, "ValidationError", "user_data"),
        ({"ssh_keys": "ssh-ed25519 AAAA"}, "ValidationError", "ssh_keys"),
    ):
        msg = prov.alice.error("POST", "/node/n1/provision", {"image": "debian", **extra}, 400, kind)
        assert words in msg, msg
    assert dump(prov.sessions) == before


def test_holes_are_skipped_only_after_a_verified_whole_disk_wipe(prov):
    whole_disk(prov, "debian", {0: b"A" * 4 * MIB}, 8 * MIB)
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    zeroed, bmc = [], machine("bmc1")
    bmc.power = "on"
    for _ in range(2):
        job = prov.alice.ok("POST", "/node/n1/provision", {"image": "debian"}, status=202)["job_id"]
        zeroed.append(agent.work()["image"]["zeroed"])
        agent.report(job, "kexec", "done")
        nmis = bmc.nmis
        prov.alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
        wait_for("the NMI", lambda n=nmis: bmc.nmis == n + 1, 10.0, every=0.02)
        agent.checkin("return")
        wipe = agent.work()
        assert wipe["action"] == "wipe" and wipe["policy"] == "full"
        for phase in ("wipe", "verify-wipe", "ready"):
            agent.report(wipe["job"], phase, "done")
        assert state(prov, "n1") == "ready"
        prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    assert zeroed == [False, True]


def test_agents_deploying_the_same_image_learn_of_each_other_from_the_tracker(prov):
    whole_disk(prov, "debian", {0: b"A" * 4 * MIB, 8 * MIB: b"B" * 4 * MIB}, 16 * MIB)
    whole_disk(prov, "elsewhere", {0: b"C" * 4 * MIB}, 8 * MIB)
    agents = {}
    for node, image in (("n1", "debian"), ("n2", "debian"), ("n3", "elsewhere")):
        agents[node] = agent = enroll(prov, node)
        agent.checkin()
        prov.alice.ok("POST", "/project/p1/connect_node", {"node": node})
        prov.alice.ok("POST", f"/node/{node}/provision", {"image": image}, status=202)
        image = agent.work()["image"]
        assert image["peers"] == {
            "url": f"http://testserver/agent/v1/nodes/{node}/peers", "port": 7070, "piece_size": 256 * 1024,
        }  # fmt: skip
        first_chunk = (b"C" if node == "n3" else b"A") * 4 * MIB
        pieces = [
            hashlib.sha256(first_chunk[at : at + 256 * 1024]).hexdigest()
            for at in range(0, 4 * MIB, 256 * 1024)
        ]
        assert image["extents"][0]["pieces"] == pieces, "each piece's digest, for the agents to check"
    n1, n2, n3 = agents["n1"], agents["n2"], agents["n3"]
    # Pieces 0 to 15 are chunk 0, 16 to 31 chunk 1: n1 holds chunk 0 whole.
    first = n1.call("POST", "peers", {"port": 7070, "address": "10.0.0.11", "have": "ffff"})
    assert first == {"peers": [], "seed": [1], "missing": True}, (
        "chunk 1 is nowhere: n1 gets it from the server"
    )
    second = n2.call("POST", "peers", {"port": 7071, "address": "10.0.0.12", "have": ""})
    assert second["peers"] == [{"address": "10.0.0.11", "port": 7070, "have": "ffff"}]
    assert second["seed"] == [], "chunk 0 is at n1, chunk 1 handed out to n1 already"
    other = n3.call("POST", "peers", {"port": 7070, "address": "10.0.0.13", "have": ""})
    assert other["peers"] == [] and other["seed"] == [0], "another image's agents are not its peers"

    for body, kind in (
        ({"port": 0, "have": ""}, "ValidationError"),
        ({"port": 7070, "address": "n1.example", "have": ""}, "ValidationError"),
        ({"port": 7070, "have": "-1"}, "ValidationError"),
        ({"port": 7070, "have": [0]}, "ValidationError"),
        ({"port": 7070, "have": "f" * (1 << 18 + 1)}, "ValidationError"),
        ({"port": 7070, "have": "", "dropped": [{"address": "10.0.0.11"}]}, "ValidationError"),
    ):
        refused = n2.client.post("/agent/v1/nodes/n2/peers", json=body, headers=n2.headers)
        assert refused.status_code == 400 and refused.json()["type"] == kind, refused.text
    stranger = n2.client.post(
        "/agent/v1/nodes/n2/peers", json={"port": 1}, headers={"Authorization": "Bearer x"}
    )
    assert stranger.status_code == 401
    again = n2.call("POST", "peers", {"port": 7071, "address": "10.0.0.12", "have": ""})
    assert again["peers"] == second["peers"], "the refused calls changed nothing"
    idle = enroll(prov, "n4")
    idle.checkin()
    assert idle.call("POST", "peers", {"port": 7070, "have": ""}, status=404)["type"] == "NotFoundError"


def test_with_the_peer_exchange_off_agents_fetch_from_the_server_only(db_url):
    overrides = {"provisioning__enabled": True, "provisioning__agent_url": "http://10.0.2.2:5000",
                 "provisioning__peer_exchange": False}  # fmt: skip
    with make_api(db_url, **overrides) as api:
        populate_site(api)
        prov_images(api)
        whole_disk(api, "debian", {0: b"A" * 4 * MIB}, 8 * MIB)
        agent = enroll(api, "n1")
        agent.checkin()
        api.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
        api.alice.ok("POST", "/node/n1/provision", {"image": "debian"}, status=202)
        assert "peers" not in agent.work()["image"]
        off = agent.call("POST", "peers", {"port": 7070, "have": ""}, status=409)
        assert off["type"] == "IllegalStateError" and "peer_exchange" in off["msg"]


def test_with_multicast_the_tracker_names_the_images_group_and_one_agent_sends_to_it(db_url):
    overrides = {"provisioning__enabled": True, "provisioning__agent_url": "http://10.0.2.2:5000",
                 "provisioning__peer_exchange": True, "provisioning__peer_multicast_mbit": 900}  # fmt: skip
    with make_api(db_url, **overrides) as api:
        populate_site(api)
        prov_images(api)
        whole_disk(api, "debian", {0: b"A" * 4 * MIB, 8 * MIB: b"B" * 4 * MIB}, 16 * MIB)
        agents = []
        for node in ("n1", "n2"):
            agents.append(agent := enroll(api, node))
            agent.checkin()
            api.alice.ok("POST", "/project/p1/connect_node", {"node": node})
            api.alice.ok("POST", f"/node/{node}/provision", {"image": "debian"}, status=202)
            agent.work()
        first = agents[0].call("POST", "peers", {"port": 7070, "address": "10.0.0.11", "have": ""})
        second = agents[1].call("POST", "peers", {"port": 7070, "address": "10.0.0.12", "have": ""})
        group = first["multicast"]["group"]
        assert group.startswith("239.255.") and second["multicast"]["group"] == group, "one group per image"
        assert first["multicast"] == {"group": group, "port": 7070, "interface": "10.0.0.11", "rate": 112.5e6}
        assert second["multicast"]["interface"] == "10.0.0.12", "each joins on its own address"
        assert first["seed"] == [0] and second["seed"] == [], "the first sends every chunk, the other none"


def test_multicast_is_off_unless_its_rate_is_set(prov):
    whole_disk(prov, "debian", {0: b"A" * 4 * MIB}, 8 * MIB)
    agent = enroll(prov, "n1")
    agent.checkin()
    prov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    prov.alice.ok("POST", "/node/n1/provision", {"image": "debian"}, status=202)
    agent.work()
    assert "multicast" not in agent.call("POST", "peers", {"port": 7070, "address": "10.0.0.11", "have": ""})
