"""Real rhaas servers as subprocesses on loopback: for the lab, the demo, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free now, for TCP (or ``kind``: ``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``rhaas-admin serve`` in a subprocess; ``stop()`` ends it by PID (also on test failure).

    ``agent_port`` and ``boot_port`` are free ports on 127.0.0.1 for the FPBL agents' TLS listener and the
    network boot's: with ``agent=True`` the server is started with ``--agent-listen`` and
    ``--boot-listen`` on them; otherwise a settings file may name them (``[provisioning] agent_listen =
    server.agent_listen``). The agents' key is kept beside the log (``agent_tls_key``; `pin`)."""

    def __init__(
        self,
        db_url: str,
        log: Path,
        *args: str,
        admin: tuple[str, str] = ("admin", "adminpw"),
        env: dict[str, str] | None = None,
        agent: bool = False,
    ) -> None:
        self.db_url, self.log_path, self.args, self.admin = db_url, log, args, admin
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agent = agent
        ports = {self.port}
        while len(ports) < 3:  # the kernel may hand the same free port out twice
            ports.add(free_port())
        self.agent_port, self.boot_port = sorted(ports - {self.port})
        self.agent_listen = f"127.0.0.1:{self.agent_port}"
        self.agent_url = f"https://{self.agent_listen}"
        self.boot_listen = f"127.0.0.1:{self.boot_port}"
        self.boot_url = f"http://{self.boot_listen}"
        self.agent_tls_key = log.with_name(log.stem + "-agent-tls.pem")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        """Start (or restart, on the same port and database) and wait until it answers."""
        # Imported here: the CLI imports this module (for `rhaas demo`), and every command would pay for
        # SQLAlchemy at start-up.
        from rhaas.core.users import bootstrap_admin
        from rhaas.db.session import make_engine, make_sessionmaker, upgrade

        upgrade(self.db_url)
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as db:
            bootstrap_admin(db, *self.admin)
            db.commit()
        engine.dispose()
        cmd = [
            sys.executable,
            "-m",
            "rhaas.admin",
            "serve",
            "--port",
            str(self.port),
            "--database",
            self.db_url,
        ]
        if self.agent:
            cmd += ["--agent-listen", self.agent_listen, "--boot-listen", self.boot_listen]
        cmd += ["--agent-tls-key", str(self.agent_tls_key)]
        if "--image-store" not in self.args:  # not the default, which is the current directory
            cmd += ["--image-store", str(self.log_path.with_name(self.log_path.stem + "-images"))]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*cmd, *self.args], stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            try:
                httpx.get(self.url + "/openapi.json", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server on port {self.port} did not answer within {timeout} s")

    @property
    def pin(self) -> str:
        """The SHA-256 of the agents' listener's certificate (made at the first start with provisioning)."""
        from rhaas.provisioning.agenttls import pin_of

        return pin_of(self.agent_tls_key)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def client(self, user: str | None = None, password: str | None = None) -> httpx.Client:
        auth = (user, password or "") if user else None
        return httpx.Client(base_url=self.url + "/v0", auth=auth, timeout=30)
