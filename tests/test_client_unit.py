"""The client library against a mocked transport: the wire format of every call, and every error path."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import rhaas.client as client_module
from rhaas import errors as e
from rhaas.client import Client

ENDPOINT = "http://rhaas.test:5000"
NO_BODY = object()


class Recorder:
    """A transport handler: records each request and answers with ``respond`` (200, empty by default)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.respond: Callable[[httpx.Request], httpx.Response] = lambda _req: httpx.Response(200)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def answer(self, status: int = 200, body: Any = NO_BODY, **kwargs: Any) -> None:
        if body is not NO_BODY:
            kwargs["json"] = body
        self.respond = lambda _req: httpx.Response(status, **kwargs)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else NO_BODY


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def client(rec: Recorder) -> Client:
    http = httpx.Client(transport=httpx.MockTransport(rec), base_url=ENDPOINT)
    return Client(ENDPOINT, "admin", "adminpw", http=http)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the wire format of every call ---------------------------------------------------------------------
OBM = {"type": "ipmi", "host": "10.0.0.1", "user": "root", "password": "pw"}
ACTION = {"status_id": "abc-123"}
# (call, method, path with query, request body, answer)
CASES: list[tuple[Callable[[Client], Any], str, str, Any, Any]] = [
    (lambda c: c.project.list(), "GET", "/v0/projects", NO_BODY, ["p1"]),
    (lambda c: c.project.create("p1"), "PUT", "/v0/project/p1", NO_BODY, None),
    (lambda c: c.project.delete("p1"), "DELETE", "/v0/project/p1", NO_BODY, None),
    (lambda c: c.project.connect("p1", "n1"), "POST", "/v0/project/p1/connect_node", {"node": "n1"}, None),
    (lambda c: c.project.detach("p1", "n1"), "POST", "/v0/project/p1/detach_node", {"node": "n1"}, None),
    (lambda c: c.project.nodes_in("p1"), "GET", "/v0/project/p1/nodes", NO_BODY, ["n1"]),
    (lambda c: c.project.networks_in("p1"), "GET", "/v0/project/p1/networks", NO_BODY, ["net1"]),
    (
        lambda c: c.project.connect_nodes("p1", 2),
        "POST",
        "/v0/project/p1/connect_nodes",
        {"count": 2},
        ["n1"],
    ),
    (lambda c: c.node.list("free"), "GET", "/v0/nodes/free", NO_BODY, ["n1"]),
    (lambda c: c.node.list(), "GET", "/v0/nodes/all", NO_BODY, ["n1", "n2"]),
    (lambda c: c.node.show("n1"), "GET", "/v0/node/n1", NO_BODY, {"name": "n1", "nics": [], "project": None}),
    (
        lambda c: c.node.register("n1", "ipmi", "10.0.0.1", "root", "pw"),
        "PUT",
        "/v0/node/n1",
        {"obm": OBM},
        None,
    ),
    (
        lambda c: c.node.register("n1", "ipmi", "10.0.0.1", "root", "pw", port=6230, metadata={"rack": 3}),
        "PUT",
        "/v0/node/n1",
        {"obm": {**OBM, "port": 6230}, "metadata": {"rack": 3}},
        None,
    ),
    (
        lambda c: c.node.register_obmd("n1", "http://obmd/node/n1", "tok"),
        "PUT",
        "/v0/node/n1",
        {"obmd": {"uri": "http://obmd/node/n1", "admin_token": "tok"}},
        None,
    ),
    (lambda c: c.node.delete("n1"), "DELETE", "/v0/node/n1", NO_BODY, None),
    (
        lambda c: c.node.add_nic("n1", "eth0", "52:54:00:00:00:01"),
        "PUT",
        "/v0/node/n1/nic/eth0",
        {"macaddr": "52:54:00:00:00:01"},
        None,
    ),
    (lambda c: c.node.remove_nic("n1", "eth0"), "DELETE", "/v0/node/n1/nic/eth0", NO_BODY, None),
    (
        lambda c: c.node.connect_network("n1", "eth0", "net1"),
        "POST",
        "/v0/node/n1/nic/eth0/connect_network",
        {"network": "net1"},
        ACTION,
    ),
    (
        lambda c: c.node.connect_network("n1", "eth0", "net1", "vlan/100"),
        "POST",
        "/v0/node/n1/nic/eth0/connect_network",
        {"network": "net1", "channel": "vlan/100"},
        ACTION,
    ),
    (
        lambda c: c.node.detach_network("n1", "eth0", "net1"),
        "POST",
        "/v0/node/n1/nic/eth0/detach_network",
        {"network": "net1"},
        ACTION,
    ),
    (
        lambda c: c.node.show_networking_action("abc-123"),
        "GET",
        "/v0/networking_action/abc-123",
        NO_BODY,
        {"status": "DONE"},
    ),
    (
        lambda c: c.node.metadata_set("n1", "rack", {"row": 3}),
        "PUT",
        "/v0/node/n1/metadata/rack",
        {"value": {"row": 3}},
        None,
    ),
    (lambda c: c.node.metadata_delete("n1", "rack"), "DELETE", "/v0/node/n1/metadata/rack", NO_BODY, None),
    (lambda c: c.node.enable_obm("n1"), "PUT", "/v0/node/n1/obm", {"enabled": True}, None),
    (lambda c: c.node.disable_obm("n1"), "PUT", "/v0/node/n1/obm", {"enabled": False}, None),
    (lambda c: c.node.power_on("n1"), "POST", "/v0/node/n1/power_on", NO_BODY, None),
    (lambda c: c.node.power_off("n1"), "POST", "/v0/node/n1/power_off", NO_BODY, None),
    (lambda c: c.node.power_cycle("n1"), "POST", "/v0/node/n1/power_cycle", {"force": False}, None),
    (
        lambda c: c.node.power_cycle("n1", force=True),
        "POST",
        "/v0/node/n1/power_cycle",
        {"force": True},
        None,
    ),
    (lambda c: c.node.power_status("n1"), "GET", "/v0/node/n1/power_status", NO_BODY, {"power_status": "on"}),
    (lambda c: c.node.power_nmi("n1"), "POST", "/v0/node/n1/power_nmi", NO_BODY, None),
    (lambda c: c.node.set_bootdev("n1", "pxe"), "PUT", "/v0/node/n1/boot_device", {"bootdev": "pxe"}, None),
    (
        lambda c: c.network.list(),
        "GET",
        "/v0/networks",
        NO_BODY,
        {"pub": {"network_id": "7", "projects": None}},
    ),
    (lambda c: c.network.show("net1"), "GET", "/v0/network/net1", NO_BODY, {"name": "net1"}),
    (
        lambda c: c.network.create("net1", "p1", "p1", ""),
        "PUT",
        "/v0/network/net1",
        {"owner": "p1", "access": "p1", "net_id": ""},
        None,
    ),
    (
        lambda c: c.network.create("pub", "admin", "", "3000"),
        "PUT",
        "/v0/network/pub",
        {"owner": "admin", "access": "", "net_id": "3000"},
        None,
    ),
    (lambda c: c.network.delete("net1"), "DELETE", "/v0/network/net1", NO_BODY, None),
    (lambda c: c.network.grant_access("net1", "p2"), "PUT", "/v0/network/net1/access/p2", NO_BODY, None),
    (lambda c: c.network.revoke_access("net1", "p2"), "DELETE", "/v0/network/net1/access/p2", NO_BODY, None),
    (lambda c: c.network.list_attachments("net1"), "GET", "/v0/network/net1/attachments", NO_BODY, {}),
    (
        lambda c: c.network.list_attachments("net1", "p1"),
        "GET",
        "/v0/network/net1/attachments?project=p1",
        NO_BODY,
        {"n1": {"nic": "eth0"}},
    ),
    (lambda c: c.switch.list(), "GET", "/v0/switches", NO_BODY, ["sw0"]),
    (lambda c: c.switch.show("sw0"), "GET", "/v0/switch/sw0", NO_BODY, {"name": "sw0", "ports": []}),
    (
        lambda c: c.switch.register("sw0", "ovs", bridge="br0", db="unix:/x.sock"),
        "PUT",
        "/v0/switch/sw0",
        {"type": "ovs", "bridge": "br0", "db": "unix:/x.sock"},
        None,
    ),
    (lambda c: c.switch.register("sw0", "mock"), "PUT", "/v0/switch/sw0", {"type": "mock"}, None),
    (lambda c: c.switch.delete("sw0"), "DELETE", "/v0/switch/sw0", NO_BODY, None),
    (lambda c: c.port.register("sw0", "gi1/0/1"), "PUT", "/v0/switch/sw0/port/gi1/0/1", NO_BODY, None),
    (lambda c: c.port.delete("sw0", "gi1/0/1"), "DELETE", "/v0/switch/sw0/port/gi1/0/1", NO_BODY, None),
    (lambda c: c.port.show("sw0", "gi1/0/1"), "GET", "/v0/switch/sw0/port/gi1/0/1", NO_BODY, {}),
    (
        lambda c: c.port.state("sw0", "gi1/0/1"),
        "GET",
        "/v0/switch/sw0/port/gi1/0/1/state",
        NO_BODY,
        {"native": "100", "tagged": ["200"]},
    ),
    (
        lambda c: c.port.connect_nic("sw0", "gi1/0/1", "n1", "eth0"),
        "POST",
        "/v0/switch/sw0/port/gi1/0/1/connect_nic",
        {"node": "n1", "nic": "eth0"},
        None,
    ),
    (
        lambda c: c.port.detach_nic("sw0", "gi1/0/1"),
        "POST",
        "/v0/switch/sw0/port/gi1/0/1/detach_nic",
        NO_BODY,
        None,
    ),
    (
        lambda c: c.port.revert("sw0", "gi1/0/1"),
        "POST",
        "/v0/switch/sw0/port/gi1/0/1/revert",
        NO_BODY,
        ACTION,
    ),
    (lambda c: c.user.list(), "GET", "/v0/auth/basic/users", NO_BODY, {"admin": {"is_admin": True}}),
    (
        lambda c: c.user.create("alice", "pw"),
        "PUT",
        "/v0/auth/basic/user/alice",
        {"password": "pw", "is_admin": False},
        None,
    ),
    (
        lambda c: c.user.create("root", "pw", is_admin=True),
        "PUT",
        "/v0/auth/basic/user/root",
        {"password": "pw", "is_admin": True},
        None,
    ),
    (lambda c: c.user.delete("alice"), "DELETE", "/v0/auth/basic/user/alice", NO_BODY, None),
    (
        lambda c: c.user.set_admin("alice", True),
        "PATCH",
        "/v0/auth/basic/user/alice",
        {"is_admin": True},
        None,
    ),
    (
        lambda c: c.user.add_project("alice", "p1"),
        "POST",
        "/v0/auth/basic/user/alice/add_project",
        {"project": "p1"},
        None,
    ),
    (
        lambda c: c.user.remove_project("alice", "p1"),
        "POST",
        "/v0/auth/basic/user/alice/remove_project",
        {"project": "p1"},
        None,
    ),
    (
        lambda c: c.extensions.list_active(),
        "GET",
        "/v0/active_extensions",
        NO_BODY,
        ["hil.ext.auth.database"],
    ),
    (lambda c: c.pool.show(), "GET", "/v0/pool", NO_BODY, {"nodes": 3}),
    (lambda c: c.pool.grow(2), "POST", "/v0/pool/grow", {"count": 2}, ["n1"]),
    (lambda c: c.pool.shrink(1), "POST", "/v0/pool/shrink", {"count": 1}, ["n1"]),
    (lambda c: c.pool.reconcile(fix=True), "POST", "/v0/pool/reconcile", {"fix": True}, {}),
    (lambda c: c.request("GET", "/images"), "GET", "/v0/images", NO_BODY, []),
    (lambda c: c.request("PUT", "image/i1", json={"url": "x"}), "PUT", "/v0/image/i1", {"url": "x"}, None),
]


