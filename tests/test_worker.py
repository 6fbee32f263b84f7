"""The networking worker: independent NICs in parallel, and a kill in the middle loses nothing."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from rhaas.db.models import NetworkingAction
from rhaas.db.session import make_engine
from rhaas.lab.polling import wait_for

pytestmark = pytest.mark.slow


def ok(response: httpx.Response, *codes: int):
    assert response.status_code in (codes or (200,)), response.text
    return response.json() if response.content else None


def wait(client: httpx.Client, sid: str, timeout: float = 60) -> dict:
    def ended() -> dict | None:
        action = ok(client.get(f"/networking_action/{sid}"))
        return action if action["status"] != "PENDING" else None

    return wait_for(f"action {sid} to end", ended, timeout, every=0.05)


def site(client: httpx.Client, nodes: int, delay: float, state_file: Path) -> None:
    ok(client.put("/switch/sw", json={"type": "mock", "delay": delay, "state_file": str(state_file)}))
    ok(client.put("/project/p"))
    ok(client.put("/network/net", json={"owner": "p", "access": "p", "net_id": ""}))
    for i in range(nodes):
        ok(
            client.put(
                f"/node/n{i}", json={"obm": {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}}
            )
        )
        ok(client.put(f"/node/n{i}/nic/eth0", json={"macaddr": f"52:54:00:00:01:{i:02x}"}))
        ok(client.put(f"/switch/sw/port/gi1/0/{i}"))
        ok(client.post(f"/switch/sw/port/gi1/0/{i}/connect_nic", json={"node": f"n{i}", "nic": "eth0"}))
        ok(client.post("/project/p/connect_node", json={"node": f"n{i}"}))


def claimed(db_url: str, sid: str) -> bool:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            by = conn.execute(
                select(NetworkingAction.claimed_by).where(NetworkingAction.uuid == sid)
            ).scalar()
        return by is not None
    finally:
        engine.dispose()


def test_independent_nics_are_applied_concurrently(server, tmp_path):
    """Eight NICs, each change taking the switch 1 s: one after another, no two changes would end less
    than 1 s apart. (How long the eight take is bench/scale.py's figure, not this test's.)"""
    with server.client("admin", "adminpw") as admin:
        site(admin, 8, 1.0, tmp_path / "switch.json")
        sids = [
            ok(admin.post(f"/node/n{i}/nic/eth0/connect_network", json={"network": "net"}), 202)["status_id"]
            for i in range(8)
        ]
        assert all(wait(admin, sid)["status"] == "DONE" for sid in sids)
    engine = make_engine(server.db_url)
    try:
        with engine.connect() as conn:
            query = select(NetworkingAction.finished_at).where(NetworkingAction.uuid.in_(sids))
            ends = sorted(conn.execute(query).scalars())
    finally:
        engine.dispose()
    gaps = [(b - a).total_seconds() for a, b in zip(ends, ends[1:], strict=False)]
    assert min(gaps) < 1.0, f"every change ended at least 1 s after the one before: {gaps}"


def test_server_killed_mid_action_completes_it_on_restart(server, tmp_path):
    state_file = tmp_path / "switch.json"
    with server.client("admin", "adminpw") as admin:
        site(admin, 1, 3.0, state_file)
        sid = ok(admin.post("/node/n0/nic/eth0/connect_network", json={"network": "net"}), 202)["status_id"]
    # Once claimed, the worker is inside the 3 s switch change.
    wait_for("the worker to claim the action", lambda: claimed(server.db_url, sid), 10, every=0.02)
    server.stop(signal.SIGKILL)
    server.start()
    with server.client("admin", "adminpw") as admin:
        assert wait(admin, sid)["status"] == "DONE"
        assert ok(admin.get("/node/n0"))["nics"][0]["networks"] == {"vlan/native": "net"}
        assert ok(admin.get("/switch/sw/port/gi1/0/0/state")) == {"native": "100", "tagged": []}


@pytest.fixture
def idle_site(db_url):
    """The ``site`` content with no worker running: the test drives workers by hand."""
    from api_helpers import make_api, populate_site

    with make_api(db_url, worker__in_process=False) as api:
        yield populate_site(api)


def test_lease_expired_in_the_queue_is_renewed_before_the_switch_is_touched(idle_site):
    """Found by tests/test_scale_out.py: a worker claims a batch but applies it a few at a time, so an
    action could wait out its lease in the queue; another worker then took it over while the first was
    programming the switch, and the change reached the switch twice. The lease is renewed first now."""
    from sqlalchemy import update

    from rhaas.backends import make_backend
    from rhaas.config import WorkerSettings
    from rhaas.db.models import DONE, utcnow
    from rhaas.worker.networking import NetworkWorker

    admin = idle_site.admin
    admin.ok("PUT", "/network/pub", {"owner": "admin", "access": "", "net_id": ""})
    admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    sid = admin.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "pub"}, status=202)["status_id"]
    backend = make_backend(idle_site.settings)
    first = NetworkWorker(idle_site.sessions, backend, WorkerSettings(lease_seconds=60))
    second = NetworkWorker(idle_site.sessions, backend, WorkerSettings(lease_seconds=60))
    try:
        [action_id] = first.claim(10)
        with idle_site.sessions() as db, db.begin():  # the lease ran out while the action was queued
            db.execute(update(NetworkingAction).values(claimed_until=utcnow() - dt.timedelta(seconds=1)))
        taken_over: list[int] = []
        program = first._program

        def program_while_another_worker_claims(the_plan):
            taken_over.extend(second.claim(10))  # the other worker looks for work at the worst moment
            return program(the_plan)

        first._program = program_while_another_worker_claims  # type: ignore[method-assign]
        assert first.apply(action_id)
        assert taken_over == [], "another worker took over an action that was being applied"
        assert admin.ok("GET", f"/networking_action/{sid}")["status"] == DONE
    finally:
        first.stop()
        second.stop()
