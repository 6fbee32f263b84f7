"""A small obmd (HIL master's OBM daemon) for tests: what the HIL double's power redirects reach.

It behaves on the wire as CCI-MOC/obmd does (read from its public repository, not copied): admin calls
with basic auth ``admin:<admin token>`` (``PUT``/``DELETE /node/<id>``, ``POST``/``DELETE
/node/<id>/token``, the token answered as ``{"token": ...}``), and calls with ``?token=<node token>``
(``POST power_cycle {"force"}``, ``power_on``, ``power_off``, ``PUT boot_device {"bootdev"}``, ``GET
power_status`` → ``{"power_status": ...}``, ``GET console``). Errors are bare status codes with empty
bodies (404 no such node, 401 bad token, 400 bad boot device); an unknown route gets Go's plain-text
``404 page not found``. There is **no NMI**: obmd has no such call.

Each node is a fake machine whose calls are recorded (`ObmdNode.calls`), so tests can count power cycles
and boot device changes. The server is threaded (obmd is Go: every request runs concurrently) and listens
on 127.0.0.1 until `Obmd.stop`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BOOT_DEVICES = ("pxe", "disk", "none")


@dataclass
class ObmdNode:
    info: dict[str, Any]
    token: str | None = None
    power: str = "off"
    bootdev: str = "none"
    calls: list[str] = field(default_factory=list)
    console: bytes = b"console of a test machine\n"


class Obmd:
    """One obmd on 127.0.0.1 with its admin token; nodes live in ``nodes`` (id → `ObmdNode`)."""

    def __init__(self, admin_token: str = "obmd-admin-token") -> None:
        self.admin_token = admin_token
        self.nodes: dict[str, ObmdNode] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "obmd is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def node_uri(self, node_id: str) -> str:
        """The URI a HIL node registration names for this obmd node."""
        return f"{self.url}/node/{node_id}"

    def add_node(self, node_id: str) -> None:
        with self.lock:
            self.nodes[node_id] = ObmdNode({"type": "mock", "info": {}})

    def start(self) -> Obmd:
        handler = type("Handler", (_ObmdHandler,), {"obmd": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="obmd-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


class _ObmdHandler(BaseHTTPRequestHandler):
    obmd: Obmd
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _is_admin(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == "admin" and secrets.compare_digest(password, self.obmd.admin_token)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        match = re.fullmatch(r"/node/([^/]+)(?:/([a-z_]+))?", url.path)
        if match is None:
            self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        node_id, op = match.group(1), match.group(2) or ""
        admin_ops = {("PUT", ""), ("DELETE", ""), ("POST", "token"), ("DELETE", "token")}
        if (method, op) in admin_ops:
            self._admin(method, op, node_id)
            return
        user_ops = {
            ("POST", "power_cycle"),
            ("POST", "power_on"),
            ("POST", "power_off"),
            ("PUT", "boot_device"),
            ("GET", "power_status"),
            ("GET", "console"),
        }
        if (method, op) not in user_ops:
            self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        token = parse_qs(url.query).get("token", [""])[0]
        with self.obmd.lock:
            node = self.obmd.nodes.get(node_id)
            if node is None:
                self._reply(404)
                return
            if node.token is None or not secrets.compare_digest(token, node.token):
                self._reply(401)
                return
            self._operate(node, op, self._body())

    def _operate(self, node: ObmdNode, op: str, body: dict[str, Any]) -> None:
        if op == "power_status":
            self._reply(200, json.dumps({"power_status": node.power}).encode())
            return
        if op == "console":
            self._reply(200, node.console, "application/octet-stream")
            return
        if op == "boot_device":
            if body.get("bootdev") not in BOOT_DEVICES:
                self._reply(400)
                return
            node.bootdev = body["bootdev"]
            node.calls.append(f"boot_device {node.bootdev}")
        elif op == "power_cycle":
            node.power = "on"
            node.calls.append(f"power_cycle force={bool(body.get('force'))}")
        else:
            node.power = "on" if op == "power_on" else "off"
            node.calls.append(op)
        self._reply(200)

    def _admin(self, method: str, op: str, node_id: str) -> None:
        if not self._is_admin():
            self._reply(401)
            return
        with self.obmd.lock:
            if method == "PUT" and op == "":
                self.obmd.nodes[node_id] = ObmdNode(self._body())
                self._reply(200)
                return
            node = self.obmd.nodes.get(node_id)
            if node is None:
                self._reply(404)
                return
            if op == "":
                del self.obmd.nodes[node_id]
            elif method == "POST":
                node.token = secrets.token_hex(16)  # a new token invalidates the old one
                self._reply(200, json.dumps({"token": node.token}).encode())
                return
            else:
                node.token = None
            self._reply(200)
