"""A HIL master double for tests: an HTTP server on 127.0.0.1 that answers as HIL master does on the wire.

Written from the API description of HIL (its paths, bodies, checks and error bodies, as read from the
public CCI-MOC/hil repository and observed on a running copy), not from its code. What a recursive rhaas
meets when its upstream is a real HIL:

* HIL's routes under ``/v0`` with its argument rules (unknown keys, and so ``?wait=``, answer 400
  ``ValidationError``; a GET with a body, an empty query value: 400), checked *before* authentication;
  database auth with basic credentials (an unknown user name is a 404 ``NotFoundError``, as in HIL);
  errors as ``{"type", "msg"}`` with HIL's status codes; bodies sent as ``text/html`` (Flask's default
  for the strings HIL returns).
* A route it does not have answers Werkzeug's **HTML** 404 page, a wrong method its HTML 405 page (with
  ``Allow``); HIL's server errors (``OBMError``, ``SwitchError``, ``AllocationError``) its HTML 500 page.
* ``connect_network``/``detach_network`` answer 202 ``{"status_id"}``, and the change is applied later by
  the networking daemon (`NetworkDaemon`, HIL's ``serve-networks``), one action at a time, oldest first;
  ``GET /networking_action/<id>`` shows it (PENDING, DONE, ERROR) until the NIC's next action replaces it.
* Power calls answer 307 to the node's obmd (`rhaas.lab.obmd.FakeObmd`, started with it) with the node's
  token; enabling the OBM fetches that token from obmd. There is no NMI call (HTML 404).
* ``GET /active_extensions`` (admin only) lists HIL's extension names, none of rhaas's.
* Every request costs ``delay`` seconds (HIL hashes the password on each one: ~200 ms) and the API serves
  one request at a time, as HIL's server did.

State lives in `HilState`, which outlives the API server: `HilDouble.stop_api` / `start_api` take the API
down and up again on the same port while the daemon goes on applying what was queued (outage tests).
Fault injection: ``state.fail_ports`` (switch ports whose changes end in ERROR), ``daemon.pause()``;
``extensions`` can be changed (say, to list an extension whose route the double does not have). ``log``
holds every request served, for tests that count round trips or check a route was never called.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from urllib.request import Request, urlopen

from rhaas.lab.obmd import FakeObmd

MOCK_SWITCH = "http://schema.massopencloud.org/haas/v0/switches/mock"
EXTENSIONS = ["hil.ext.auth.database", "hil.ext.network_allocators.vlan_pool", "hil.ext.switches.mock"]
_MOCK_PORT = re.compile(r"^(gi|te)\d+/\d+(/\d+)?$")
_NATIVE = "vlan/native"


def _html(code: int, title: str, text: str) -> bytes:
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n'
        f"<title>{code} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n"
    ).encode()


NOT_FOUND_PAGE = _html(
    404,
    "Not Found",
    "The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again.",
)
METHOD_PAGE = _html(405, "Method Not Allowed", "The method is not allowed for the requested URL.")
SERVER_ERROR_PAGE = _html(
    500,
    "Internal Server Error",
    "The server encountered an internal error and was unable to complete your request. Either the server "
    "is overloaded or there is an error in the application.",
)


class ApiError(Exception):
    """One of HIL's APIErrors: answered as ``{"type", "msg"}``."""

    status = 400

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def _error(name: str, status: int) -> type[ApiError]:
    return type(name, (ApiError,), {"status": status})


ValidationError = _error("ValidationError", 400)
BadArgumentError = _error("BadArgumentError", 400)
AuthorizationError = _error("AuthorizationError", 401)
NotFoundError = _error("NotFoundError", 404)
DuplicateError = _error("DuplicateError", 409)
BlockedError = _error("BlockedError", 409)
ProjectMismatchError = _error("ProjectMismatchError", 409)
IllegalStateError = _error("IllegalStateError", 409)


class ServerError(Exception):
    """HIL's ServerErrors (OBMError, SwitchError, AllocationError): Werkzeug's HTML 500 page."""


