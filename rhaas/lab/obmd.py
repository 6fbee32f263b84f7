"""A stand-in for obmd (HIL master's power daemon, CCI-MOC/obmd) that drives fake machines in memory.

It speaks obmd's HTTP API on 127.0.0.1, so the obmd OBM driver, rhaas's server and HIL's own CLI can be
tested without a BMC:

    admin (basic auth ``admin:<admin token>``; a wrong one answers 404, as obmd's admin router does)
        PUT /node/<id> {"type", "info"}   DELETE /node/<id>
        POST /node/<id>/token -> {"token": 32 hex digits}   DELETE /node/<id>/token
    with ``?token=<node token>`` (a malformed, stale or missing token answers 401; an unknown node 404)
        POST power_on, power_off, power_cycle {"force": bool}   GET power_status -> {"power_status"}
        PUT boot_device {"bootdev": "pxe" | "disk" | "none"} (anything else 400)
        GET console: the machine's log so far, then new lines until the reader goes away

Each machine counts its firmware boots (power on from off, every cycle) so that a test can see what a
call did from the machine's side. A machine with ``fail`` set answers 500 to every call but a
registration, as obmd does when its BMC fails. Test equipment: nothing of the service imports it.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BOOT_DEVICES = ("pxe", "disk", "none")


@dataclass
class Machine:
    """A node behind the fake obmd."""

    power: str = "off"
    bootdev: str = "disk"
    boots: int = 0
    token: str | None = None
    fail: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)
    #: Every token call that changed something, as ``power_on``, ``power_cycle force=True``,
    #: ``boot_device pxe``: what a test reads to know what reached the machine.
    ops: list[str] = field(default_factory=list)


class FakeObmd:
    """The fake daemon: ``start()`` serves on 127.0.0.1 (a free port) in a thread; ``stop()`` ends it."""

    def __init__(self, admin_token: str | None = None) -> None:
        self.admin_token = admin_token or secrets.token_hex(16)
        self.machines: dict[str, Machine] = {}
        #: Every request as (method, path) — never its query (it holds the node token).
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        #: Notified (under ``lock``) whenever a machine changes: console readers wait on it.
        self.changed = threading.Condition(self.lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def node_uri(self, node_id: str) -> str:
        return f"{self.url}/node/{node_id}"

    def add(self, node_id: str, **state: Any) -> Machine:
        """Register a machine directly (as an admin's ``PUT /node/<id>`` would)."""
        with self.lock:
            machine = self.machines[node_id] = Machine(**state)
        return machine

    def start(self) -> FakeObmd:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.obmd = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-obmd", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.stopping.set()
            self.changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeObmd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the request line holds the node token."""

    @property
    def obmd(self) -> FakeObmd:
        return self.server.obmd  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _answer(self, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _is_admin(self) -> bool:
        import base64

        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == "admin" and secrets.compare_digest(password, self.obmd.admin_token)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        with self.obmd.lock:
            self.obmd.calls.append((method, url.path))
        body = self._body()
        if len(parts) < 2 or parts[0] != "node":
            return self._answer(404)
        node_id, op = parts[1], "/".join(parts[2:])
        if op in ("", "token"):
            return self._admin(method, node_id, op, body)
        token = parse_qs(url.query).get("token", [""])[0]
        with self.obmd.lock:
            machine = self.obmd.machines.get(node_id)
            if machine is None:
                return self._answer(404)
            if machine.token is None or not secrets.compare_digest(token, machine.token):
                return self._answer(401)
            if machine.fail:
                return self._answer(500)
            if (method, op) == ("GET", "console"):
                lines = len(machine.console)
                first = "".join(line + "\n" for line in machine.console)
            else:
                answer = _operate(machine, method, op, body)
                self.obmd.changed.notify_all()
                return self._answer(*answer)
        self._stream_console(machine, first, lines)

    def _admin(self, method: str, node_id: str, op: str, body: Any) -> None:
        if not self._is_admin():
            return self._answer(404)
        with self.obmd.lock:
            machines = self.obmd.machines
            if (method, op) == ("PUT", ""):
                if not isinstance(body, dict) or not isinstance(body.get("type"), str):
                    return self._answer(400)
                machines[node_id] = Machine(info=dict(body))
                return self._answer(200)
            machine = machines.get(node_id)
            if machine is None:
                return self._answer(404)
            if (method, op) == ("DELETE", ""):
                del machines[node_id]
                return self._answer(200)
            if machine.fail:
                return self._answer(500)
            if (method, op) == ("POST", "token"):
                machine.token = secrets.token_hex(16)
                return self._answer(200, {"token": machine.token})
            if (method, op) == ("DELETE", "token"):
                machine.token = None
                self.obmd.changed.notify_all()
                return self._answer(200)
        return self._answer(405)

    def _stream_console(self, machine: Machine, first: str, seen: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        token = machine.token
        try:
            self._chunk(first.encode() or b"\n")
            while True:
                with self.obmd.changed:
                    self.obmd.changed.wait_for(partial(self._console_moved, machine, token, seen), timeout=1)
                    new, seen = machine.console[seen:], len(machine.console)
                    ends = self._console_ends(machine, token)
                if new:
                    self._chunk("".join(line + "\n" for line in new).encode())
                if ends:
                    break
            self._chunk(b"")
        except OSError:
            pass  # the reader went away: that ends a console session
        self.close_connection = True

    def _console_moved(self, machine: Machine, token: str | None, seen: int) -> bool:
        return self._console_ends(machine, token) or len(machine.console) > seen

    def _console_ends(self, machine: Machine, token: str | None) -> bool:
        """A console session ends when obmd stops or the token it was opened with is revoked."""
        return self.obmd.stopping.is_set() or machine.token != token

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _operate(machine: Machine, method: str, op: str, body: Any) -> tuple[int, Any]:
    """One token call on a machine (the caller holds the lock): (status, JSON body or None)."""

    def boot(why: str) -> None:
        machine.power, machine.boots = "on", machine.boots + 1
        machine.console.append(f"{why}: boot {machine.boots} from {machine.bootdev}")

    if (method, op) == ("POST", "power_on"):
        machine.ops.append("power_on")
        if machine.power == "off":
            boot("power on")
        return 200, None
    if (method, op) == ("POST", "power_off"):
        machine.ops.append("power_off")
        machine.power = "off"
        machine.console.append("power off")
        return 200, None
    if (method, op) == ("POST", "power_cycle"):
        if not isinstance(body, dict) or not isinstance(body.get("force", False), bool):
            return 400, None
        machine.ops.append(f"power_cycle force={bool(body.get('force'))}")
        boot("reset" if body.get("force") else "power cycle")
        return 200, None
    if (method, op) == ("GET", "power_status"):
        return 200, {"power_status": machine.power}
    if (method, op) == ("PUT", "boot_device"):
        if not isinstance(body, dict) or body.get("bootdev") not in BOOT_DEVICES:
            return 400, None
        machine.bootdev = body["bootdev"]
        machine.ops.append(f"boot_device {machine.bootdev}")
        return 200, None
    return 404, None
