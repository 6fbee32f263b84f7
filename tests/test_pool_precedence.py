"""HIL's precedence on a recursive instance whose pool is at its limit: claiming a node that does not
exist answers 404 NotFoundError (as HIL's ``project node add`` does), not the pool's AllocationError; a
node that exists and is free upstream is refused for the limit."""

from __future__ import annotations

from pathlib import Path

from api_helpers import make_api

from rhaas.db.session import upgrade
from rhaas.lab.servers import Server


def test_not_found_comes_before_the_pool_limit(server: Server, tmp_path: Path) -> None:
    with server.client("admin", "adminpw") as base:
        calls = [
            base.put("/project/r"),
            base.put("/auth/basic/user/bot", json={"password": "bot-pw"}),
            base.post("/auth/basic/user/bot/add_project", json={"project": "r"}),
        ]
        for i in (1, 2):
            obm = {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}
            calls.append(base.put(f"/node/n{i}", json={"obm": obm}))
        assert [c.status_code for c in calls] == [200] * len(calls), [c.text for c in calls]
    url = f"sqlite:///{tmp_path / 'recursive.sqlite3'}"
    upgrade(url)
    settings = {
        "upstream__url": server.url, "upstream__project": "r", "upstream__user": "bot",
        "upstream__password": "bot-pw", "pool__max_nodes": 1,
    }  # fmt: skip
    with make_api(url, **settings) as api:
        admin = api.admin
        admin.ok("PUT", "/project/c")
        admin.ok("POST", "/project/c/connect_node", {"node": "n1"})  # claimed upstream: the pool is full
        msg = admin.error("POST", "/project/c/connect_node", {"node": "nosuchnode"}, 404, "NotFoundError")
        assert msg == "Node nosuchnode does not exist."
        admin.error("POST", "/project/c/connect_node", {"node": "n2"}, 409, "AllocationError")
        assert admin.ok("GET", "/nodes/all") == ["n1"]
    with server.client("admin", "adminpw") as base:
        assert base.get("/project/r/nodes").json() == ["n1"]
        assert base.get("/nodes/free").json() == ["n2"]
