"""The lab Redfish BMC as its own process for the Redfish tests, and a self-signed certificate for it.

The BMC runs as ``python -m rhaas.lab.redfish`` with a fake machine on a free TCP port of 127.0.0.1, as in
the lab; the tests read what it did to the machine from its state file, the same file the IPMI BMC
writes. This module starts nothing by itself: the test module's fixtures do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from rhaas.drivers.obm.redfish import RedfishSettings
from rhaas.lab.machine import BMCState
from rhaas.lab.polling import wait_for
from rhaas.lab.redfish import PASSWORD_ENV

USER, PASSWORD = "admin", "r3dfish-s3cret"


class RedfishProcess:
    """``python -m rhaas.lab.redfish`` with a fake machine, on a free port of 127.0.0.1."""

    def __init__(
        self,
        state_file: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        reset_types: Sequence[str] | None = None,
        sessions: bool = True,
    ) -> None:
        self.state_file = state_file
        self.log_path = state_file.with_suffix(".log")
        self.tls, self.reset_types, self.sessions = tls, reset_types, sessions
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, *, fresh: bool = True) -> RedfishProcess:
        """Start the BMC; ``fresh``: from no state file (counts from 0), else carrying on from it."""
        cmd = [sys.executable, "-m", "rhaas.lab.redfish", "--port", str(self.port), "--user", USER]
        cmd += ["--state-file", str(self.state_file), "--machine", "fake", "--verbose"]
        if self.tls:
            cmd += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        if self.reset_types is not None:
            cmd += ["--reset-types", ",".join(self.reset_types)]
        if not self.sessions:
            cmd.append("--no-sessions")
        if fresh:
            self.state_file.unlink(missing_ok=True)
        env = {**os.environ, PASSWORD_ENV: PASSWORD}
        with open(self.log_path, "ab") as log:
            proc = self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)

        def serving() -> BMCState | None:
            if proc.poll() is not None:
                raise AssertionError(
                    f"redfish BMC exited with {proc.returncode}: {self.log_path.read_text()}"
                )
            try:
                state = BMCState.read(self.state_file)
            except (OSError, ValueError):
                return None
            return state if state.serving and state.pid == proc.pid else None

        state = wait_for("the Redfish BMC serving", serving, 20, every=0.02)
        assert state is not None
        self.port = state.port
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; its exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def state(self) -> BMCState:
        return BMCState.read(self.state_file)

    def settings(self, **overrides: Any) -> RedfishSettings:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": USER, "password": PASSWORD}
        values["scheme"] = self.scheme
        return RedfishSettings.model_validate(values | overrides)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A request of our own, basic auth, not through the driver (certificate not checked)."""
        kwargs.setdefault("auth", (USER, PASSWORD))
        return httpx.get(self.url + path, verify=False, timeout=10, **kwargs)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, self-signed, made with the openssl command."""
    cert, key = directory / "bmc.pem", directory / "bmc.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