@pytest.mark.parametrize(
    ("call", "method", "path", "body", "answer"), CASES, ids=[f"{c[1]} {c[2]}" for c in CASES]
)
def test_wire_format(
    client: Client,
    rec: Recorder,
    call: Callable[[Client], Any],
    method: str,
    path: str,
    body: Any,
    answer: Any,
) -> None:
    if answer is None:
        rec.answer(200)
    else:
        rec.answer(202 if answer is ACTION else 200, answer)
    assert call(client) == answer
    [request] = rec.requests
    assert (request.method, request.url.raw_path.decode()) == (method, path)
    assert str(request.url).startswith(ENDPOINT + "/v0/")
    assert body_of(request) == body
    if body is not NO_BODY:
        assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == httpx.BasicAuth("admin", "adminpw")._auth_header


def test_names_are_percent_encoded_and_port_slashes_kept(client: Client, rec: Recorder) -> None:
    client.node.show("my node$+!*'(),")
    client.port.show("sw 0", "Te 1/0/1")
    client.node.metadata_set("n1", "a.b", 1)
    paths = [r.url.raw_path.decode() for r in rec.requests]
    assert paths == [
        "/v0/node/my%20node%24%2B%21%2A%27%28%29%2C",
        "/v0/switch/sw%200/port/Te%201/0/1",
        "/v0/node/n1/metadata/a.b",
    ]


