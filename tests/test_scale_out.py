"""Scale-out on PostgreSQL: 3 API servers and 3 networking workers (separate processes), one database.

500 nodes, 2,000 connect/detach actions from concurrent clients spread over the API servers; one worker
and one API server are killed (SIGKILL) in the middle. At the end every action has ended exactly once,
the mock switch's journal shows each change applied once (an action the killed worker had applied but
not yet committed is applied again, identically, by the worker that takes its lease over: that is the
only repetition allowed), and the switch's ports equal the database's attachments.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scaleout import NATIVE, Cluster, Run, Step, drive, fresh_database, node_name, pg_reason
from sqlalchemy import func, select

from rhaas.db.models import DONE, ERROR, PENDING, NetworkAttachment, NetworkingAction, Nic
from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.lab.polling import wait_for

PG_ADMIN_URL = os.environ.get("RHAAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
NODES = 500
NETWORKS = ["net0", "net1", "net2", "net3"]
CLIENTS = 16
KILL_AFTER = 800  # actions fired before one worker and one API server are killed


def steps_for(vlans: dict[str, str]) -> Any:
    """Four actions per node, ending with something on the port: connect A (native), connect B (tagged),
    detach A, connect C (native). Which networks are A, B and C depends on the node."""

    def steps(i: int) -> list[Step]:
        a, c = ("net0", "net1") if i % 2 else ("net1", "net0")
        b = "net2" if i % 3 else "net3"
        return [
            Step("connect_network", a, NATIVE),
            Step("connect_network", b, f"vlan/{vlans[b]}"),
            Step("detach_network", a),
            Step("connect_network", c, NATIVE),
        ]

    return steps


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = pg_reason(PG_ADMIN_URL)
    if reason is not None:
        print(f"SKIP test_scale_out: {reason}")
        pytest.skip(reason)
    with fresh_database(PG_ADMIN_URL) as db_url:
        c = Cluster(db_url, tmp_path)
        try:
            yield c
        finally:
            c.close()


def _pid(claimed_by: str | None) -> int:
    assert claimed_by, "a finished action names the worker that finished it"
    return int(claimed_by.split(":")[1])


def check_exactly_once(cluster: Cluster, killed_worker: int) -> dict[str, int]:
    """Replay the finished actions of every port against the switch's journal."""
    sessions = make_sessionmaker(make_engine(cluster.db_url))
    journal: dict[str, list[dict[str, Any]]] = {}
    for line in cluster.journal_lines():
        journal.setdefault(line["port"], []).append(line)
    reapplied = applied = 0
    with sessions() as db:
        actions = db.scalars(select(NetworkingAction).order_by(NetworkingAction.id)).all()
        by_port: dict[str, list[NetworkingAction]] = {}
        for action in actions:
            assert action.nic.port is not None
            by_port.setdefault(action.nic.port.label, []).append(action)
        for port, port_actions in by_port.items():
            entries = journal.get(port, [])
            channels: dict[str, str] = {}
            i = 0
            for action in port_actions:
                if action.status == ERROR:
                    continue  # no fault is injected here, but an ERROR action must not have reached the port
                if action.new_network is not None:
                    channels[action.channel] = action.new_network.network_id
                else:
                    channels.pop(action.channel, None)
                native = channels.get(NATIVE)
                tagged = sorted((v for ch, v in channels.items() if ch != NATIVE), key=int)
                finisher = _pid(action.claimed_by)
                # The killed worker may have applied this change and died before committing it.
                while (
                    finisher != killed_worker
                    and i < len(entries)
                    and entries[i]["pid"] == killed_worker
                    and (entries[i]["native"], entries[i]["tagged"]) == (native, tagged)
                ):
                    i += 1
                    reapplied += 1
                assert i < len(entries), f"port {port}: action {action.uuid} never reached the switch"
                entry = entries[i]
                assert (entry["pid"], entry["native"], entry["tagged"]) == (finisher, native, tagged), (
                    f"port {port}: action {action.uuid} ({action.type} {action.channel}) expected "
                    f"{native}/{tagged} by pid {finisher}, journal has {entry}"
                )
                i += 1
                applied += 1
            assert i == len(entries), f"port {port}: changes nobody asked for: {entries[i:]}"
        assert set(journal) <= set(by_port), "the switch changed ports no action was for"

        # The switch's ports equal the database's attachments, for every port with a NIC.
        ports = cluster.switch_ports()
        nics = db.scalars(select(Nic).where(Nic.port_id.is_not(None))).all()
        for nic in nics:
            assert nic.port is not None
            attachments = db.scalars(
                select(NetworkAttachment).where(NetworkAttachment.nic_id == nic.id)
            ).all()
            native = next((a.network.network_id for a in attachments if a.channel == NATIVE), None)
            tagged = sorted((a.network.network_id for a in attachments if a.channel != NATIVE), key=int)
            on_switch = ports.get(nic.port.label, {"native": None, "tagged": []})
            assert (on_switch["native"], on_switch["tagged"]) == (native, tagged), (
                f"port {nic.port.label}: switch {on_switch}, database {native}/{tagged}"
            )
    sessions.kw["bind"].dispose()
    return {"applied": applied, "reapplied_after_kill": reapplied}


