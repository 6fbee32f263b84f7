"""The ``rhaas`` CLI with the client's transport mocked: output, request bodies, errors, environment."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from rhaas.cli.common import CliState
from rhaas.cli.main import cli
from rhaas.client import Client

ENV = {
    "RHAAS_ENDPOINT": "http://rhaas.test:5000",
    "RHAAS_USERNAME": "admin",
    "RHAAS_PASSWORD": "adminpw",
    "HIL_ENDPOINT": None,
    "HIL_USERNAME": None,
    "HIL_PASSWORD": None,
    "RHAAS_TIMEOUT": None,
    "HIL_TIMEOUT": None,
    "RHAAS_DEBUG": None,
}
NO_ENV = {key: None for key in ENV}
NODE = {
    "name": "n1",
    "project": "p1",
    "metadata": {"rack": '"3"'},
    "nics": [
        {
            "label": "eth0",
            "macaddr": "52:54:00:00:00:01",
            "networks": {"vlan/native": "net1", "vlan/300": "pub"},
            "port": "gi1/0/1",
            "switch": "sw0",
        }
    ],
}


class FakeServer:
    """Answers ``(method, path)`` from a table; a list of answers is played in order, the last repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Any, status: int = 200) -> FakeServer:
        self.routes[(method, "/v0/" + path)] = [(status, a) for a in answers] or [(status, None)]
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.raw_path.decode())
        if key not in self.routes:
            return httpx.Response(404, json={"type": "NotFoundError", "msg": f"No route {key}"})
        queue = self.routes[key]
        status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, str):
            return httpx.Response(status, text=answer)
        return httpx.Response(status) if answer is None else httpx.Response(status, json=answer)

    def calls(self) -> list[tuple[str, str, Any]]:
        return [
            (r.method, r.url.raw_path.decode()[len("/v0/") :], json.loads(r.content) if r.content else None)
            for r in self.requests
        ]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def run(server: FakeServer, *args: str, env: Mapping[str, str | None] = ENV) -> Result:
    """Run the CLI as a user would (client from the environment), on ``server``'s transport."""
    transport = httpx.MockTransport(server)
    state = CliState(factory=lambda: Client.from_env(http=httpx.Client(transport=transport)))
    return CliRunner(env=dict(env)).invoke(cli, list(args), obj=state)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output)
    assert result.stderr == ""
    return result.stdout


# --- listings and shows: --json and tables ---------------------------------------------------------------
def test_json_outputs_are_the_raw_api_answer(server: FakeServer) -> None:
    networks = {
        "net1": {"network_id": "100", "projects": ["p1"]},
        "pub": {"network_id": "300", "projects": None},
    }
    server.on("GET", "projects", ["p1", "p2"]).on("GET", "node/n1", NODE).on("GET", "networks", networks)
    assert json.loads(ok(run(server, "project", "list", "--json"))) == ["p1", "p2"]
    assert json.loads(ok(run(server, "node", "show", "n1", "--json"))) == NODE
    assert json.loads(ok(run(server, "network", "list", "--json"))) == networks


def test_tables(server: FakeServer) -> None:
    server.on("GET", "projects", ["p1", "p2"]).on("GET", "node/n1", NODE)
    assert ok(run(server, "project", "list")).splitlines() == ["project", "-------", "p1", "p2"]
    lines = ok(run(server, "node", "show", "n1")).splitlines()
    assert lines[:3] == ["name:     n1", "project:  p1", 'metadata: rack="3"']
    assert lines[4].split() == ["nic", "macaddr", "switch", "port", "networks"]
    assert lines[6].split(maxsplit=4) == [
        "eth0",
        "52:54:00:00:00:01",
        "sw0",
        "gi1/0/1",
        "vlan/native=net1, vlan/300=pub",
    ]


def test_network_list_with_a_public_network(server: FakeServer) -> None:
    """HIL's CLI crashes here ("can only join an iterable")."""
    server.on(
        "GET",
        "networks",
        {"pub": {"network_id": "300", "projects": None}, "n": {"network_id": "1", "projects": ["a", "b"]}},
    )
    assert ok(run(server, "network", "list")).splitlines() == [
        "network  network_id  projects",
        "-------  ----------  --------",
        "n        1           a, b",
        "pub      300         (public)",
    ]


