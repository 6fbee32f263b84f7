"""A virtual BMC for a lab node: real IPMI-over-LAN (RMCP+, what ``ipmitool -I lanplus`` speaks) on UDP.

`VirtualBMC` is a `pyghmi.ipmi.bmc.Bmc` that serves one node on ``127.0.0.1:<port>`` and drives a
`Machine`: power on/off/cycle/reset/status, the boot device, the diagnostic interrupt (NMI), and
Serial over LAN from the node's console log (output only, from activation on). It counts firmware
boots (every power-on from off, every reset and power cycle) and NMIs, and publishes them with the
power state in a JSON state file (`BMCState`) that tests, benchmarks and ``rhaas lab status`` read;
that part is shared with the lab's Redfish BMC (`rhaas.lab.machine.NodeControl`).
`FakeMachine` is an in-memory machine for tests; the lab's QEMU machine implements the same protocol
(power_on starts the QEMU process, power_off kills it, reset is QMP ``system_reset``, nmi is QMP
``inject-nmi``).

Run one from the command line (it stops cleanly on SIGTERM or SIGINT)::

    python -m rhaas.lab.vbmc --port 6230 --user admin --password secret --state-file n1.json \
        --machine fake --console-log n1.console

This module is lab equipment: nothing in the service imports it, and it knows nothing of rhaas's
database or API.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.constants as ipmi_constants
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from rhaas.lab.machine import (
    BOOT_DEVICES,
    BMCState,
    FakeMachine,
    Machine,
    NodeControl,
    NodeIsOff,
    serve_until_signalled,
)

log = logging.getLogger(__name__)

# IPMI "boot device selector" names, as pyghmi decodes them, and back.
_FROM_IPMI = {"network": "pxe", "hd": "disk", "default": "none"}
_TO_IPMI = {ours: theirs for theirs, ours in _FROM_IPMI.items()}

# IPMI completion codes (IPMI 2.0 table 5-2).
CC_OK = 0x00
CC_NOT_IN_PRESENT_STATE = 0xD5  # e.g. reset or NMI while the node is off
CC_UNSPECIFIED = 0xFF

# RMCP+ status codes (IPMI 2.0 table 13-15) and the only algorithms pyghmi's server implements
# (cipher suite 3): RAKP-HMAC-SHA1 authentication, HMAC-SHA1-96 integrity, AES-CBC-128 privacy.
_RMCP_BAD_AUTH_ALGORITHM = 0x04
_RMCP_BAD_INTEGRITY_ALGORITHM = 0x05
_RMCP_UNAUTHORIZED_NAME = 0x0D
_RMCP_BAD_CONFIDENTIALITY_ALGORITHM = 0x10
# (offset of the algorithm in an Open Session Request, the one we take, the status if another)
_SUITE3 = (
    (12, 1, _RMCP_BAD_AUTH_ALGORITHM),
    (20, 1, _RMCP_BAD_INTEGRITY_ALGORITHM),
    (28, 1, _RMCP_BAD_CONFIDENTIALITY_ALGORITHM),
)

# How often the BMC looks for new console output while an SOL client listens, and how much it reads.
_CONSOLE_POLL = 0.05
_CONSOLE_CHUNK = 4096


class _ServerSession(serversession.ServerSession):
    """pyghmi's server session, made to refuse what it cannot do instead of pretending.

    pyghmi's server always answers an RMCP+ open-session request with cipher suite 3, whatever the
    client proposed. pyghmi's own client proposes SHA-256 first and falls back to SHA-1 only if the
    BMC refuses, so against an unmodified pyghmi server it computes RAKP2 with the wrong hash and
    crashes. Refusing any other proposal (as real BMCs do) makes every client fall back to suite 3.
    Unknown user names get an RAKP2 error at once rather than silence (and a client timeout). A
    request sent again (same sequence number and bytes: the client missed our answer) is answered
    again, not executed again: a retried reset must not boot the node twice.
    """

    _last_request: tuple[int, int, int, bytes] | None = None
    _last_answer: tuple[list[int], int] | None = None

    def handle_client_request(self, request: dict[str, Any]) -> None:
        key = (self.seqlun, request["netfn"], request["command"], bytes(request["data"]))
        if key == self._last_request and self._last_answer is not None:
            log.debug("answering a retried request again: %s", key)
            super().send_ipmi_response(*self._last_answer)
            return
        self._last_request, self._last_answer = key, None
        super().handle_client_request(request)

    def send_ipmi_response(self, data: Sequence[int] = (), code: int = 0) -> None:
        self._last_answer = (list(data), code)
        super().send_ipmi_response(data=data, code=code)

    def create_open_session_response(self, request: bytearray) -> bytearray:
        # Open Session Request (IPMI 2.0 table 13-16): tag, privilege, 2 reserved, console session id,
        # then three 8-byte algorithm payloads whose algorithm sits at offsets 12, 20 and 28. A
        # shorter request, or a zero payload length, leaves the choice to the BMC: suite 3.
        for offset, wanted, refusal in _SUITE3:
            if len(request) > offset and request[offset - 1] == 8 and request[offset] & 0x3F != wanted:
                log.debug("refusing RMCP+ algorithm %d at offset %d", request[offset], offset)
                return bytearray([request[0], refusal, 0, 0]) + bytes(request[4:8])
        response: bytearray = super().create_open_session_response(request)
        return response

    def _got_rakp1(self, data: bytearray) -> None:
        name_length = data[27] if len(data) > 27 else 0
        name = bytes(data[28 : 28 + name_length]).decode("utf-8", "replace")
        if name_length and self.authdata.get(name) is None:
            self.send_payload(
                bytearray([data[0], _RMCP_UNAUTHORIZED_NAME, 0, 0]) + bytes(self.clientsessionid),
                ipmi_constants.payload_types["rakp2"],
                retry=False,
            )
            return
        super()._got_rakp1(data)

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        # pyghmi hands a queued packet whose session has meanwhile closed to the session's own
        # sessionless_data, which only its Bmc has (an AttributeError that stopped the whole BMC
        # when it caught up with a backlog after a stall).
        self.bmc.sessionless_data(data, sockaddr)

    def close_server_session(self) -> None:
        # pyghmi keeps every server session forever; forget a closed one.
        handlers = ipmisession.Session.bmc_handlers.get(self.sockaddr, {})
        if handlers.get(self.bmc.port) is self:
            del handlers[self.bmc.port]
            if not handlers:
                ipmisession.Session.bmc_handlers.pop(self.sockaddr, None)


class VirtualBMC(pyghmi_bmc.Bmc):
    """A BMC serving IPMI on UDP ``address:port`` for one `Machine`.

    Construction binds the socket (OSError if the port is taken). `serve_forever` answers requests
    until `request_stop`; `serve_in_thread` and `stop` do the same from a test. pyghmi's I/O machinery
    is process-global: run one BMC per process in the lab (the command line does), and do not run a
    pyghmi IPMI client in the same process as a BMC.
    """

    activated: bool  # pyghmi's: SOL is active
    sol: Any  # pyghmi's ServerConsole while SOL is active

    def __init__(
        self,
        machine: Machine,
        *,
        port: int,
        user: str,
        password: str,
        state_file: str | os.PathLike[str],
        address: str = "127.0.0.1",
        console_log: str | os.PathLike[str] | None = None,
    ) -> None:
        self.machine = machine
        self.console_log = Path(console_log) if console_log is not None else None
        if self.console_log is not None:
            self.iohandler = self._console_input  # pyghmi offers SOL only with an input handler
        self._console_position = 0
        self._sol_session: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # pyghmi wakes its I/O thread through its first socket; see that this is pyghmi's own, so
        # that stop() can take ours out of the loop and close it.
        if not ipmisession.iosockets:
            ipmisession.Session._assignsocket()
        super().__init__({user: password}, port=port, address=address)
        self.port = self.serversocket.getsockname()[1]  # the real one when port=0
        # Counting boots and NMIs, and the state file, are every lab BMC's: see rhaas.lab.machine.
        self.control = NodeControl(machine, state_file, port=self.port, label="virtual BMC")

    @property
    def state_file(self) -> Path:
        return self.control.state_file

    @property
    def boots(self) -> int:
        return self.control.boots

    @property
    def nmis(self) -> int:
        return self.control.nmis

    @property
    def guest_resets(self) -> int:
        return self.control.guest_resets

    # -- pyghmi's hooks: return an IPMI completion code ---------------------------------------------

    def get_power_state(self) -> str:
        return "on" if self.machine.is_on() else "off"

    def power_on(self) -> int:
        return self._act("power on", self.control.power_on)

    def power_off(self) -> int:
        return self._act("power off", self.control.power_off)

    def power_cycle(self) -> int:
        return self._act("power cycle", self.control.power_cycle)

    def power_reset(self) -> int:
        return self._act("reset", self.control.reset)

    def pulse_diag(self) -> int:
        return self._act("NMI", self.control.nmi)

    def get_boot_device(self) -> str:
        return _TO_IPMI.get(self.machine.get_boot_device(), "default")

    def set_boot_device(self, bootdevice: str) -> None:
        device = _FROM_IPMI.get(bootdevice)
        if device is None:  # cdrom, bios, floppy...: pyghmi answers "invalid command"
            raise NotImplementedError(f"boot device {bootdevice!r}")
        self._act(f"boot device {device}", lambda: self.control.set_boot_device(device))

    def is_active(self) -> bool:
        return True  # the serial console can be watched whether the node is on or off

    def activate_payload(self, request: dict[str, Any], session: Any) -> None:
        # SOL shows console output from now on.
        self._console_position = self._console_size()
        self._sol_session = session
        super().activate_payload(request, session)
        if not self.activated and self.sol is not None:  # deactivated while pyghmi set it up
            self.sol.close()
            self.sol = None

    def deactivate_payload(self, request: dict[str, Any], session: Any) -> None:
        if self.activated and self.sol is None:
            # pyghmi answers an activation before it builds its console, and builds it while
            # handling more packets: a quick client can deactivate in between.
            self.activated = False
            session.send_ipmi_response()
            return
        super().deactivate_payload(request, session)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        if request["netfn"] == 6 and request["command"] == 0x4B:  # get payload instance info
            # Which session owns SOL: pyghmi's console client asks this as its keepalive, and
            # drops the console if the answer is an error.
            # (pyghmi builds self.sol after it answers the activation: the session is known before.)
            owner = bytes(self._sol_session.managedsessionid) if self.activated else bytes(4)
            session.send_ipmi_response(data=list(owner) + [0] * 8)
            return
        super().handle_raw_request(request, session)

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        packet = bytearray(data)
        # An RMCP+ Open Session Request (payload type 0x10) starts a session: use ours.
        if len(packet) >= 22 and packet[0] == 6 and packet[2:4] == b"\xff\x07" and packet[4:6] == b"\x06\x10":
            _ServerSession(
                self.authdata, self.kg, sockaddr, self.serversocket, packet[16:], self.uuid, bmc=self
            )
            return
        super().sessionless_data(data, sockaddr)

    # -- the node -----------------------------------------------------------------------------------

    def _act(self, what: str, action: Callable[[], None]) -> int:
        """Run one of the node's actions: the IPMI completion code of its outcome."""
        try:
            action()
        except NodeIsOff:
            return CC_NOT_IN_PRESENT_STATE
        except Exception:
            log.exception("virtual BMC on port %d: %s failed", self.port, what)
            return CC_UNSPECIFIED
        return CC_OK

    def state(self) -> BMCState:
        return self.control.state()

    # -- serial over LAN ----------------------------------------------------------------------------

    def _console_size(self) -> int:
        try:
            return self.console_log.stat().st_size if self.console_log is not None else 0
        except FileNotFoundError:
            return 0

    def _console_input(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):  # pyghmi reports a lost SOL client this way: free the console
            log.info("virtual BMC on port %d: SOL client gone (%s)", self.port, data)
            self.activated = False
            self.sol = None
        # Keystrokes are dropped: the lab's consoles are read-only.

    def _feed_console(self) -> None:
        """Tail the console log into the active SOL session, if any, until the BMC stops."""
        assert self.console_log is not None
        while not self._stopping.wait(_CONSOLE_POLL):
            sol = self.sol
            if sol is None or sol.broken:
                continue
            size = self._console_size()
            if size < self._console_position:  # the log was truncated or replaced
                self._console_position = 0
            if size == self._console_position:
                continue
            with open(self.console_log, "rb") as console:
                console.seek(self._console_position)
                chunk = console.read(_CONSOLE_CHUNK)
            self._console_position += len(chunk)
            sol.send_data(chunk)  # returns once the client acknowledged it (or gave up)

    # -- serving ------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Answer IPMI requests until `request_stop`, then release the socket."""
        self.control.set_serving(True)
        log.info("virtual BMC serving on %s", self.serversocket.getsockname())
        feeder = None
        if self.console_log is not None:
            feeder = threading.Thread(target=self._feed_console, name=f"vbmc-sol-{self.port}", daemon=True)
            feeder.start()
        try:
            while not self._stopping.is_set():
                # Returns as soon as a packet arrives (request_stop sends one); the timeout only
                # bounds how long a lost wake-up could delay stopping.
                try:
                    ipmisession.Session.wait_for_rsp(timeout=1.0)
                except Exception:  # one bad packet or a pyghmi bug must not take the BMC down
                    log.exception("virtual BMC on port %d: failed to handle a packet", self.port)
        finally:
            self._stopping.set()
            if feeder is not None:
                feeder.join()
            self._release_socket()
            self.control.set_serving(False)
            log.info("virtual BMC on port %d stopped", self.port)

    def request_stop(self) -> None:
        """Make `serve_forever` return soon. Safe from a signal handler and from any thread."""
        self._stopping.set()
        # Wake the serving loop with a packet to ourselves. pyghmi wakes its waiters only for
        # packets of 4 bytes or more; the BMC drops this one as not RMCP.
        with contextlib.suppress(OSError):  # already closed
            self.serversocket.sendto(bytes(4), self.serversocket.getsockname())

    def serve_in_thread(self) -> threading.Thread:
        """Start `serve_forever` in a daemon thread; `stop` ends it."""
        if self._thread is not None:
            raise RuntimeError("virtual BMC already serving")
        self._thread = threading.Thread(target=self.serve_forever, name=f"vbmc-{self.port}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and release the socket; waits for the serving thread up to ``timeout``."""
        self.request_stop()
        if self._thread is None:
            self._release_socket()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"virtual BMC on port {self.port} did not stop within {timeout} s")

    def _release_socket(self) -> None:
        sock = self.serversocket
        if sock.fileno() < 0:
            return
        handlers = ipmisession.Session.bmc_handlers
        handlers.pop(sock, None)
        for peer, sessions in list(handlers.items()):
            if isinstance(sessions, dict) and getattr(sessions.get(self.port), "bmc", None) is self:
                del sessions[self.port]
                if not sessions:
                    handlers.pop(peer, None)
        if sock in ipmisession.iosockets:
            ipmisession.iosockets.remove(sock)
            # pyghmi's I/O thread may be inside select() on this socket. Wait for one more turn of
            # its loop (it wakes on our queued wait), after which it only selects on the others.
            ipmisession._io_wait(0.01)
        sock.close()


#: Machine kinds the command line can drive, made from the parsed arguments.
MACHINES: dict[str, Callable[[argparse.Namespace], Machine]] = {
    "fake": lambda args: FakeMachine(console_log=args.console_log),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rhaas.lab.vbmc", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="UDP port (0: any free one)")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--state-file", required=True, type=Path)
    parser.add_argument("--machine", choices=sorted(MACHINES), default="fake")
    parser.add_argument("--console-log", type=Path, help="serial console output to serve over SOL")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s vbmc %(message)s"
    )
    bmc = VirtualBMC(
        MACHINES[args.machine](args),
        port=args.port,
        user=args.user,
        password=args.password,
        state_file=args.state_file,
        address=args.address,
        console_log=args.console_log,
    )
    serve_until_signalled(bmc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "BOOT_DEVICES",
    "BMCState",
    "FakeMachine",
    "Machine",
    "VirtualBMC",
    "main",
    "serve_until_signalled",
]
