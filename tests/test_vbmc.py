"""The lab's virtual BMC, driven by ipmitool: an independent IPMI client, so that the BMC is checked
against what real tools speak and not only against our own driver."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyghmi.ipmi.private.session as ipmisession
import pytest

from rhaas.lab.polling import wait_for
from rhaas.lab.vbmc import BMCState, FakeMachine, VirtualBMC, _ServerSession

pytestmark = pytest.mark.ipmi

USER, PASSWORD = "admin", "s3cret"
IPMITOOL = shutil.which("ipmitool")


class Bmc:
    """A virtual BMC serving in this process, with its machine and a way to call it with ipmitool."""

    def __init__(self, tmp_path: Path) -> None:
        self.console_log = tmp_path / "console.log"
        self.machine = FakeMachine(console_log=self.console_log)
        self.state_file = tmp_path / "bmc.json"
        self.vbmc = VirtualBMC(
            self.machine,
            port=0,
            user=USER,
            password=PASSWORD,
            state_file=self.state_file,
            console_log=self.console_log,
        )
        self.port = self.vbmc.port

    def ipmitool(
        self, *args: str, user: str = USER, password: str = PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        if IPMITOOL is None:
            pytest.skip("ipmitool is not installed (Debian package ipmitool)")
        cmd = [IPMITOOL, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", user, "-P", password]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)

    def ok(self, *args: str) -> str:
        result = self.ipmitool(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def state(self) -> BMCState:
        return BMCState.read(self.state_file)


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    if IPMITOOL is None:
        print("skipping: ipmitool is not installed")
        pytest.skip("ipmitool is not installed (Debian package ipmitool)")
    b = Bmc(tmp_path)
    b.vbmc.serve_in_thread()
    try:
        yield b
    finally:
        b.vbmc.stop()


def test_power_on_off_status(bmc):
    assert bmc.ok("chassis", "power", "status").strip() == "Chassis Power is off"
    assert bmc.state().power == "off" and bmc.state().serving

    bmc.ok("chassis", "power", "on")
    assert bmc.machine.on
    assert bmc.ok("chassis", "power", "status").strip() == "Chassis Power is on"
    state = bmc.state()
    assert (state.power, state.boots, state.nmis) == ("on", 1, 0)

    bmc.ok("chassis", "power", "on")  # already on: no second boot
    assert bmc.state().boots == 1

    bmc.ok("chassis", "power", "off")
    assert not bmc.machine.on
    assert bmc.ok("chassis", "power", "status").strip() == "Chassis Power is off"
    assert (bmc.state().power, bmc.state().boots) == ("off", 1)
    assert bmc.machine.events == ["power_on", "power_off"]


def test_cycle_and_reset_count_firmware_boots(bmc):
    bmc.ok("chassis", "power", "on")
    bmc.ok("chassis", "power", "cycle")
    assert bmc.machine.on and bmc.state().boots == 2
    bmc.ok("chassis", "power", "reset")
    assert bmc.machine.on and bmc.state().boots == 3
    assert bmc.machine.events == ["power_on", "power_off", "power_on", "reset"]


def test_diag_interrupt_is_an_nmi(bmc):
    bmc.ok("chassis", "power", "on")
    bmc.ok("chassis", "power", "diag")
    bmc.ok("chassis", "power", "diag")
    assert bmc.machine.events.count("nmi") == 2
    state = bmc.state()
    assert (state.nmis, state.boots, state.power) == (2, 1, "on")


def test_reset_cycle_and_nmi_are_refused_while_off(bmc):
    for action in ("reset", "cycle", "diag"):
        result = bmc.ipmitool("chassis", "power", action)
        assert result.returncode != 0, action
        assert "not supported in present state" in result.stderr, result.stderr
    assert bmc.machine.events == []
    assert (bmc.state().boots, bmc.state().nmis) == (0, 0)


def test_bootdev(bmc):
    bmc.ok("chassis", "bootdev", "pxe")
    assert bmc.machine.boot_device == "pxe" and bmc.state().boot_device == "pxe"
    assert "Force PXE" in bmc.ok("chassis", "bootparam", "get", "5")
    bmc.ok("chassis", "bootdev", "disk")
    assert bmc.machine.boot_device == "disk" and bmc.state().boot_device == "disk"
    assert "Force Boot from default Hard-Drive" in bmc.ok("chassis", "bootparam", "get", "5")
    bmc.ok("chassis", "bootdev", "none")
    assert bmc.machine.boot_device == "none" and bmc.state().boot_device == "none"
    # A device the lab's machines do not have is refused (ipmitool still exits 0), nothing changes.
    assert "failed: Invalid command" in bmc.ipmitool("chassis", "bootdev", "floppy").stderr
    assert bmc.machine.boot_device == "none"


def test_wrong_password_and_unknown_user_are_refused(bmc):
    for user, password in ((USER, "wrong"), ("nobody", PASSWORD)):
        started = time.monotonic()
        result = bmc.ipmitool("chassis", "power", "on", user=user, password=password)
        assert result.returncode != 0, (user, result.stdout)
        assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr, result.stderr
        assert time.monotonic() - started < 5, "refusal should be immediate, not a timeout"
    assert not bmc.machine.on and bmc.machine.events == []


def test_sha256_proposal_is_refused_sha1_accepted(bmc):
    """Cipher suite 17 (SHA-256) must be refused outright, which is what makes pyghmi's client fall
    back to suite 3 (SHA-1); the BMC does not implement SHA-256."""
    refused = bmc.ipmitool("-C", "17", "chassis", "power", "status")
    assert refused.returncode != 0
    assert "invalid authentication algorithm" in refused.stderr, refused.stderr
    accepted = bmc.ipmitool("-C", "3", "chassis", "power", "status")
    assert accepted.returncode == 0, accepted.stderr


def test_machine_failure_is_an_ipmi_error(bmc):
    bmc.machine.fail = True
    result = bmc.ipmitool("chassis", "power", "on")
    assert result.returncode != 0
    assert not bmc.machine.on and bmc.state().boots == 0


def test_state_file_is_replaced_atomically(bmc):
    bmc.ok("chassis", "power", "on")
    # Temporary files are renamed over the state file, never left behind.
    assert [p.name for p in bmc.state_file.parent.iterdir() if "bmc.json" in p.name] == ["bmc.json"]
    assert bmc.state().pid == os.getpid() and bmc.state().port == bmc.port


def test_a_retried_request_is_answered_again_not_executed_again(bmc):
    """A client that missed our answer sends the same request again (same sequence number): a
    retried reset must not boot the node twice. A UDP loss is hard to provoke with ipmitool, so
    this feeds requests to a session directly."""
    bmc.ok("chassis", "power", "on")
    session = object.__new__(_ServerSession)
    sent: list[tuple[list[int], int]] = []
    session._send_ipmi_net_payload = lambda data=(), code=0, **kw: sent.append((list(data), code))
    session.bmc = bmc.vbmc
    reset = {"netfn": 0, "command": 2, "data": bytearray([3])}
    session.seqlun = 7
    session.handle_client_request(dict(reset))
    session.handle_client_request(dict(reset))  # the retransmission
    assert bmc.machine.events == ["power_on", "reset"] and bmc.state().boots == 2
    assert sent == [([], 0), ([], 0)]
    session.seqlun = 8  # a new request
    session.handle_client_request(dict(reset))
    assert bmc.machine.events == ["power_on", "reset", "reset"] and bmc.state().boots == 3


def test_serial_over_lan(bmc):
    """ipmitool's SOL client sees what the node writes to its console from activation on."""
    bmc.ok("chassis", "power", "on")  # written before activation: not shown
    if IPMITOOL is None:
        pytest.skip("ipmitool is not installed (Debian package ipmitool)")
    cmd = [IPMITOOL, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(bmc.port), "-U", USER, "-P", PASSWORD]
    # ipmitool wants a terminal for SOL (and buffers its output without one).
    terminal, ipmitool_side = pty.openpty()
    proc = subprocess.Popen(
        cmd + ["sol", "activate"], stdin=ipmitool_side, stdout=ipmitool_side, stderr=ipmitool_side
    )
    os.close(ipmitool_side)
    try:
        output = read_until(terminal, b"SOL Session operational")
        bmc.ok("chassis", "power", "reset")
        bmc.ok("chassis", "power", "diag")
        output += read_until(terminal, b"NMI received")
        assert b"reset, booting from none" in output and b"power on" not in output
        os.write(terminal, b"\r~.")  # ipmitool's escape: deactivate SOL and exit
        assert proc.wait(timeout=10) == 0
        assert bmc.vbmc.sol is None and not bmc.vbmc.activated  # free for the next client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} from ipmitool within {timeout} s: {output!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side of the terminal is closed
                chunk = b""
            assert chunk, f"ipmitool exited before {marker!r}: {output!r}"
            output += chunk
    return output