def test_empty_listing_and_empty_port(server: FakeServer) -> None:
    server.on("GET", "nodes/free", []).on("GET", "switch/sw0/port/gi1/0/1", {})
    assert ok(run(server, "node", "list", "free")).splitlines()[-1] == "(none)"
    assert "no nic" in ok(run(server, "port", "show", "sw0", "gi1/0/1"))


def test_more_shows(server: FakeServer) -> None:
    server.on("GET", "switch/sw0/port/gi1/0/1/state", {"native": "100", "tagged": ["200", "201"]})
    server.on(
        "GET",
        "auth/basic/users",
        {"bob": {"is_admin": False, "projects": ["p1"]}, "admin": {"is_admin": True, "projects": []}},
    )
    server.on("GET", "switch/sw0", {"name": "sw0", "ports": [{"label": "gi1/0/1"}], "capabilities": []})
    server.on("GET", "node/n1/power_status", {"power_status": "on"})
    server.on(
        "GET",
        "networking_action/s1",
        {
            "status": "DONE",
            "node": "n1",
            "nic": "eth0",
            "new_network": None,
            "type": "modify_port",
            "channel": "vlan/300",
        },
    )
    assert ok(run(server, "port", "state", "sw0", "gi1/0/1")).splitlines() == [
        "native: 100",
        "tagged: 200, 201",
    ]
    assert ok(run(server, "user", "list")).splitlines()[2:] == ["admin  yes    -", "bob    no     p1"]
    assert ok(run(server, "switch", "show", "sw0")).splitlines()[-1] == "gi1/0/1"
    assert ok(run(server, "node", "power", "status", "n1")) == "on\n"
    shown = ok(run(server, "networking-action", "show", "s1"))
    assert "action:      detach n1/eth0 on vlan/300" in shown and "status:      DONE" in shown


# --- what commands send ----------------------------------------------------------------------------------
def test_connect_without_channel_sends_no_channel(server: FakeServer) -> None:
    """HIL's CLI sends "channel": "" here, which HIL refuses."""
    server.on("POST", "node/n1/nic/eth0/connect_network", {"status_id": "s1"}, status=202)
    assert ok(run(server, "node", "network", "connect", "n1", "eth0", "net1")) == "status_id: s1\n"
    assert ok(run(server, "node", "network", "connect", "n1", "eth0", "pub", "vlan/300", "--json")) == (
        json.dumps({"status_id": "s1"}, indent=2) + "\n"
    )
    bodies = [body for _m, _p, body in server.calls()]
    assert bodies == [{"network": "net1"}, {"network": "pub", "channel": "vlan/300"}]


def test_connect_wait_shows_the_final_status(server: FakeServer) -> None:
    pending = {
        "status": "PENDING",
        "node": "n1",
        "nic": "eth0",
        "new_network": "net1",
        "type": "modify_port",
        "channel": "vlan/native",
    }
    server.on("POST", "node/n1/nic/eth0/connect_network", {"status_id": "s1"}, status=202)
    server.on("GET", "networking_action/s1", pending, pending, {**pending, "status": "DONE"})
    out = ok(run(server, "node", "network", "connect", "n1", "eth0", "net1", "--wait"))
    assert "status:      DONE" in out and "connect n1/eth0 to net1 on vlan/native" in out
    assert len(server.requests) == 4