def test_odd_but_printable_names_are_encoded_not_refused(client: Client, rec: Recorder) -> None:
    rec.answer(200)
    client.project.create("projét:1@x?#")
    assert rec.requests[0].url.raw_path.decode() == "/v0/project/proj%C3%A9t%3A1%40x%3F%23"


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda c: c.node.show("a/b"), "'/'"),  # would address another route: never allowed outside ports
        (lambda c: c.project.create("p\x001"), "'\\x00'"),
        (lambda c: c.user.delete("ali\nce"), "'\\n'"),
        (lambda c: c.node.show(""), "empty"),
        (lambda c: c.node.show(".."), "not a usable name"),
        (lambda c: c.port.show("sw0", "gi1/../x"), "not a usable name"),
        (lambda c: c.port.show("sw0", "/gi1"), "not a usable name"),
        (lambda c: c.project.connect("p1", "n/1"), "'/'"),  # body values too, as HIL's client
        (lambda c: c.node.connect_network("n1", "eth0", "net1", "vlan/1\t"), "'\\t'"),
        (lambda c: c.network.create("net1", "p1", "p\x7f1", ""), "'\\x7f'"),
        (lambda c: c.node.show(None), "must be a string"),
    ],
)
def test_bad_names_are_refused_before_sending(
    client: Client, rec: Recorder, call: Callable[[Client], Any], word: str
) -> None:
    with pytest.raises(e.BadArgumentError) as info:
        call(client)
    assert word in str(info.value)
    assert rec.requests == []


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(e.ERRORS_BY_NAME))
def test_every_error_class_comes_back(client: Client, rec: Recorder, name: str) -> None:
    rec.answer(409, {"type": name, "msg": f"{name} happened."})
    with pytest.raises(e.RhaasError) as info:
        client.node.show("n1")
    assert type(info.value) is e.ERRORS_BY_NAME[name]
    assert info.value.msg == f"{name} happened."
    assert str(info.value) == f"{name} happened."


