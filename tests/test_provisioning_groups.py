"""Fleet-sized provision requests: one request deploys an image on many nodes as one provision group,
all or nothing, and the group's view aggregates its nodes' progress. Through the API in-process, with the
test speaking the agents' protocol (agent_helpers) and mock BMCs."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from agent_helpers import Agent, deploy, enroll, state
from api_helpers import Api
from click.testing import CliRunner, Result

from rhaas.cli import main
from rhaas.cli.common import CliState
from rhaas.client import Client


def ready_nodes(prov: Api, names: list[str], project: str = "p1") -> dict[str, Agent]:
    """Enrol ``names``, check their agents in, and give them to ``project`` (as its member)."""
    member = prov.alice if project == "p1" else prov.bob
    agents = {}
    for name in names:
        agents[name] = agent = enroll(prov, name)
        agent.checkin()
        member.ok("POST", f"/project/{project}/connect_node", {"node": name})
    return agents


def untouched(prov: Api, names: list[str]) -> None:
    """Nothing was started on ``names``: still ready, no job, their agents told to wait."""
    for name in names:
        shown = prov.admin.ok("GET", f"/node/{name}/provisioning")
        assert shown["state"] == "ready" and shown["jobs"] == [], shown


def test_a_fleet_request_is_one_group_whose_view_aggregates_progress(prov):
    agents = ready_nodes(prov, ["n1", "n2", "n3"])
    started = prov.alice.ok("POST", "/provision_group", {"nodes": ["n1", "n2", "n3"], "image": "a-os"}, 202)
    group, jobs = started["group_id"], started["jobs"]
    assert sorted(jobs) == ["n1", "n2", "n3"] and len(set(jobs.values())) == 3
    shown = prov.alice.ok("GET", f"/provision_group/{group}")
    assert shown["counts"] == {"done": 0, "in_flight": 0, "failed": 0, "queued": 3}
    assert (shown["status"], shown["nodes"], shown["project"], shown["image"]) == ("RUNNING", 3, "p1", "a-os")
    for name in jobs:  # each job is an ordinary provision job of its node
        assert prov.alice.ok("GET", f"/provision_job/{jobs[name]}")["node"] == name

    # n1 deploys to the end; n2 is writing its disk; n3 has not asked for work yet.
    item = agents["n1"].work()
    assert item["action"] == "deploy" and item["job"] == jobs["n1"]
    for phase in ("download-kernel", "download-initrd", "write-disk", "kexec"):
        agents["n1"].report(jobs["n1"], phase, "done")
    assert agents["n2"].work()["job"] == jobs["n2"]
    agents["n2"].report(jobs["n2"], "write-disk", "start", progress={"done": 300, "total": 1000})
    shown = prov.alice.ok("GET", f"/provision_group/{group}")
    assert shown["counts"] == {"done": 1, "in_flight": 1, "failed": 0, "queued": 1}
    assert shown["status"] == "RUNNING"
    by_node = {m["node"]: m for m in shown["jobs"]}
    assert by_node["n1"]["status"] == "DONE" and by_node["n1"]["phase"] == "kexec"
    n2 = by_node["n2"]
    assert (n2["phase"], n2["phase_state"]) == ("write-disk", "start")
    assert n2["progress"] == {"done": 300, "total": 1000}
    # The slowest are those still at work, longest in their current phase first: n2 and n3, never n1.
    slowest = {m["node"]: m for m in shown["slowest"]}
    assert set(slowest) == {"n2", "n3"}
    assert slowest["n3"]["in_phase"] == slowest["n3"]["elapsed"]  # no event yet: since the request
    assert 0 <= slowest["n2"]["in_phase"] <= slowest["n2"]["elapsed"]
    assert [m["in_phase"] for m in shown["slowest"]] == sorted(m["in_phase"] for m in shown["slowest"])[::-1]
    assert by_node["n1"]["in_phase"] is None  # ended

    # n3 fails, n2 ends: the group has ended in ERROR, with its counts.
    assert agents["n3"].work()["job"] == jobs["n3"]
    agents["n3"].report(jobs["n3"], "write-disk", "error", detail="disk vda: I/O error")
    agents["n2"].report(jobs["n2"], "kexec", "done")
    shown = prov.admin.ok("GET", f"/provision_group/{group}")
    assert shown["counts"] == {"done": 2, "in_flight": 0, "failed": 1, "queued": 0}
    assert shown["status"] == "ERROR"
    failed = [m for m in shown["jobs"] if m["status"] == "ERROR"]
    assert [m["node"] for m in failed] == ["n3"] and "I/O error" in failed[0]["error"]
    assert (state(prov, "n1"), state(prov, "n2"), state(prov, "n3")) == ("deployed", "deployed", "error")


def test_a_group_all_done_ends_done(prov):
    agents = ready_nodes(prov, ["n1", "n2"])
    started = prov.alice.ok("POST", "/provision_group", {"nodes": ["n1", "n2"], "image": "a-os"}, 202)
    for name, job in started["jobs"].items():
        assert agents[name].work()["job"] == job
        agents[name].report(job, "kexec", "done")
    shown = prov.alice.ok("GET", f"/provision_group/{started['group_id']}")
    assert shown["status"] == "DONE" and shown["counts"]["done"] == 2
    assert len(shown["slowest"]) == 2  # once all have ended: those that took longest


def test_a_rebuild_in_a_group_is_queued_behind_its_return(prov):
    agents = ready_nodes(prov, ["n1", "n2"])
    deploy(prov, agents["n1"], "n1")
    started = prov.alice.ok("POST", "/provision_group", {"nodes": ["n1", "n2"], "image": "a-os"}, 202)
    shown = prov.alice.ok("GET", f"/provision_group/{started['group_id']}")
    n1 = next(m for m in shown["jobs"] if m["node"] == "n1")
    assert n1["status"] == "QUEUED" and shown["counts"]["queued"] == 2
    assert n1["phase"] is None or n1["phase"].startswith("return: ")
    assert state(prov, "n1") == "returning"


@pytest.mark.parametrize(
    ("change", "status", "type_"),
    [
        ({"image": "no-such-image"}, 404, "NotFoundError"),
        ({"nodes": ["n1", "n2", "nope"]}, 404, "NotFoundError"),
        ({"nodes": ["n1", "n2", "n4"]}, 409, "ProjectMismatchError"),  # free: in no project
        ({"nodes": ["n1", "n2", "n3"]}, 401, "AuthorizationError"),  # n3 is p2's
        ({"nodes": ["n1", "n2", "n1"]}, 400, "BadArgumentError"),
        ({"nodes": []}, 400, "ValidationError"),
        ({"nodes": "n1"}, 400, "ValidationError"),
        ({"nodes": ["n1", ""]}, 400, "ValidationError"),
        ({"ssh_keys": ["not a key"]}, 400, "BadArgumentError"),
        ({"extra": 1}, 400, "ValidationError"),
    ],
)
def test_a_request_with_any_bad_node_or_argument_starts_nothing(prov, change, status, type_):
    ready_nodes(prov, ["n1", "n2"])
    ready_nodes(prov, ["n3"], project="p2")
    enroll(prov, "n4").checkin()
    body = {"nodes": ["n1", "n2"], "image": "a-os", **change}
    msg = prov.alice.error("POST", "/provision_group", body, status, type_)
    if type_ in ("ProjectMismatchError", "AuthorizationError"):
        assert ("n4" if type_ == "ProjectMismatchError" else "n3") in msg
    untouched(prov, ["n1", "n2", "n3", "n4"])


def test_a_node_not_ready_fails_the_whole_request(prov):
    agents = ready_nodes(prov, ["n1", "n2"])
    agents["n2"].work()  # nothing to do yet
    prov.admin.ok("POST", "/project/p1/connect_node", {"node": "n3"})  # not under fast provisioning
    msg = prov.alice.error("POST", "/provision_group", {"nodes": ["n1", "n3"], "image": "a-os"}, 409,
                           "IllegalStateError")  # fmt: skip
    assert "n3" in msg
    # n2 is being rebuilt (returning, then deploying): not provisionable until that ends.
    deploy(prov, agents["n2"], "n2")
    prov.alice.ok("POST", "/node/n2/provision", {"image": "a-os"}, 202)
    assert state(prov, "n2") == "returning"
    msg = prov.alice.error("POST", "/provision_group", {"nodes": ["n1", "n2"], "image": "a-os"}, 409,
                           "BlockedError")  # fmt: skip
    assert "n2" in msg
    untouched(prov, ["n1"])
    assert agents["n1"].work()["action"] == "wait"


def test_groups_are_seen_by_their_projects_members_and_admins_only(prov):
    ready_nodes(prov, ["n1", "n2"])
    ready_nodes(prov, ["n3"], project="p2")
    a = prov.alice.ok("POST", "/provision_group", {"nodes": ["n1", "n2"], "image": "a-os"}, 202)["group_id"]
    prov.bob.error("GET", f"/provision_group/{a}", None, 401, "AuthorizationError")
    assert prov.admin.ok("GET", f"/provision_group/{a}")["nodes"] == 2
    prov.alice.error("GET", "/provision_group/no-such-group", None, 404, "NotFoundError")
    # A member cannot start a group on another project's nodes, even with the image of its own.
    body = {"nodes": ["n3", "n1"], "image": "a-os"}
    prov.bob.error("POST", "/provision_group", body, 401, "AuthorizationError")
    untouched(prov, ["n3"])
    # An admin's group must stay in one project too.
    prov.admin.ok("POST", "/project/p1/detach_node", {"node": "n1"})  # n1 returns; n2 stays in p1
    msg = prov.admin.error("POST", "/provision_group", {"nodes": ["n2", "n3"], "image": "a-os"}, 409,
                           "ProjectMismatchError")  # fmt: skip
    assert "p1" in msg and "p2" in msg
    untouched(prov, ["n3"])
    # A single node's own request (POST /node/<n>/provision) is no group of its own.
    assert prov.admin.ok("GET", "/node/n2/provisioning")["jobs"][0]["status"] == "PENDING"


def drive(agents: dict[str, Agent], fail: set[str], errors: list[BaseException]) -> None:
    """The agents of ``agents`` ask for work until each has had its deploy, and walk it through: to the
    kexec, or to an error for those in ``fail``."""
    try:
        left = dict(agents)
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            for name, agent in list(left.items()):
                item = agent.work()
                if item["action"] != "deploy":
                    continue
                agent.report(item["job"], "write-disk", "start", progress={"done": 1, "total": 2})
                if name in fail:
                    agent.report(item["job"], "write-disk", "error", detail="disk vda: I/O error")
                else:
                    agent.report(item["job"], "kexec", "done")
                del left[name]
        assert not left, f"no deploy handed to {sorted(left)}"
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)


def cli(prov: Api, *args: str) -> Result:
    """The rhaas CLI as alice, on the in-process API."""
    state = CliState(factory=lambda: Client("http://testserver", "alice", "alicepw", http=prov.client))
    return CliRunner().invoke(main.cli, list(args), obj=state)


def test_cli_provisions_a_fleet_as_one_group_and_shows_its_progress(prov, monkeypatch):
    agents = ready_nodes(prov, ["n1", "n2", "n3"])
    # Without --wait: the group's id and each node's job; --json: the group object.
    result = cli(prov, "node", "provision", "n1", "--image", "a-os", "--json")
    assert result.exit_code == 0, result.output
    group = json.loads(result.stdout)
    assert group["nodes"] == 1 and group["counts"]["queued"] == 1 and group["jobs"][0]["node"] == "n1"
    result = cli(prov, "provision-group", "show", group["id"])
    assert result.exit_code == 0 and f"group {group['id']}: 0/1 done" in result.stdout

    # An invalid node in the request: an error, and nothing starts on the others.
    result = cli(prov, "node", "provision", "n2", "n4", "--image", "a-os")
    assert result.exit_code != 0 and "n4" in result.output
    untouched(prov, ["n2", "n3"])

    # --wait: the fleet's progress on stderr while the agents work, then the summary; n3 fails.
    errors: list[BaseException] = []
    thread = threading.Thread(target=drive, args=({k: agents[k] for k in ("n2", "n3")}, {"n3"}, errors))
    thread.start()
    try:
        result = cli(prov, "node", "provision", "n2", "n3", "--image", "a-os", "--wait", "--timeout", "60")
    finally:
        thread.join()
    assert not errors, errors
    assert result.exit_code == 1, result.output
    assert "1/2 done, 0 in flight, 1 failed, 0 queued" in result.stderr  # the last progress line
    assert "\r" not in result.stderr  # not a terminal: whole lines
    summary = result.stdout
    assert "1/2 done" in summary and "I/O error" in summary
    assert re.search(r"n2\s+DONE\s+fast", summary) and re.search(r"n3\s+ERROR", summary)
    assert "not provisioned: n3" in result.stderr

    # On a terminal, one line rewritten in place, ended by a newline before the summary.
    monkeypatch.setattr("rhaas.cli.provisioning.on_terminal", lambda: True)
    n4 = ready_nodes(prov, ["n4"])
    thread = threading.Thread(target=drive, args=(n4, set(), errors))
    thread.start()
    try:
        result = cli(prov, "node", "provision", "n4", "--image", "a-os", "--wait")
    finally:
        thread.join()
    assert not errors, errors
    assert result.exit_code == 0, result.output
    lines = result.stderr.split("\r")
    assert lines[0] == "" and lines[-1].startswith("1/1 done, 0 in flight") and lines[-1].endswith("\n")
    assert result.stderr.count("\n") == 1
    assert re.search(r"n4\s+DONE\s+fast", result.stdout)
    # --json on a group: the API's object (only the times move between the two reads).
    shown = json.loads(cli(prov, "provision-group", "show", group["id"], "--json").stdout)
    answer = prov.alice.ok("GET", f"/provision_group/{group['id']}")
    assert set(shown) == set(answer) and (shown["id"], shown["counts"]) == (answer["id"], answer["counts"])
