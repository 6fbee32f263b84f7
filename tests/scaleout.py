"""A scale-out cluster on one PostgreSQL database, for tests/test_scale_out.py and bench/scale.py.

API servers (``rhaas-admin serve --no-worker``) and networking workers (``rhaas-admin serve-networks``)
run as separate OS processes on loopback. The mock switch keeps its ports in a state file shared by all
of them and journals every port change it makes (with the process id), so a checker can tell how often
each change really reached the switch. Everything started here is ended by PID in ``close()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from rhaas.lab.servers import Server

USER, PASSWORD, PROJECT = "tenant", "tenantpw", "scale"
NATIVE = "vlan/native"


def pg_reason(admin_url: str) -> str | None:
    """None if PostgreSQL answers at ``admin_url``, else why not."""
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {admin_url} does not answer: {exc}"


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database beside ``admin_url``'s, dropped afterwards."""
    name = f"rhaas_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = httpx.URL(admin_url.replace("postgresql://", "http://", 1))
    url = str(base.copy_with(path="/" + name)).replace("http://", "postgresql://", 1)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Worker:
    """``rhaas-admin serve-networks`` in its own process."""

    def __init__(self, db_url: str, config: Path, log: Path) -> None:
        self.db_url, self.config, self.log_path = db_url, config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Worker:
        self._log = self.log_path.open("ab")
        start_at = self.log_path.stat().st_size
        cmd = [sys.executable, "-m", "rhaas.admin", "serve-networks", "--database", self.db_url]
        self.proc = subprocess.Popen(
            [*cmd, "--config", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while b"networking worker" not in self.log_path.read_bytes()[start_at:]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not start within {timeout} s")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


@dataclass
class Cluster:
    """API servers and workers on one database, a mock switch ``sw0`` with a shared state file."""

    db_url: str
    workdir: Path
    switch_delay: float = 0.0
    worker_threads: int = 6
    lease_seconds: float = 5.0
    servers: list[Server] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_file = self.workdir / "switch-state.json"
        self.journal = self.workdir / "switch-journal.jsonl"
        self.config = self.workdir / "worker.toml"
        self.config.write_text(
            f"[worker]\nthreads = {self.worker_threads}\npoll_interval = 0.05\n"
            f"lease_seconds = {self.lease_seconds}\n"
        )
        self.vlans: dict[str, str] = {}  # network name → VLAN

    # -- processes ----------------------------------------------------------------------------------
    def start_servers(self, count: int) -> None:
        for _ in range(count):
            log = self.workdir / f"server{len(self.servers)}.log"
            server = Server(self.db_url, log, "--no-worker", "--vlans", "100-999")
            self.servers.append(server)  # before start: close() stops it even if start fails
            server.start()

    def start_workers(self, count: int) -> None:
        starting = []
        for _ in range(count):
            worker = Worker(self.db_url, self.config, self.workdir / f"worker{len(self.workers)}.log")
            self.workers.append(worker)
            starting.append(worker)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda w: w.start(), starting))

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def close(self) -> None:
        procs: list[Worker | Server] = [*self.workers, *self.servers]
        for proc in procs:
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {proc}: {exc}", file=sys.stderr)

    def live_urls(self) -> list[str]:
        return [s.url for s in self.servers if s.proc is not None and s.proc.poll() is None]

    # -- setup --------------------------------------------------------------------------------------
    def populate(self, nodes: int, networks: list[str], threads: int = 12) -> float:
        """Register ``nodes`` nodes, each with eth0 on its own port of sw0, give them all to the
        project, and create the project's ``networks``. Returns the seconds registration took."""
        started = time.perf_counter()
        urls = self.live_urls()
        with httpx.Client(base_url=urls[0] + "/v0", auth=("admin", "adminpw"), timeout=60) as admin:
            _check(admin.put(f"/project/{PROJECT}"))
            _check(admin.put(f"/auth/basic/user/{USER}", json={"password": PASSWORD}))
            _check(admin.post(f"/auth/basic/user/{USER}/add_project", json={"project": PROJECT}))
            settings = {"type": "mock", "state_file": str(self.state_file), "journal_file": str(self.journal)}
            if self.switch_delay:
                settings["delay"] = self.switch_delay  # type: ignore[assignment]
            _check(admin.put("/switch/sw0", json=settings))

        def register(chunk: range) -> None:
            url = urls[chunk.start % len(urls)]
            with httpx.Client(base_url=url + "/v0", auth=("admin", "adminpw"), timeout=60) as c:
                for i in chunk:
                    obm = {"type": "mock", "host": f"bmc{i}", "user": "u", "password": "p"}
                    _check(c.put(f"/node/{node_name(i)}", json={"obm": obm}))
                    mac = f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"
                    _check(c.put(f"/node/{node_name(i)}/nic/eth0", json={"macaddr": mac}))
                    _check(c.put(f"/switch/sw0/port/{port_name(i)}"))
                    nic = {"node": node_name(i), "nic": "eth0"}
                    _check(c.post(f"/switch/sw0/port/{port_name(i)}/connect_nic", json=nic))

        step = max(1, nodes // threads)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(register, [range(a, min(a + step, nodes)) for a in range(0, nodes, step)]))
        with httpx.Client(base_url=urls[0] + "/v0", auth=(USER, PASSWORD), timeout=60) as tenant:
            claimed = _check(tenant.post(f"/project/{PROJECT}/connect_nodes", json={"count": nodes})).json()
            assert len(claimed) == nodes, claimed
            for net in networks:
                body = {"owner": PROJECT, "access": PROJECT, "net_id": ""}
                _check(tenant.put(f"/network/{net}", json=body))
                channels = _check(tenant.get(f"/network/{net}")).json()["channels"]
                self.vlans[net] = next(ch for ch in channels if ch != NATIVE).split("/", 1)[1]
        return time.perf_counter() - started

    # -- reading the truth ----------------------------------------------------------------------------
    def switch_ports(self) -> dict[str, dict[str, Any]]:
        text = self.state_file.read_text() if self.state_file.exists() else ""
        return json.loads(text).get("sw0", {}) if text else {}

    def journal_lines(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]


def node_name(i: int) -> str:
    return f"node{i:04d}"


def port_name(i: int) -> str:
    return f"gi1/0/{i}"


def _check(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in (codes or (200,)):
        raise AssertionError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response


@dataclass(frozen=True)
class Step:
    """One networking action a client asks for: connect ``network`` on ``channel``, or detach it."""

    verb: str  # "connect_network" | "detach_network"
    network: str
    channel: str | None = None

    def body(self) -> dict[str, str]:
        if self.verb == "detach_network" or self.channel is None:
            return {"network": self.network}
        return {"network": self.network, "channel": self.channel}


class Client:
    """A tenant's client that spreads over the live API servers and survives one of them dying.

    A request that failed in transport may or may not have been done; the client then asks again, and
    an answer saying the change is pending or already made counts as the first request having worked
    (an *orphan* action: it exists, but its status id never reached the client)."""

    def __init__(self, urls: list[str], first: int) -> None:
        self.urls = list(urls)
        self.index = first % len(self.urls)
        self.clients = {
            url: httpx.Client(base_url=url + "/v0", auth=(USER, PASSWORD), timeout=30) for url in urls
        }
        self.transport_errors = 0

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, bool]:
        """The answer, and whether an earlier try of this request may have been done."""
        uncertain = False
        deadline = time.monotonic() + 60
        while True:
            url = self.urls[self.index % len(self.urls)]
            try:
                return self.clients[url].request(method, path, **kwargs), uncertain
            except httpx.TransportError:
                self.transport_errors += 1
                uncertain = True
                if len(self.urls) > 1:
                    self.urls.remove(url)  # that server is gone; use the others
                if time.monotonic() > deadline:
                    raise

    def fire(self, node: str, step: Step, on_orphan: Callable[[], None]) -> str | None:
        """Ask for ``step`` on ``node``'s eth0; its status id, or None for an orphan action."""
        path = f"/node/{node}/nic/eth0/{step.verb}"
        deadline = time.monotonic() + 60
        uncertain = False
        while True:
            response, maybe_done = self._request("POST", path, json=step.body())
            uncertain = uncertain or maybe_done
            if response.status_code == 202:
                return str(response.json()["status_id"])
            text = response.text
            pending = response.status_code == 409 and "pending" in text
            applied = (response.status_code == 409 and "already attached" in text) or (
                response.status_code == 400 and "is not attached" in text
            )
            if uncertain and applied:
                on_orphan()
                return None
            if pending and time.monotonic() < deadline:
                # An orphan action on this NIC (an earlier step's, or this one's) is being applied; once
                # it is done, asking again tells which: 202, or "already done" for this step's orphan.
                time.sleep(0.05)
                continue
            raise AssertionError(f"POST {path} {step.body()}: {response.status_code} {text}")

    def wait(self, status_id: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            response, _ = self._request("GET", f"/networking_action/{status_id}", params={"wait": 5})
            _check(response)
            body = response.json()
            status = str(body["status"])
            if status == "ERROR":
                # The next step on this NIC would fail in a way that hides why; say it here.
                raise AssertionError(f"action {status_id} ended in ERROR: {body.get('error')}")
            if status != "PENDING":
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"action {status_id} still PENDING after {timeout} s")


@dataclass
class Run:
    """What the clients saw: status ids they got, orphans, transport errors, the final statuses."""

    status_ids: list[str] = field(default_factory=list)
    orphans: int = 0
    transport_errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def fired(self) -> int:
        return len(self.status_ids) + self.orphans


def drive(
    urls: list[str],
    nodes: list[str],
    steps: Callable[[int], list[Step]],
    clients: int,
    run: Run,
    wait: bool = True,
) -> None:
    """Each client owns a share of the nodes and takes them through their steps: it fires one step on
    every node it owns, then waits for those actions (unless ``wait`` is false), then the next step."""

    def client_main(k: int) -> None:
        mine = [(i, n) for i, n in enumerate(nodes) if i % clients == k]
        client = Client(urls, k)
        try:
            for s in range(len(steps(0))):
                fired = []
                for i, node in mine:
                    status_id = client.fire(node, steps(i)[s], lambda: _count_orphan(run))
                    if status_id is not None:
                        with run.lock:
                            run.status_ids.append(status_id)
                        fired.append(status_id)
                for status_id in fired if wait else []:
                    status = client.wait(status_id)
                    with run.lock:
                        run.statuses[status] = run.statuses.get(status, 0) + 1
        finally:
            with run.lock:
                run.transport_errors += client.transport_errors
            client.close()

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_main, k) for k in range(clients)]:
            future.result()


def _count_orphan(run: Run) -> None:
    with run.lock:
        run.orphans += 1
