"""Credentials stay secret: never in API answers, server logs or the process list; an admin rotates them.
obmd's admin token and the node tokens it hands out are kept the same way."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from obmd_helpers import obmd_form

from rhaas.drivers.obm.mock import MockOBM
from rhaas.lab.obmd import FakeObmd
from rhaas.lab.servers import Server

BMC_SECRET = "bmc-s3cret-value"


def test_bmc_password_never_comes_back_and_rotation_takes_effect(site):
    admin = site.admin
    obm = {"type": "mock", "host": "bmcX", "user": "u", "password": BMC_SECRET}
    admin.ok("PUT", "/node/sec", {"obm": obm})
    for path in ("/node/sec", "/nodes/all", "/openapi.json"):
        response = admin.client.get("/v0" + path if path != "/openapi.json" else path, headers=admin.headers)
        assert BMC_SECRET not in response.text, path
    admin.ok("PUT", "/node/sec/obm_credentials", {"user": "u2", "password": "rotated"})
    with site.sessions() as db:
        from rhaas.db.models import Node

        node = db.query(Node).filter_by(label="sec").one()
        assert (node.obm_settings["user"], node.obm_settings["password"]) == ("u2", "rotated")
    admin.error("PUT", "/node/sec/obm_credentials", {"user": "u2"}, 400, "ValidationError")
    admin.error("PUT", "/node/nope/obm_credentials", {"user": "u", "password": "p"}, 404, "NotFoundError")
    site.alice.error(
        "PUT", "/node/sec/obm_credentials", {"user": "u", "password": "p"}, 401, "AuthorizationError"
    )
    assert "bmcX:623" not in MockOBM.machines  # rotation talks to no BMC


def test_user_passwords_are_stored_hashed(site):
    with site.sessions() as db:
        from rhaas.db.models import User

        stored = {u.label: u.password_hash for u in db.query(User)}
    assert all(h.startswith("scrypt$") for h in stored.values())
    assert not any("alicepw" in h or "bobpw" in h for h in stored.values())


@pytest.mark.slow
def test_upstream_password_is_not_in_ps_or_logs(tmp_path: Path):
    base = Server(f"sqlite:///{tmp_path / 'b.sqlite3'}", tmp_path / "b.log").start()
    secret = "upstream-very-secret"
    recursive = None
    try:
        with base.client("admin", "adminpw") as admin:
            admin.put("/project/r")
            admin.put("/auth/basic/user/bot", json={"password": secret})
            admin.post("/auth/basic/user/bot/add_project", json={"project": "r"})
            obm = {"type": "mock", "host": "h", "user": "u", "password": BMC_SECRET}
            admin.put("/node/n1", json={"obm": obm})
        recursive = Server(
            f"sqlite:///{tmp_path / 'r.sqlite3'}",
            tmp_path / "r.log",
            "--upstream", base.url, "--upstream-project", "r", "--upstream-user", "bot",
            env={"RHAAS_UPSTREAM_PASSWORD": secret},
        ).start()  # fmt: skip
        with recursive.client("admin", "adminpw") as admin:
            assert admin.post("/pool/grow", json={"count": 1}).status_code == 200
            assert secret not in admin.get("/pool").text
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert secret not in ps and BMC_SECRET not in ps
    finally:
        if recursive is not None:
            recursive.stop()
        base.stop()
    for log in (tmp_path / "b.log", tmp_path / "r.log"):
        text = log.read_text()
        assert secret not in text and BMC_SECRET not in text, log


def test_obmd_tokens_are_not_in_answers_nor_the_server_log(server: Server, obmd: FakeObmd) -> None:
    """A real server (logging at INFO, httpx's request lines included) drives an obmd node."""
    form = obmd_form(obmd, "o1")
    with server.client("admin", "adminpw") as admin:
        answers = [admin.put("/node/o1", json={"obmd": form})]
        answers.append(admin.put("/node/o1/obm", json={"enabled": True}))
        token = obmd.machines["o1"].token
        assert token
        answers.append(admin.post("/node/o1/power_on"))
        answers += [admin.get("/node/o1/power_status"), admin.get("/node/o1")]
        obmd.machines["o1"].fail = True
        answers.append(admin.post("/node/o1/power_off"))
        assert [a.status_code for a in answers] == [200] * 5 + [502]
        assert answers[3].json() == {"power_status": "on"}
    for answer in answers:
        assert token not in answer.text and form["admin_token"] not in answer.text
    log = server.log_path.read_text()
    assert "token=<redacted>" in log, "httpx's request lines are in the log, blanked"
    assert token not in log and form["admin_token"] not in log