def test_unknown_error_type_is_a_rhaas_error_named_after_it(client: Client, rec: Recorder) -> None:
    rec.answer(418, {"type": "TeapotError", "msg": "short and stout"})
    with pytest.raises(e.RhaasError) as info:
        client.node.show("n1")
    assert type(info.value).__name__ == "TeapotError"
    assert info.value.msg == "short and stout"
    rec.answer(400, {"type": "not a class name", "msg": "odd"})
    with pytest.raises(e.RhaasError) as info:
        client.node.show("n1")
    assert type(info.value) is e.RhaasError


def test_html_500_is_a_server_error_with_a_snippet(client: Client, rec: Recorder) -> None:
    html = "<html><title>500 Internal Server Error</title><h1>Internal Server Error</h1></html>"
    rec.answer(500, content=html, headers={"content-type": "text/html"})
    with pytest.raises(e.ServerError) as info:
        client.network.create("net1", "admin", "", "")
    msg = str(info.value)
    assert "HTTP 500" in msg and "Internal Server Error" in msg and "<h1>" not in msg
    assert ENDPOINT in msg and "PUT /v0/network/net1" in msg


@pytest.mark.parametrize(
    ("status", "content"),
    [(502, b"Bad Gateway"), (404, b"<html>not here</html>"), (404, b'{"detail": "Not Found"}')],
)
def test_other_non_api_errors_are_upstream_errors(
    client: Client, rec: Recorder, status: int, content: bytes
) -> None:
    rec.answer(status, content=content)
    with pytest.raises(e.UpstreamError) as info:
        client.node.show("n1")
    assert f"HTTP {status}" in str(info.value)
    assert type(info.value) is e.UpstreamError


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (409, {"type": "BlockedError", "msg": "pending"}, False),  # a definite refusal in HIL's shape
        (404, {"type": "NotFoundError", "msg": "no such node"}, False),
        (404, "<html>not here</html>", False),  # HIL's HTML 404: a route it does not have
        (500, "<html>Internal Server Error</html>", True),  # HIL's crash page
        (502, "Bad Gateway", True),  # a proxy in front of an upstream that is away
        (503, {"type": "UpstreamUnavailableError", "msg": "its own upstream is away"}, True),
        (504, "Gateway Timeout", True),
        (429, "slow down", True),
    ],
)
def test_errors_say_whether_asking_again_may_help(
    client: Client, rec: Recorder, status: int, body: Any, transient: bool
) -> None:
    if isinstance(body, dict):
        rec.answer(status, body)
    else:
        rec.answer(status, content=body.encode())
    with pytest.raises(e.RhaasError) as info:
        client.node.show("n1")
    assert info.value.transient is transient