def test_detach_wait_error_prints_status_then_fails(server: FakeServer) -> None:
    failed = {
        "status": "ERROR",
        "node": "n1",
        "nic": "eth0",
        "new_network": None,
        "type": "modify_port",
        "channel": "vlan/native",
        "error": "switch sw0 timed out",
    }
    server.on("POST", "node/n1/nic/eth0/detach_network", {"status_id": "s2"}, status=202)
    server.on("GET", "networking_action/s2", failed)
    result = run(server, "node", "network", "detach", "n1", "eth0", "net1", "--wait", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == failed
    assert result.stderr == (
        "error: SwitchError: Networking action s2 (detach n1/eth0 on vlan/native) failed: "
        "switch sw0 timed out\n"
    )


def test_wait_timeout_from_env(server: FakeServer) -> None:
    pending = {"status": "PENDING", "node": "n1", "nic": "eth0", "type": "revert_port", "channel": ""}
    server.on("POST", "switch/sw0/port/gi1/0/1/revert", {"status_id": "s3"}).on(
        "GET", "networking_action/s3", pending
    )
    result = run(server, "port", "revert", "sw0", "gi1/0/1", "--wait", env={**ENV, "HIL_TIMEOUT": "0.1"})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: BlockedError: Networking action s3 (revert the port of n1/eth0)")
    assert "after 0.1 s" in result.stderr


@pytest.mark.parametrize(
    ("args", "method", "path", "body"),
    [
        (
            [
                "node",
                "register",
                "n1",
                "ipmi",
                "10.0.0.1",
                "root",
                "pw",
                "--port",
                "6230",
                "--metadata",
                "rack=3",
                "--metadata",
                "slot:=4",
            ],
            "PUT",
            "node/n1",
            {
                "obm": {"type": "ipmi", "host": "10.0.0.1", "user": "root", "password": "pw", "port": 6230},
                "metadata": {"rack": "3", "slot": 4},
            },
        ),
        (
            ["node", "register", "n1", "http://obmd:8080/node/n1", "tok"],
            "PUT",
            "node/n1",
            {"obmd": {"uri": "http://obmd:8080/node/n1", "admin_token": "tok"}},
        ),
        (["node", "power", "cycle", "n1", "--force"], "POST", "node/n1/power_cycle", {"force": True}),
        (["node", "power", "cycle", "n1"], "POST", "node/n1/power_cycle", {"force": False}),
        (["node", "power", "nmi", "n1"], "POST", "node/n1/power_nmi", None),
        (["node", "power", "off", "n1"], "POST", "node/n1/power_off", None),
        (["node", "bootdev", "n1", "pxe"], "PUT", "node/n1/boot_device", {"bootdev": "pxe"}),
        (["node", "obm", "enable", "n1"], "PUT", "node/n1/obm", {"enabled": True}),
        (["node", "metadata", "add", "n1", "owner", "42"], "PUT", "node/n1/metadata/owner", {"value": "42"}),
        (
            ["node", "metadata", "add", "n1", "owner", '{"a": 1}', "--json-value"],
            "PUT",
            "node/n1/metadata/owner",
            {"value": {"a": 1}},
        ),
        (
            ["node", "nic", "register", "n1", "eth0", "52:54:00:00:00:01"],
            "PUT",
            "node/n1/nic/eth0",
            {"macaddr": "52:54:00:00:00:01"},
        ),
        (
            ["switch", "register", "sw0", "ovs", "br-lab"],
            "PUT",
            "switch/sw0",
            {"type": "ovs", "bridge": "br-lab"},
        ),
        (
            ["switch", "register", "sw0", "ovs", "--bridge", "br0", "--db", "unix:/run/db.sock"],
            "PUT",
            "switch/sw0",
            {"type": "ovs", "bridge": "br0", "db": "unix:/run/db.sock"},
        ),
        (
            [
                "switch",
                "register",
                "sw0",
                "mock",
                "h",
                "u",
                "p",
                "--field",
                "delay:=0.5",
                "--field",
                'fail_ports:=["gi1/0/2"]',
                "--field",
                "state_file=lab/sw0.json",
            ],
            "PUT",
            "switch/sw0",
            {
                "type": "mock",
                "hostname": "h",
                "username": "u",
                "password": "p",
                "delay": 0.5,
                "fail_ports": ["gi1/0/2"],
                "state_file": "lab/sw0.json",
            },
        ),
        (
            ["switch", "register", "sw0", "nexus", "h", "u", "p", "42"],
            "PUT",
            "switch/sw0",
            {
                "type": "http://schema.massopencloud.org/haas/v0/switches/nexus",
                "hostname": "h",
                "username": "u",
                "password": "p",
                "dummy_vlan": "42",
            },
        ),
        (
            ["switch", "register", "sw0", "http://x/switches/ovs", "{'ovs_bridge': 'br0'}"],
            "PUT",
            "switch/sw0",
            {"type": "http://x/switches/ovs", "ovs_bridge": "br0"},
        ),
        (["port", "register", "sw0", "gi1/0/1"], "PUT", "switch/sw0/port/gi1/0/1", None),
        (
            ["port", "nic", "add", "sw0", "gi1/0/1", "n1", "eth0"],
            "POST",
            "switch/sw0/port/gi1/0/1/connect_nic",
            {"node": "n1", "nic": "eth0"},
        ),
        (["port", "nic", "remove", "sw0", "gi1/0/1"], "POST", "switch/sw0/port/gi1/0/1/detach_nic", None),
        (
            ["network", "create", "net1", "p1"],
            "PUT",
            "network/net1",
            {"owner": "p1", "access": "p1", "net_id": ""},
        ),
        (
            ["network", "create", "pub", "admin", "--public", "--net-id", "300"],
            "PUT",
            "network/pub",
            {"owner": "admin", "access": "", "net_id": "300"},
        ),
        (
            ["network", "create", "pub", "admin", "--access", ""],
            "PUT",
            "network/pub",
            {"owner": "admin", "access": "", "net_id": ""},
        ),
        (["network", "grant-access", "net1", "p2"], "PUT", "network/net1/access/p2", None),
        (["project", "node", "add", "p1", "n1"], "POST", "project/p1/connect_node", {"node": "n1"}),
        (
            ["user", "create", "alice", "pw", "admin"],
            "PUT",
            "auth/basic/user/alice",
            {"password": "pw", "is_admin": True},
        ),
        (
            ["user", "create", "bob", "pw"],
            "PUT",
            "auth/basic/user/bob",
            {"password": "pw", "is_admin": False},
        ),
        (["user", "set-admin", "bob", "regular"], "PATCH", "auth/basic/user/bob", {"is_admin": False}),
        (
            ["user", "project", "remove", "bob", "p1"],
            "POST",
            "auth/basic/user/bob/remove_project",
            {"project": "p1"},
        ),
    ],
    ids=lambda v: " ".join(v[:4]) if isinstance(v, list) else None,
)
def test_commands_send(server: FakeServer, args: list[str], method: str, path: str, body: Any) -> None:
    server.on(method, path)
    assert ok(run(server, *args)) == ""
    assert server.calls() == [(method, path, body)]


def test_console_streams(server: FakeServer) -> None:
    server.on("GET", "node/n1/console", "login: ")
    assert ok(run(server, "node", "console", "show", "n1")) == "login: "


# --- project node remove --force -------------------------------------------------------------------------
DONE = {
    "status": "DONE",
    "node": "n1",
    "nic": "eth0",
    "type": "revert_port",
    "channel": "",
    "new_network": None,
}


def test_force_remove_as_admin_reverts_ports(server: FakeServer) -> None:
    server.on("GET", "node/n1", NODE)
    server.on("POST", "switch/sw0/port/gi1/0/1/revert", {"status_id": "r1"})
    server.on("GET", "networking_action/r1", {**DONE, "status": "PENDING"}, DONE)
    server.on("PUT", "node/n1/obm").on("POST", "project/p1/detach_node")
    ok(run(server, "project", "node", "remove", "p1", "n1", "--force"))
    assert [(m, p) for m, p, _b in server.calls()] == [
        ("GET", "node/n1"),
        ("POST", "switch/sw0/port/gi1/0/1/revert"),
        ("GET", "networking_action/r1"),
        ("GET", "networking_action/r1"),
        ("PUT", "node/n1/obm"),
        ("POST", "project/p1/detach_node"),
    ]
    assert server.calls()[-2][2] == {"enabled": False}


def test_force_remove_as_member_detaches_tagged_before_native(server: FakeServer) -> None:
    member_view = {
        **NODE,
        "nics": [{k: v for k, v in NODE["nics"][0].items() if k not in ("port", "switch")}],
    }
    server.on("GET", "node/n1", member_view)
    server.on("POST", "node/n1/nic/eth0/detach_network", {"status_id": "d1"})
    server.on("GET", "networking_action/d1", DONE)
    server.on("PUT", "node/n1/obm").on("POST", "project/p1/detach_node")
    ok(run(server, "project", "node", "remove", "p1", "n1", "--force"))
    detached = [b["network"] for m, p, b in server.calls() if p.endswith("detach_network")]
    assert detached == ["pub", "net1"]


def test_force_remove_stops_at_a_failed_action(server: FakeServer) -> None:
    server.on("GET", "node/n1", NODE)
    server.on("POST", "switch/sw0/port/gi1/0/1/revert", {"status_id": "r1"})
    server.on("GET", "networking_action/r1", {**DONE, "status": "ERROR"})
    result = run(server, "project", "node", "remove", "p1", "n1", "--force")
    assert result.exit_code == 1 and result.stderr.startswith("error: SwitchError: ")
    assert ("POST", "project/p1/detach_node", {"node": "n1"}) not in server.calls()


def test_plain_remove_only_detaches(server: FakeServer) -> None:
    server.on("POST", "project/p1/detach_node")
    ok(run(server, "project", "node", "remove", "p1", "n1"))
    assert server.calls() == [("POST", "project/p1/detach_node", {"node": "n1"})]


# --- errors ----------------------------------------------------------------------------------------------
def test_api_error_is_one_line_and_exit_1(server: FakeServer) -> None:
    server.on("GET", "node/node9", {"type": "NotFoundError", "msg": "Node node9 does not exist."}, status=404)
    result = run(server, "node", "show", "node9")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: NotFoundError: Node node9 does not exist.\n"


def test_client_side_name_error(server: FakeServer) -> None:
    result = run(server, "node", "show", "a/b")
    assert (result.exit_code, result.stderr) == (
        1,
        "error: BadArgumentError: node 'a/b' may not contain: '/'\n",
    )
    assert server.requests == []


def test_html_500_is_one_line(server: FakeServer) -> None:
    server.on("PUT", "network/n", "<html>\n<h1>Internal Server Error</h1>\n</html>", status=500)
    result = run(server, "network", "create", "n", "admin", "--public")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ServerError: http://rhaas.test:5000 answered HTTP 500")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["node", "show"],
        ["node", "list", "some"],
        ["node", "register", "n1", "ipmi", "h", "u"],
        ["node", "power", "cycle", "n1", "--hard"],
        ["switch", "register", "sw0", "mock", "h", "u"],
        ["switch", "register", "sw0", "mock", "--field", "novalue"],
        ["switch", "register", "sw0", "http://x/ovs", "not a dict"],
        ["network", "create", "n", "admin", "--public", "--access", "p1"],
        ["node", "metadata", "add", "n1", "k", "{bad", "--json-value"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(server: FakeServer, args: list[str]) -> None:
    result = run(server, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert server.requests == []


def test_a_bug_is_still_one_line(server: FakeServer) -> None:
    server.on("GET", "node/n1", ["not", "a", "dict"])
    result = run(server, "node", "show", "n1")
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: internal error: AttributeError") and result.stderr.count("\n") == 1
    )


def test_help_needs_no_endpoint(server: FakeServer) -> None:
    for args in ([], ["--help"], ["node"], ["node", "power", "--help"]):
        result = run(server, *args, env=NO_ENV)
        assert result.exit_code == 0 and "Usage: " in result.stdout, (args, result.output)


# --- environment -----------------------------------------------------------------------------------------
def test_missing_endpoint(server: FakeServer) -> None:
    result = run(server, "project", "list", env=NO_ENV)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: BadArgumentError: No endpoint: set RHAAS_ENDPOINT (or HIL_ENDPOINT)"
    )


def test_hil_environment_is_used_when_rhaas_is_not_set(server: FakeServer) -> None:
    server.on("GET", "projects", [])
    env = {**NO_ENV, "HIL_ENDPOINT": "http://hil.test:5000", "HIL_USERNAME": "hu", "HIL_PASSWORD": "hp"}
    ok(run(server, "project", "list", env=env))
    [request] = server.requests
    assert request.url.host == "hil.test"
    assert request.headers["authorization"] == httpx.BasicAuth("hu", "hp")._auth_header


def test_rhaas_environment_wins(server: FakeServer) -> None:
    server.on("GET", "projects", [])
    ok(
        run(
            server,
            "project",
            "list",
            env={**ENV, "HIL_ENDPOINT": "http://hil.test:5000", "HIL_USERNAME": "hu"},
        )
    )
    [request] = server.requests
    assert request.url.host == "rhaas.test"
    assert request.headers["authorization"] == httpx.BasicAuth("admin", "adminpw")._auth_header


def test_unreachable_endpoint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "RHAAS_ENDPOINT": f"http://127.0.0.1:{port}"}
    result = CliRunner(env=env).invoke(cli, ["node", "list", "all"])  # the real transport, nothing mocked
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: UpstreamUnavailableError: http://127.0.0.1:{port} cannot be reached"
    )
    assert result.stderr.count("\n") == 1