@dataclass
class Nic:
    label: str
    macaddr: str
    port: tuple[str, str] | None = None  # (switch, port)
    networks: dict[str, str] = field(default_factory=dict)  # channel → network label
    action: str | None = None  # the uuid of its current (last) networking action


@dataclass
class Node:
    name: str
    obmd_uri: str
    admin_token: str
    token: str | None = None  # non-None ⇔ OBM enabled
    project: str | None = None
    nics: dict[str, Nic] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Network:
    label: str
    owner: str | None  # None: admin
    access: list[str]
    network_id: str
    allocated: bool


@dataclass
class Action:
    uuid: str
    type: str  # modify_port | revert_port
    node: str
    nic: str
    new_network: str | None
    channel: str
    status: str = "PENDING"


@dataclass
class User:
    password: str
    is_admin: bool
    projects: set[str] = field(default_factory=set)


class HilState:
    """Everything HIL keeps in its database; it outlives API restarts. Guard every use with ``lock``."""

    def __init__(self, vlans: Iterable[int]) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.projects: set[str] = set()
        self.nodes: dict[str, Node] = {}
        self.networks: dict[str, Network] = {}
        self.switches: dict[str, dict[str, tuple[str, str] | None]] = {}  # switch → port → (node, nic)
        self.actions: dict[str, Action] = {}  # in the order they were queued
        self.free_vlans: list[int] = sorted(vlans)
        self.fail_ports: set[tuple[str, str]] = set()  # (switch, port) whose changes end in ERROR
        self.port_log: list[tuple[str, str, str, str | None]] = []  # what the daemon did to switches

    def nic(self, node: str, nic: str) -> Nic:
        return self.nodes[node].nics[nic]


