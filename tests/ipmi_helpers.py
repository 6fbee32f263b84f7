"""A virtual BMC as its own process for the IPMI tests, and what they share about it.

The BMC runs as ``python -m rhaas.lab.vbmc`` with a fake machine (it counts power-ons, resets and NMIs in
its state file instead of driving QEMU), on a free UDP port of 127.0.0.1, as in the lab: pyghmi's I/O
state is process-global, and a BMC and a client sharing it would not be a faithful test of either.
The ``bmc`` fixture (conftest.py) starts one per test; this module starts nothing by itself.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rhaas.drivers.obm.base import OBMSettings
from rhaas.lab.polling import wait_for
from rhaas.lab.vbmc import BMCState

USER, PASSWORD = "admin", "s3cret"
IPMITOOL = shutil.which("ipmitool")


class BmcProcess:
    """``python -m rhaas.lab.vbmc`` with a fake machine, on a free port of 127.0.0.1."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.console_log = state_file.with_suffix(".console")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "rhaas.lab.vbmc", "--port", str(self.port), "--user", USER]
        cmd += ["--password", PASSWORD, "--state-file", str(self.state_file), "--machine", "fake"]
        cmd += ["--console-log", str(self.console_log)]
        self.state_file.unlink(missing_ok=True)
        proc = self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def serving() -> BMCState | None:
            if proc.poll() is not None:
                raise AssertionError(f"vbmc exited with {proc.returncode}")
            try:
                state = BMCState.read(self.state_file)
            except (OSError, ValueError):
                return None
            return state if state.serving and state.pid == proc.pid else None

        state = wait_for("vbmc serving", serving, 20, every=0.02)
        assert state is not None
        self.port = state.port

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def state(self) -> BMCState:
        return BMCState.read(self.state_file)

    def settings(self, **overrides: object) -> OBMSettings:
        values: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "user": USER}
        values["password"] = PASSWORD
        return OBMSettings.model_validate(values | overrides)

    def ipmitool(self, *args: str) -> str:
        if IPMITOOL is None:
            pytest.skip("ipmitool is not installed (Debian package ipmitool)")
        cmd = [IPMITOOL, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", USER, "-P", PASSWORD]
        result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout


def wait_for_driver_threads(address: str, timeout: float = 60.0) -> None:
    """A call that timed out leaves its helper thread until pyghmi gives up: wait for it to end."""
    name = f"rhaas-ipmi {address}"
    wait_for(
        f"IPMI helper threads for {address} to end",
        lambda: not any(t.name == name for t in threading.enumerate()),
        timeout,
        every=0.05,
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
