"""The API's plumbing: a route's change is committed before it is answered, a commit that fails is never
answered with success, after-commit wake-ups follow only a kept change, and long polls are woken through
the one notifier (and still see other processes' changes by reading again)."""

from __future__ import annotations

import threading
import time
from typing import Any

from api_helpers import Api, make_api, populate_site
from dbdump import dump
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rhaas.api.routes import networks as network_routes
from rhaas.api.state import AppState
from rhaas.backends import make_backend
from rhaas.db.models import NetworkingAction
from rhaas.lab.polling import wait_for
from rhaas.notify import ACTIONS
from rhaas.worker.networking import NetworkWorker


def _prepare(api: Api) -> None:
    api.admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    api.admin.ok("PUT", "/network/net1", {"owner": "p1", "access": "p1", "net_id": ""})


def _connect(api: Api) -> Any:
    return api.admin("POST", "/node/n1/nic/eth0/connect_network", {"network": "net1"})


def _actions(sessions: sessionmaker[Session]) -> int:
    with sessions() as db:
        return int(db.scalar(select(func.count()).select_from(NetworkingAction)) or 0)


def test_a_commit_that_fails_is_answered_with_the_error_and_wakes_nobody(site: Api) -> None:
    """The commit runs before the response is sent: committed after it, this would have answered 202."""
    state = AppState.of(site.client.app)
    assert state.worker is not None
    woken: list[str] = []
    state.worker.wake = lambda: woken.append("worker")  # type: ignore[method-assign]
    _prepare(site)
    before = dump(site.sessions)

    class CommitFails(Session):
        def commit(self) -> None:
            raise IntegrityError("COMMIT", None, Exception("a concurrent change won"))

    real = state.sessions
    state.sessions = sessionmaker(class_=CommitFails, **real.kw)
    try:
        response = _connect(site)
    finally:
        state.sessions = real
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "BlockedError"
    assert dump(site.sessions) == before, "nothing of the failed request is kept"
    assert woken == [], "the worker is woken only for a committed action"


def test_wake_ups_run_after_the_commit_and_before_the_answer(site: Api) -> None:
    state = AppState.of(site.client.app)
    assert state.worker is not None
    real_wake = state.worker.wake
    seen: list[int] = []

    def wake() -> None:  # another connection must already see the action the route queued
        seen.append(_actions(site.sessions))
        real_wake()

    state.worker.wake = wake  # type: ignore[method-assign]
    _prepare(site)
    before = _actions(site.sessions)
    response = _connect(site)
    assert response.status_code == 202, response.text
    assert seen == [before + 1]


def _hold(api: Api, status_id: str, got: dict[str, Any]) -> threading.Thread:
    def hold() -> None:
        got["answer"] = api.admin.ok("GET", f"/networking_action/{status_id}?wait=20")
        got["at"] = time.monotonic()

    holder = threading.Thread(target=hold)
    holder.start()
    return holder


def _answer_held_request(api: Any, worker: NetworkWorker) -> tuple[dict[str, Any], float]:
    """Hold ``GET /networking_action/<id>?wait=`` on a new action, let ``worker`` finish it: (what the
    held request answered, seconds from the action's end to that answer)."""
    notifier = AppState.of(api.client.app).notifier
    try:
        status_id = _connect(api).json()["status_id"]
        got: dict[str, Any] = {}
        holder = _hold(api, status_id, got)
        wait_for("the request to be held", lambda: notifier.waiting(ACTIONS), 10)
        finished = time.monotonic()
        assert worker.run_once() == 1
        holder.join(20)
    finally:
        worker.stop()
    return got["answer"], got["at"] - finished


def test_a_held_action_request_is_woken_by_this_process_worker(db_url: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(network_routes, "ACTION_RECHECK", 10.0)  # only the notification can answer fast
    with make_api(db_url, worker__in_process=False) as api:
        _prepare(populate_site(api))
        notifier = AppState.of(api.client.app).notifier
        worker = NetworkWorker(
            api.sessions, make_backend(api.settings), api.settings.worker, notifier=notifier
        )
        answer, after = _answer_held_request(api, worker)
        assert answer["status"] == "DONE"
        assert after < 2.0, "answered when the action finished, not at the next re-read"
        assert notifier.waiting() == 0, "nothing left waiting"


def test_a_held_action_request_sees_another_process_worker(db_url: str) -> None:
    with make_api(db_url, worker__in_process=False) as api:
        _prepare(populate_site(api))
        # Its own notifier: a worker of another process.
        elsewhere = NetworkWorker(api.sessions, make_backend(api.settings), api.settings.worker)
        answer, after = _answer_held_request(api, elsewhere)
        assert answer["status"] == "DONE"
        assert after < 2.0, "seen by the held request's own re-reads"