def test_stop_releases_the_port(tmp_path):
    b = Bmc(tmp_path)
    sock = b.vbmc.serversocket
    thread = b.vbmc.serve_in_thread()
    b.vbmc.stop()
    assert not thread.is_alive()
    assert sock.fileno() == -1 and sock not in ipmisession.iosockets
    assert not BMCState.read(b.state_file).serving
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", b.port))  # free again


def test_command_line_serves_and_stops_on_sigterm(tmp_path):
    state_file = tmp_path / "cli.json"
    cmd = [sys.executable, "-m", "rhaas.lab.vbmc", "--port", "0", "--user", USER, "--password", PASSWORD]
    proc = subprocess.Popen(cmd + ["--state-file", str(state_file)], stderr=subprocess.DEVNULL)
    try:
        state = wait_serving(state_file, proc)
        assert state.pid == proc.pid and state.power == "off"
        if IPMITOOL is not None:
            base = [IPMITOOL, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(state.port)]
            base += ["-U", USER, "-P", PASSWORD]
            subprocess.run(base + ["chassis", "power", "on"], check=True, capture_output=True, timeout=30)
            assert BMCState.read(state_file).boots == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not BMCState.read(state_file).serving
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_serving(state_file: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> BMCState:
    """Poll the state file of a command-line BMC until it says it serves."""

    def serving() -> BMCState | None:
        if proc.poll() is not None:
            raise AssertionError(f"vbmc exited with {proc.returncode}")
        try:
            state = BMCState.read(state_file)
        except (OSError, ValueError):
            return None
        return state if state.serving else None

    return wait_for("vbmc serving", serving, timeout, every=0.02)


def test_a_restarted_bmc_carries_on_counting(tmp_path):
    from rhaas.lab.vbmc import FakeMachine, VirtualBMC

    state = tmp_path / "state.json"
    previous = {"port": 1, "pid": 1, "serving": False, "power": "off", "boot_device": "disk"}
    state.write_text(json.dumps({**previous, "boots": 7, "nmis": 2, "updated": 0.0}))
    bmc = VirtualBMC(FakeMachine(), port=0, user="u", password="p", state_file=state)
    try:
        assert (bmc.boots, bmc.nmis) == (7, 2)
    finally:
        bmc.stop()