def test_an_unreachable_endpoint_is_transient(client: Client, rec: Recorder) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    rec.respond = fail
    with pytest.raises(e.UpstreamUnavailableError) as info:
        client.node.connect_network("n1", "eth0", "net", "vlan/native")
    assert info.value.transient is True


def test_success_with_a_body_that_is_not_json(client: Client, rec: Recorder) -> None:
    rec.answer(200, content=b"<html>proxy login</html>")
    with pytest.raises(e.UpstreamError, match="not JSON"):
        client.project.list()


def test_connection_refused_names_the_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with (
        Client(endpoint, "admin", "pw", timeout=5) as client,
        pytest.raises(e.UpstreamUnavailableError) as info,
    ):
        client.node.list("free")
    assert endpoint in str(info.value) and "GET /v0/nodes/free" in str(info.value)


@pytest.mark.parametrize(
    ("exc", "word"),
    [(httpx.ReadTimeout("slow"), "did not answer within 30 s"), (httpx.ConnectError("no route"), "no route")],
)
def test_transport_failures_are_unavailable(client: Client, rec: Recorder, exc: Exception, word: str) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise exc

    rec.respond = fail
    with pytest.raises(e.UpstreamUnavailableError, match=word):
        client.node.power_on("n1")


def test_redirect_loop_is_an_upstream_error(client: Client, rec: Recorder) -> None:
    rec.answer(307, headers={"location": ENDPOINT + "/v0/node/n1/power_on"})
    with pytest.raises(e.UpstreamError, match="redirect"):
        client.node.power_on("n1")


