"""A Redfish BMC for a lab node: a small Redfish service over HTTP (or HTTPS) on 127.0.0.1.

`RedfishBMC` serves one node, a `rhaas.lab.machine.Machine` (the lab's QEMU node, or a `FakeMachine`), with
the resources a Redfish client needs to power and boot it, shaped after the DMTF Redfish schema:

    GET    /redfish/v1                          service root (no authentication, as the standard says)
    GET    /redfish/v1/SessionService           the session service
    GET    /redfish/v1/SessionService/Sessions  sessions (their ids)
    POST   /redfish/v1/SessionService/Sessions  {"UserName", "Password"} -> 201, X-Auth-Token, Location
    DELETE /redfish/v1/SessionService/Sessions/<id>   log out
    GET    /redfish/v1/Systems                  one system, ``node``
    GET    /redfish/v1/Systems/node             PowerState, Boot (override target, enabled, mode), Actions
    PATCH  /redfish/v1/Systems/node             {"Boot": {"BootSourceOverrideTarget": "Pxe" | "Hdd" |
                                                 "None", "BootSourceOverrideEnabled": "Once" |
                                                 "Continuous" | "Disabled", "BootSourceOverrideMode":
                                                 "UEFI" | "Legacy"}}
    POST   /redfish/v1/Systems/node/Actions/ComputerSystem.Reset  {"ResetType": one of the allowed}

Every other request needs HTTP basic authentication or a session's ``X-Auth-Token``; a wrong one answers
401. Reset types: On (nothing if on), ForceOff (nothing if off), ForceRestart (a hard reset), PowerCycle
(off, then on) and Nmi; the last three answer 409 while the node is off. ``reset_types`` chooses which the
system lists in ``ResetType@Redfish.AllowableValues`` (and accepts). Boot overrides reach the machine as
its boot device: Pxe -> pxe, Hdd -> disk, None or Disabled -> none. A "Once" override is cleared
(Disabled, and the machine's boot device back to none) after the next boot this BMC causes; a reboot the
node's OS makes itself does not consume it here.

Firmware boots and NMIs are counted, and published in the state file, by the same code as the IPMI
BMC's (`rhaas.lab.machine.NodeControl`): tests and the lab read both the same way.

Run one from the command line (it stops cleanly on SIGTERM or SIGINT)::

    python -m rhaas.lab.redfish --port 8443 --user admin --state-file n1.json --machine fake \
        --cert bmc.pem --key bmc.key

with the password in ``$RHAAS_LAB_BMC_PASSWORD`` (or ``--password``). Without ``--cert`` it speaks plain
HTTP. This module is lab equipment: nothing in the service imports it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import secrets
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rhaas.lab.machine import FakeMachine, Machine, NodeControl, NodeIsOff, serve_until_signalled

log = logging.getLogger(__name__)

PASSWORD_ENV = "RHAAS_LAB_BMC_PASSWORD"
ROOT = "/redfish/v1"
SYSTEM_ID = "node"
SYSTEM = f"{ROOT}/Systems/{SYSTEM_ID}"
RESET_TARGET = f"{SYSTEM}/Actions/ComputerSystem.Reset"
SESSIONS = f"{ROOT}/SessionService/Sessions"
#: Every reset type this BMC can do, in the order it lists them.
RESET_TYPES = ("On", "ForceOff", "ForceRestart", "PowerCycle", "Nmi")
#: Boot override targets and what the machine is told.
BOOT_TARGETS = {"None": "none", "Pxe": "pxe", "Hdd": "disk"}
BOOT_ENABLED = ("Disabled", "Once", "Continuous")
BOOT_MODES = ("UEFI", "Legacy")
# The longest request body read (a PATCH or a reset is tens of bytes).
_MAX_BODY = 64 * 1024


class RedfishError(Exception):
    """Answer the request with ``status`` and a Redfish error body."""

    def __init__(self, status: int, message: str, code: str = "Base.1.8.GeneralError") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class RedfishBMC:
    """A Redfish service for one `Machine` on ``address:port`` (port 0: any free one), HTTPS when given a
    certificate and its key. Construction binds the socket; `serve_forever` answers until
    `request_stop`; `serve_in_thread` and `stop` do the same from a test."""

    def __init__(
        self,
        machine: Machine,
        *,
        port: int,
        user: str,
        password: str,
        state_file: str | os.PathLike[str],
        address: str = "127.0.0.1",
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        reset_types: Sequence[str] = RESET_TYPES,
        sessions: bool = True,
    ) -> None:
        unknown = set(reset_types) - set(RESET_TYPES)
        if unknown:
            raise ValueError(f"unknown reset types {sorted(unknown)}; known: {RESET_TYPES}")
        self.user, self._password = user, password
        self.reset_types = tuple(reset_types)
        self.sessions_enabled = sessions
        self.uuid = str(uuid.uuid4())
        self.boot_enabled, self.boot_mode = "Disabled", "UEFI"
        #: Live sessions: id -> token.
        self.sessions: dict[str, str] = {}
        self._sessions_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.server = _Server((address, port), partial(_Handler, self))
        self.tls = certfile is not None
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            # The handshake happens in the request's thread: a client that never completes it (or
            # refuses the certificate) holds up nobody else.
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port: int = self.server.server_address[1]
        self.host = str(self.server.server_address[0])
        self.control = NodeControl(machine, state_file, port=self.port, label="Redfish BMC")
        self.machine = machine

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # -- authentication -------------------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return user_ok and password_ok

    def authenticated(self, headers: Any) -> bool:
        token = headers.get("X-Auth-Token")
        if token is not None:
            with self._sessions_lock:
                return any(hmac.compare_digest(token, t) for t in self.sessions.values())
        auth = headers.get("Authorization", "")
        scheme, _, encoded = auth.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep) and self.check_password(user, password)

    def open_session(self, body: Any) -> tuple[str, str]:
        """(session id, token) for good credentials; RedfishError otherwise."""
        if not self.sessions_enabled:
            raise RedfishError(405, "This service does not offer sessions: use basic authentication.")
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("UserName", "Password")
        ):
            raise RedfishError(400, "A session needs UserName and Password.", "Base.1.8.PropertyMissing")
        if not self.check_password(body["UserName"], body["Password"]):
            raise RedfishError(401, "Invalid user name or password.", "Base.1.8.NoValidSession")
        session_id, token = secrets.token_hex(8), secrets.token_hex(16)
        with self._sessions_lock:
            self.sessions[session_id] = token
        log.info("Redfish BMC on port %d: session %s opened", self.port, session_id)
        return session_id, token

    def close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            if self.sessions.pop(session_id, None) is None:
                raise RedfishError(404, f"No session {session_id}.", "Base.1.8.ResourceMissingAtURI")
        log.info("Redfish BMC on port %d: session %s closed", self.port, session_id)

    # -- resources ------------------------------------------------------------------------------------

    def service_root(self) -> dict[str, Any]:
        return {
            "@odata.id": f"{ROOT}/",
            "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
            "Id": "RootService",
            "Name": "Root Service",
            "RedfishVersion": "1.11.0",
            "UUID": self.uuid,
            "Systems": {"@odata.id": f"{ROOT}/Systems"},
            "SessionService": {"@odata.id": f"{ROOT}/SessionService"},
            "Links": {"Sessions": {"@odata.id": SESSIONS}},
        }

    def session_service(self) -> dict[str, Any]:
        return {
            "@odata.id": f"{ROOT}/SessionService",
            "@odata.type": "#SessionService.v1_1_8.SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": self.sessions_enabled,
            "SessionTimeout": 1800,
            "Sessions": {"@odata.id": SESSIONS},
        }

    def session_collection(self) -> dict[str, Any]:
        with self._sessions_lock:
            ids = sorted(self.sessions)
        return _collection(SESSIONS, "#SessionCollection.SessionCollection", "Sessions", ids)

    def session(self, session_id: str) -> dict[str, Any]:
        with self._sessions_lock:
            if session_id not in self.sessions:
                raise RedfishError(404, f"No session {session_id}.", "Base.1.8.ResourceMissingAtURI")
        return {
            "@odata.id": f"{SESSIONS}/{session_id}",
            "@odata.type": "#Session.v1_3_0.Session",
            "Id": session_id,
            "Name": "User Session",
            "UserName": self.user,
        }

    def system(self) -> dict[str, Any]:
        with self.control.lock:
            on = self.control.is_on()
            device = self.machine.get_boot_device()
            enabled, mode = self.boot_enabled, self.boot_mode
        target = next((t for t, d in BOOT_TARGETS.items() if d == device), "None")
        return {
            "@odata.id": SYSTEM,
            "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
            "Id": SYSTEM_ID,
            "Name": "Lab node",
            "UUID": self.uuid,
            "SystemType": "Physical",
            "PowerState": "On" if on else "Off",
            "Boot": {
                "BootSourceOverrideTarget": target if enabled != "Disabled" else "None",
                "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
                "BootSourceOverrideEnabled": enabled,
                "BootSourceOverrideEnabled@Redfish.AllowableValues": list(BOOT_ENABLED),
                "BootSourceOverrideMode": mode,
                "BootSourceOverrideMode@Redfish.AllowableValues": list(BOOT_MODES),
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": RESET_TARGET,
                    "ResetType@Redfish.AllowableValues": list(self.reset_types),
                }
            },
        }

    def patch_system(self, body: Any) -> None:
        if not isinstance(body, dict) or set(body) != {"Boot"} or not isinstance(body["Boot"], dict):
            raise RedfishError(400, "Only Boot can be changed here.", "Base.1.8.PropertyNotWritable")
        boot: dict[str, Any] = body["Boot"]
        allowed = {
            "BootSourceOverrideTarget": tuple(BOOT_TARGETS),
            "BootSourceOverrideEnabled": BOOT_ENABLED,
            "BootSourceOverrideMode": BOOT_MODES,
        }
        for name, value in boot.items():
            if name not in allowed:
                raise RedfishError(400, f"Boot.{name} cannot be changed.", "Base.1.8.PropertyNotWritable")
            if value not in allowed[name]:
                raise RedfishError(
                    400, f"{value!r} is not a value of Boot.{name}.", "Base.1.8.PropertyValueNotInList"
                )
        with self.control.lock:
            current = next(
                (t for t, d in BOOT_TARGETS.items() if d == self.machine.get_boot_device()), "None"
            )
        target = boot.get("BootSourceOverrideTarget", current)
        enabled = boot.get("BootSourceOverrideEnabled", self.boot_enabled)
        if (
            "BootSourceOverrideTarget" in boot
            and "BootSourceOverrideEnabled" not in boot
            and enabled == "Disabled"
        ):
            enabled = "Once"  # setting a target alone enables it for the next boot, as BMCs do
        if enabled == "Disabled" or target == "None":
            enabled, target = "Disabled", "None"
        self.control.set_boot_device(BOOT_TARGETS[target])
        with self.control.lock:
            self.boot_enabled = enabled
            self.boot_mode = boot.get("BootSourceOverrideMode", self.boot_mode)

    def reset(self, body: Any) -> None:
        reset_type = body.get("ResetType") if isinstance(body, dict) else None
        if reset_type not in self.reset_types:
            raise RedfishError(
                400,
                f"ResetType {reset_type!r} is not one of {', '.join(self.reset_types)}.",
                "Base.1.8.ActionParameterValueNotInList",
            )
        boots = self.control.boots
        actions: dict[str, Callable[[], None]] = {
            "On": self.control.power_on,
            "ForceOff": self.control.power_off,
            "ForceRestart": self.control.reset,
            "PowerCycle": self.control.power_cycle,
            "Nmi": self.control.nmi,
        }
        try:
            actions[reset_type]()
        except NodeIsOff as exc:
            raise RedfishError(409, f"The system is off: no {exc}.", "Base.1.8.ActionNotSupported") from exc
        except Exception as exc:
            log.exception("Redfish BMC on port %d: %s failed", self.port, reset_type)
            raise RedfishError(500, f"{reset_type} failed: {exc}") from exc
        if self.control.boots > boots:
            self._boot_override_used()

    def _boot_override_used(self) -> None:
        """A firmware boot this BMC caused consumed a "Once" override."""
        with self.control.lock:
            once = self.boot_enabled == "Once"
        if once:
            self.control.set_boot_device("none")
            with self.control.lock:
                self.boot_enabled = "Disabled"

    # -- serving --------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Answer requests until `request_stop`, then release the socket."""
        self.control.set_serving(True)
        log.info("Redfish BMC serving on %s", self.url)
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self.server.server_close()
            self.control.set_serving(False)
            log.info("Redfish BMC on port %d stopped", self.port)

    def request_stop(self) -> None:
        """Make `serve_forever` return soon. Safe from a signal handler and from any thread."""
        # shutdown() waits for the loop to end: from a signal handler in the serving thread it never
        # would, so ask from another thread.
        threading.Thread(target=self.server.shutdown, name=f"redfish-stop-{self.port}", daemon=True).start()

    def serve_in_thread(self) -> threading.Thread:
        """Start `serve_forever` in a daemon thread; `stop` ends it."""
        if self._thread is not None:
            raise RuntimeError("Redfish BMC already serving")
        self._thread = threading.Thread(target=self.serve_forever, name=f"redfish-{self.port}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and release the socket; waits for the serving thread up to ``timeout``."""
        if self._thread is None:
            self.server.server_close()
            return
        self.server.shutdown()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"Redfish BMC on port {self.port} did not stop within {timeout} s")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or refused our certificate: not worth a traceback on stderr.
        log.debug("Redfish BMC: request from %s failed", client_address, exc_info=True)