class NetworkDaemon:
    """HIL's ``serve-networks``: applies PENDING actions oldest first, one at a time; sleeps ``sleep_time``
    when there is none. ``switch_delay``: seconds each switch change takes."""

    def __init__(self, state: HilState, sleep_time: float = 0.05, switch_delay: float = 0.0) -> None:
        self.state, self.sleep_time, self.switch_delay = state, sleep_time, switch_delay
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hil-network-daemon", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def pause(self) -> None:
        """Stop applying actions (they stay PENDING) until `resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set() or not self.apply_one():
                self._stop.wait(self.sleep_time)

    def apply_one(self) -> bool:
        """Apply the oldest PENDING action; False if there was none."""
        with self.state.lock:
            action = next((a for a in self.state.actions.values() if a.status == "PENDING"), None)
            if action is None:
                return False
        if self.switch_delay:
            time.sleep(self.switch_delay)  # the switch's own time, outside the lock
        with self.state.lock:
            nic = self.state.nic(action.node, action.nic)
            if nic.port is None or nic.port in self.state.fail_ports:
                action.status = "ERROR"
                return True
            if action.type == "revert_port":
                nic.networks.clear()
                self.state.port_log.append((*nic.port, "revert", None))
            elif action.new_network is None:
                nic.networks.pop(action.channel, None)
                self.state.port_log.append((*nic.port, action.channel, None))
            else:
                nic.networks[action.channel] = action.new_network
                net_id = self.state.networks[action.new_network].network_id
                self.state.port_log.append((*nic.port, action.channel, net_id))
            action.status = "DONE"
        return True


#: A route: method, path pattern (``<name>`` one segment, ``<path:name>`` any), handler, body schema
#: (key → (type, required)). Handlers take (api, caller, args) and return (status, body) or a body.
Schema = dict[str, tuple[type, bool]]
Handler = Callable[[Any, User, dict[str, Any]], Any]


@dataclass
class Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    schema: Schema


def _compile(path: str) -> re.Pattern[str]:
    def group(m: re.Match[str]) -> str:
        return f"(?P<{m.group(2)}>{'.+' if m.group(1) else '[^/]+'})"

    return re.compile("^/v0" + re.sub(r"<(path:)?(\w+)>", group, path) + "$")


class HilDouble:
    """The HIL double: state, networking daemon, obmd and API server. Use as a context manager or call
    `start` and `stop`. ``delay``: seconds each API request costs. ``admin``: the first admin user."""

    def __init__(
        self,
        delay: float = 0.0,
        *,
        vlans: Iterable[int] = range(100, 200),
        daemon_sleep: float = 0.05,
        switch_delay: float = 0.0,
        admin: tuple[str, str] = ("admin", "adminpw"),
        threaded: bool = False,
    ) -> None:
        self.state = HilState(vlans)
        self.state.users[admin[0]] = User(admin[1], True)
        self.daemon = NetworkDaemon(self.state, daemon_sleep, switch_delay)
        self.obmd = FakeObmd()
        self.delay = delay
        self.threaded = threaded
        self.extensions = list(EXTENSIONS)  # what GET /active_extensions lists (to admins)
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every API request served
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> HilDouble:
        self.obmd.start()
        self.daemon.start()
        self.start_api()
        return self

    def stop(self) -> None:
        self.stop_api()
        self.daemon.stop()
        self.obmd.stop()

    def __enter__(self) -> HilDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_api(self) -> None:
        """Serve the API (again, on the same port after `stop_api`)."""
        from hil_routes import HilApi

        handler = type("Handler", (_ApiHandler,), {"api": HilApi(self)})
        cls = ThreadingHTTPServer if self.threaded else HTTPServer
        self._server = cls(("127.0.0.1", self._port), handler)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hil-api", daemon=True
        )
        self._thread.start()

    def stop_api(self) -> None:
        """Take the API down (connections refused); state and daemon live on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # -- setting up a site without going through the API ------------------------------------------------
    def add_user(self, name: str, password: str, *projects: str, admin: bool = False) -> None:
        with self.state.lock:
            self.state.users[name] = User(password, admin, set(projects))

    def add_project(self, name: str) -> None:
        with self.state.lock:
            self.state.projects.add(name)

    def add_node(self, name: str, *nics: tuple[str, str, str], switch: str = "sw0") -> None:
        """A node with its obmd node and NICs ``(label, macaddr, port)``, each wired to ``port`` of the mock
        switch ``switch`` (made if missing; port names of HIL's mock switch: ``gi1/0/1``…)."""
        self.obmd.add(name)
        with self.state.lock:
            node = Node(name, self.obmd.node_uri(name), self.obmd.admin_token)
            ports = self.state.switches.setdefault(switch, {})
            for label, mac, port in nics:
                assert _MOCK_PORT.match(port), port
                node.nics[label] = Nic(label, mac, (switch, port))
                ports[port] = (name, label)
            self.state.nodes[name] = node

    def free_nodes(self) -> list[str]:
        with self.state.lock:
            return sorted(n.name for n in self.state.nodes.values() if n.project is None)

    def project_nodes(self, project: str) -> list[str]:
        with self.state.lock:
            return sorted(n.name for n in self.state.nodes.values() if n.project == project)

    def nic_networks(self, node: str, nic: str) -> dict[str, str]:
        """channel → network label, as the daemon left the NIC's switch port."""
        with self.state.lock:
            return dict(self.state.nic(node, nic).networks)

    def obmd_calls(self, node: str) -> list[str]:
        with self.obmd.lock:
            return list(self.obmd.machines[node].ops)


class _ApiHandler(BaseHTTPRequestHandler):
    api: Any  # hil_routes.HilApi
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        status, body, headers = self.api.handle(
            method, unquote(url.path), parse_qsl(url.query, keep_blank_values=True), raw, self._credentials()
        )
        self.api.double.log.append((method, url.path, status))
        self._send(status, body, headers)

    def _credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return (user, password) if sep else None


def obmd_admin(node: Node, method: str, path: str) -> dict[str, Any] | None:
    """An admin request to the node's obmd (as HIL's model does); ServerError if obmd refuses."""
    auth = base64.b64encode(f"admin:{node.admin_token}".encode()).decode()
    request = Request(f"{node.obmd_uri}/{path}", method=method, headers={"Authorization": f"Basic {auth}"})
    try:
        with urlopen(request, timeout=10) as response:
            data = response.read()
    except OSError as exc:
        raise ServerError(f"obmd refused {method} {path}: {exc}") from exc
    return json.loads(data) if data.strip() else None


def new_status_id() -> str:
    return str(uuid.uuid4())