def wait_until_none_pending(db_url: str, timeout: float) -> dict[str, int]:
    sessions = make_sessionmaker(make_engine(db_url))
    counts: dict[str, int] = {}

    def none_pending() -> dict[str, int] | None:
        with sessions() as db:
            rows = db.execute(
                select(NetworkingAction.status, func.count()).group_by(NetworkingAction.status)
            ).all()
        counts.clear()
        counts.update({status: n for status, n in rows})
        return dict(counts) if not counts.get(PENDING) else None

    try:
        return wait_for("no action PENDING", none_pending, timeout, every=0.2)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {counts}") from exc
    finally:
        sessions.kw["bind"].dispose()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_scale_out_survives_killed_worker_and_server(cluster: Cluster, request: pytest.FixtureRequest):
    started = time.monotonic()
    cluster.start_servers(3)
    cluster.start_workers(3)
    registration = cluster.populate(NODES, NETWORKS)
    nodes = [node_name(i) for i in range(NODES)]
    steps = steps_for(cluster.vlans)
    total = NODES * len(steps(0))
    run = Run()
    killed: dict[str, int] = {}

    def killer() -> None:
        deadline = time.monotonic() + 120
        while run.fired < KILL_AFTER and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.01)
        if stop.is_set():
            return
        killed["worker"] = cluster.workers[0].pid
        os.kill(cluster.workers[0].pid, signal.SIGKILL)
        assert cluster.servers[0].proc is not None
        killed["server"] = cluster.servers[0].proc.pid
        os.kill(cluster.servers[0].proc.pid, signal.SIGKILL)
        killed["at"] = run.fired

    stop = threading.Event()
    killing = threading.Thread(target=killer, name="killer")
    killing.start()
    t0 = time.monotonic()
    try:
        drive([s.url for s in cluster.servers], nodes, steps, CLIENTS, run)
    finally:
        stop.set()
        killing.join()
    drive_seconds = time.monotonic() - t0
    assert "worker" in killed, "the kill never happened"

    counts = wait_until_none_pending(cluster.db_url, timeout=60)
    assert run.fired == total, (run.fired, total)
    assert sum(counts.values()) == total, f"{counts}: {total} actions were asked for, each exactly once"
    assert set(counts) <= {DONE, ERROR}, counts
    assert counts.get(ERROR, 0) == 0, f"no fault was injected, yet: {counts}"
    assert sum(run.statuses.values()) == len(run.status_ids)
    proof = check_exactly_once(cluster, killed["worker"])
    assert proof["applied"] == counts[DONE]
    line = (
        f"scale-out: {NODES} nodes registered in {registration:.1f} s; "
        f"{total} actions in {drive_seconds:.1f} s "
        f"({total / drive_seconds:.0f}/s) over 3 servers and 3 workers; killed worker {killed['worker']} and "
        f"server {killed['server']} after {killed['at']} actions; {run.orphans} orphan actions, "
        f"{run.transport_errors} transport errors, {proof['reapplied_after_kill']} changes re-applied after "
        f"the kill; total {time.monotonic() - started:.1f} s"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print(line)