# --- redirects, streams, auth, endpoints -----------------------------------------------------------------
def test_307_is_followed_with_method_and_body_and_without_credentials(client: Client, rec: Recorder) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == "obmd.test":
            answer = {"power_status": "on"} if request.method == "GET" else None
            return httpx.Response(200, json=answer) if answer else httpx.Response(200)
        op = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(307, headers={"location": f"http://obmd.test/node/n1/{op}?token=t0k"})

    rec.respond = respond
    client.node.power_cycle("n1", force=True)
    assert client.node.power_status("n1") == {"power_status": "on"}
    first, second, third, fourth = rec.requests
    assert (second.method, second.url.host, second.url.params["token"]) == ("POST", "obmd.test", "t0k")
    assert body_of(second) == {"force": True}
    assert "authorization" in first.headers and "authorization" not in second.headers
    assert (fourth.method, fourth.url.path) == ("GET", "/node/n1/power_status")


def test_console_streams_and_errors_before_iterating(client: Client, rec: Recorder) -> None:
    rec.answer(200, stream=httpx.ByteStream(b"boot: ok\nlogin: "), headers={"content-type": "text/plain"})
    assert "".join(client.node.show_console("n1")) == "boot: ok\nlogin: "
    assert rec.requests[-1].url.path == "/v0/node/n1/console"
    rec.answer(409, {"type": "BlockedError", "msg": "OBM is disabled."})
    with pytest.raises(e.BlockedError, match="OBM is disabled"):
        client.node.show_console("n1")


def test_no_credentials_means_no_authorization_header(rec: Recorder) -> None:
    http = httpx.Client(transport=httpx.MockTransport(rec))
    Client(ENDPOINT, http=http).project.list()
    assert "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://h:5000", "http://h:5000/v0/projects"),
        ("http://h:5000/", "http://h:5000/v0/projects"),
        ("http://h:5000/v0/", "http://h:5000/v0/projects"),
        ("https://h/hil", "https://h/hil/v0/projects"),
    ],
)
def test_endpoint_forms(rec: Recorder, endpoint: str, url: str) -> None:
    client = Client(endpoint, http=httpx.Client(transport=httpx.MockTransport(rec)))
    client.project.list()
    assert str(rec.requests[0].url) == url


@pytest.mark.parametrize("endpoint", ["localhost:5000", "ftp://h", "", "http://"])
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(e.BadArgumentError, match="ndpoint"):
        Client(endpoint)


def test_close_leaves_a_given_http_client_open(rec: Recorder) -> None:
    http = httpx.Client(transport=httpx.MockTransport(rec))
    with Client(ENDPOINT, http=http):
        pass
    assert not http.is_closed
    own = Client(ENDPOINT)
    own.close()
    assert own._conn.http.is_closed


# --- from_env --------------------------------------------------------------------------------------------
def test_from_env_prefers_rhaas_and_falls_back_to_hil() -> None:
    both = {
        "RHAAS_ENDPOINT": "http://r:1",
        "RHAAS_USERNAME": "ru",
        "RHAAS_PASSWORD": "rp",
        "HIL_ENDPOINT": "http://h:2",
        "HIL_USERNAME": "hu",
        "HIL_PASSWORD": "hp",
    }
    client = Client.from_env(both)
    assert (client.endpoint, client.username) == ("http://r:1", "ru")
    hil = {k: v for k, v in both.items() if k.startswith("HIL_")}
    client = Client.from_env(hil)
    assert (client.endpoint, client.username) == ("http://h:2", "hu")


def test_from_env_never_mixes_families() -> None:
    client = Client.from_env({"RHAAS_ENDPOINT": "http://r:1", "HIL_USERNAME": "hu", "HIL_PASSWORD": "hp"})
    assert client.username is None