def _collection(path: str, odata_type: str, name: str, ids: Sequence[str]) -> dict[str, Any]:
    return {
        "@odata.id": path,
        "@odata.type": odata_type,
        "Name": name,
        "Members": [{"@odata.id": f"{path}/{i}"} for i in ids],
        "Members@odata.count": len(ids),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rhaas-lab-redfish"

    def __init__(self, bmc: RedfishBMC, *args: Any) -> None:
        self.bmc = bmc
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # The request line and status only: never a header or a body (they hold credentials).
        log.debug("Redfish BMC on port %d: %s", self.bmc.port, format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body()
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            self._route(method, path, body)
        except RedfishError as exc:
            self._error(exc)
        except Exception as exc:  # a bug here must answer, not leave the client waiting
            log.exception("Redfish BMC on port %d: %s %s", self.bmc.port, method, self.path)
            self._error(RedfishError(500, f"internal error: {type(exc).__name__}"))

    def _route(self, method: str, path: str, body: Any) -> None:
        bmc = self.bmc
        if path in ("/redfish", ROOT) and method == "GET":
            if path == "/redfish":
                return self._answer(200, {"v1": f"{ROOT}/"})
            return self._answer(200, bmc.service_root())
        if path == SESSIONS and method == "POST":
            session_id, token = bmc.open_session(body)
            location = f"{SESSIONS}/{session_id}"
            return self._answer(201, bmc.session(session_id), {"X-Auth-Token": token, "Location": location})
        if not bmc.authenticated(self.headers):
            raise RedfishError(401, "Authentication required.", "Base.1.8.NoValidSession")
        routes: dict[tuple[str, str], Callable[[], Any]] = {
            ("GET", f"{ROOT}/SessionService"): bmc.session_service,
            ("GET", SESSIONS): bmc.session_collection,
            ("GET", f"{ROOT}/Systems"): lambda: _collection(
                f"{ROOT}/Systems",
                "#ComputerSystemCollection.ComputerSystemCollection",
                "Systems",
                [SYSTEM_ID],
            ),
            ("GET", SYSTEM): bmc.system,
            ("PATCH", SYSTEM): lambda: bmc.patch_system(body),
            ("POST", RESET_TARGET): lambda: bmc.reset(body),
        }
        if path.startswith(f"{SESSIONS}/"):
            session_id = path[len(SESSIONS) + 1 :]
            if method == "GET":
                return self._answer(200, bmc.session(session_id))
            if method == "DELETE":
                bmc.close_session(session_id)
                return self._answer(204)
        route = routes.get((method, path))
        if route is None:
            if any(p == path for _, p in routes):
                raise RedfishError(405, f"{method} is not allowed on {path}.", "Base.1.8.OperationNotAllowed")
            raise RedfishError(404, f"No resource at {path}.", "Base.1.8.ResourceMissingAtURI")
        answer = route()
        self._answer(200 if answer is not None else 204, answer)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise RedfishError(413, "Request body too large.")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RedfishError(400, "The body is not JSON.", "Base.1.8.MalformedJSON") from exc

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("OData-Version", "4.0")
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # the client asked (sushy always does): say so, or it may reuse it
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _error(self, exc: RedfishError) -> None:
        body = {
            "error": {
                "code": exc.code,
                "message": exc.message,
                "@Message.ExtendedInfo": [{"MessageId": exc.code, "Message": exc.message}],
            }
        }
        headers = {"WWW-Authenticate": 'Basic realm="Redfish"'} if exc.status == 401 else None
        self._answer(exc.status, body, headers)


#: Machine kinds the command line can drive, made from the parsed arguments.
MACHINES: dict[str, Callable[[argparse.Namespace], Machine]] = {
    "fake": lambda args: FakeMachine(),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rhaas.lab.redfish", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free one)")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", help=f"(default: ${PASSWORD_ENV}, which other users cannot read)")
    parser.add_argument("--state-file", required=True, type=Path)
    parser.add_argument("--machine", choices=sorted(MACHINES), default="fake")
    parser.add_argument("--cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--reset-types",
        default=",".join(RESET_TYPES),
        help=f"the reset types the system allows, comma-separated (default: {','.join(RESET_TYPES)})",
    )
    parser.add_argument("--no-sessions", action="store_true", help="refuse sessions: basic auth only")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    password = args.password or os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"give --password or set {PASSWORD_ENV}")
    if args.key is not None and args.cert is None:
        parser.error("--key needs --cert")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s redfish %(message)s"
    )
    try:
        bmc = RedfishBMC(
            MACHINES[args.machine](args),
            port=args.port,
            user=args.user,
            password=password,
            state_file=args.state_file,
            address=args.address,
            certfile=args.cert,
            keyfile=args.key,
            reset_types=[t for t in args.reset_types.split(",") if t],
            sessions=not args.no_sessions,
        )
    except ValueError as exc:
        parser.error(str(exc))
    serve_until_signalled(bmc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["RESET_TYPES", "RedfishBMC", "RedfishError", "main", "serve_until_signalled"]