def test_from_env_errors() -> None:
    with pytest.raises(e.BadArgumentError, match="RHAAS_ENDPOINT"):
        Client.from_env({})
    with pytest.raises(e.BadArgumentError, match="HIL_PASSWORD"):
        Client.from_env({"HIL_ENDPOINT": "http://h:2", "HIL_USERNAME": "hu"})


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch, rec: Recorder) -> None:
    monkeypatch.delenv("RHAAS_ENDPOINT", raising=False)
    monkeypatch.setenv("HIL_ENDPOINT", "http://hil.test:5000")
    monkeypatch.setenv("HIL_USERNAME", "hu")
    monkeypatch.setenv("HIL_PASSWORD", "hp")
    Client.from_env(http=httpx.Client(transport=httpx.MockTransport(rec))).project.list()
    request = rec.requests[0]
    assert str(request.url) == "http://hil.test:5000/v0/projects"
    assert request.headers["authorization"] == httpx.BasicAuth("hu", "hp")._auth_header


# --- waiting for networking actions ----------------------------------------------------------------------
def action(status: str, **extra: Any) -> dict[str, Any]:
    base = {
        "node": "n1",
        "nic": "eth0",
        "new_network": "net1",
        "type": "modify_port",
        "channel": "vlan/native",
    }
    return {"status": status, **base, **extra}


def test_wait_polls_until_done(client: Client, rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [action("PENDING"), action("PENDING"), action("PENDING"), action("DONE")]
    rec.respond = lambda _req: httpx.Response(200, json=answers.pop(0))
    slept: list[float] = []
    monkeypatch.setattr(client_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=slept.append))
    assert client.wait_networking_action("s1", timeout=10)["status"] == "DONE"
    assert len(rec.requests) == 4
    assert {r.url.path for r in rec.requests} == {"/v0/networking_action/s1"}
    assert slept == [0.02, 0.04, 0.08], "back-off: 20 ms, then twice as long each time"


def test_wait_raises_on_error_with_the_reason(client: Client, rec: Recorder) -> None:
    rec.answer(200, action("ERROR", error="port gi1/0/1 is shut down"))
    with pytest.raises(e.SwitchError) as info:
        client.wait_networking_action("s1")
    assert "connect n1/eth0 to net1 on vlan/native" in str(info.value)
    assert "port gi1/0/1 is shut down" in str(info.value)
    assert client.wait_networking_action("s1", raise_on_error=False)["status"] == "ERROR"


def test_wait_times_out(client: Client, rec: Recorder) -> None:
    rec.answer(200, action("PENDING", type="revert_port", new_network=None))
    started = time.monotonic()
    with pytest.raises(e.BlockedError, match="revert the port of n1/eth0.*still PENDING after 0.3 s"):
        client.wait_networking_action("s1", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert len(rec.requests) >= 3


def test_wait_refuses_unknown_status(client: Client, rec: Recorder) -> None:
    rec.answer(200, action("EXPLODED"))
    with pytest.raises(e.UpstreamError, match="EXPLODED"):
        client.wait_networking_action("s1")


class ClosingServer:
    """Answers each connection's first request, keeps it alive, then closes it when the next request on it
    arrives, unanswered: a server's keep-alive timeout firing just as the client reuses the connection."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            head = conn.recv(65536)
            self.requests.append(head.split(b"\r\n", 1)[0])
            body = b'["n1"]'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))  # fmt: skip
            head = conn.recv(65536)  # the next request on this connection: closed under it
            if head:
                self.requests.append(head.split(b"\r\n", 1)[0])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_a_get_is_sent_again_when_a_kept_alive_connection_is_closed_under_it() -> None:
    server = ClosingServer()
    try:
        with Client(server.endpoint, "admin", "pw", timeout=5) as client:
            assert client.node.list("free") == ["n1"]
            assert client.node.list("free") == ["n1"], "sent again on a new connection"
            assert server.requests == [b"GET /v0/nodes/free HTTP/1.1"] * 3
            with pytest.raises(e.UpstreamUnavailableError, match="POST /v0/node/n1/power_on"):
                client.node.power_on("n1")  # not idempotent: never sent twice
    finally:
        server.sock.close()
    assert server.requests[3:] == [b"POST /v0/node/n1/power_on HTTP/1.1"]
