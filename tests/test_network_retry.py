"""How the networking worker retries a failed change and settles an action before it ends in ERROR.

The worker is driven by hand over a scripted switch driver (a mock switch whose changes fail as a
script says), on a clock the test advances, so windows of many seconds pass in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import make_api, populate_site

from rhaas.backends import make_backend
from rhaas.config import Settings, UpstreamSettings, WorkerSettings
from rhaas.db.models import Switch
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.drivers.switch.upstream import UpstreamSwitch, UpstreamSwitchSettings
from rhaas.errors import NotFoundError, SwitchError, UpstreamError, UpstreamUnavailableError
from rhaas.ports import PortState
from rhaas.worker.networking import ATTEMPTS, NetworkWorker
from rhaas.worker.reconcile import Reconciler
from rhaas.worker.retry import Backoff, Retry


class FakeClock:
    """Seconds that pass only when the test (or ``step`` per reading) says so."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


# --- the decisions -------------------------------------------------------------------------------------
def test_transient_failures_back_off_exponentially_capped_within_the_window() -> None:
    clock = FakeClock()
    retry = Retry(window=30, backoff=Backoff(first=0.5, factor=2, cap=4), clock=clock)
    pauses = []
    while (pause := retry.after_failure(transient=True)) is not None:
        pauses.append(pause)
        clock.now += pause
    assert pauses[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert sum(pauses) == pytest.approx(30)  # the last pause is cut to the window's end
    assert retry.failures == len(pauses) + 1


def test_a_definite_failure_is_not_retried_and_a_driver_without_a_window_gets_a_few_tries() -> None:
    assert Retry(window=30, clock=FakeClock()).after_failure(transient=False) is None
    plain = Retry(window=0, clock=FakeClock())
    tries = 1
    while plain.after_failure(transient=True) is not None:
        tries += 1
    assert tries == ATTEMPTS


# --- the worker, over a scripted switch ----------------------------------------------------------------
class Scripted(SwitchDriver):
    """The mock switch ``inner``, whose changes follow ``script`` (then succeed): ``down`` fails
    transiently, ``lost`` applies the change but fails transiently (the answer was lost), ``refuse``
    fails definitely."""

    name = "scripted"

    def __init__(self, inner: SwitchDriver, script: list[str], window: float) -> None:
        super().__init__(inner.switch_name, inner.settings)
        self.inner, self.script, self.retry_window, self.calls = inner, script, window, 0

    def set_port(self, port: str, state: PortState) -> None:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        where = f"switch {self.switch_name}, port {port}"
        if step in ("ok", "lost"):
            self.inner.set_port(port, state)
        if step in ("down", "lost"):
            raise SwitchError(f"{where}: the switch did not answer", transient=True)
        if step == "refuse":
            raise SwitchError(f"{where}: refused", transient=False)

    def get_port(self, port: str) -> PortState:
        return self.inner.get_port(port)


@pytest.fixture
def idle(db_url: str) -> Iterator[Any]:
    """The ``site`` content with no worker running; n1 in p1, a public network ``pub``."""
    with make_api(db_url, worker__in_process=False) as api:
        populate_site(api)
        api.admin.ok("PUT", "/network/pub", {"owner": "admin", "access": "", "net_id": ""})
        api.admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
        yield api


def run(
    api: Any, script: list[str], window: float, clock: FakeClock, body: dict, path: str = "connect_network"
):
    """Queue a change of n1/eth0, apply it with a worker over a scripted sw0; (action, driver)."""
    sid = api.admin.ok("POST", f"/node/n1/nic/eth0/{path}", body, status=202)["status_id"]
    backend = make_backend(api.settings)
    with api.sessions() as db:
        sw0 = db.query(Switch).filter_by(label="sw0").one()
        driver = Scripted(backend.switch_driver(sw0), script, window)
    backend.switch_driver = lambda _switch: driver  # type: ignore[method-assign]
    worker = NetworkWorker(
        api.sessions, backend, WorkerSettings(), backoff=Backoff(first=0.001, cap=0.002), clock=clock
    )
    try:
        [action_id] = worker.claim(10)
        worker.apply(action_id)
    finally:
        worker.stop()
    return api.admin.ok("GET", f"/networking_action/{sid}"), driver


def networks(api: Any) -> dict:
    return api.admin.ok("GET", "/node/n1")["nics"][0]["networks"]  # type: ignore[no-any-return]


def test_transient_failures_are_retried_until_the_change_is_made(idle) -> None:
    action, driver = run(idle, ["down"] * 5, 60, FakeClock(), {"network": "pub"})
    assert action["status"] == "DONE", action
    assert driver.calls == 6
    assert networks(idle) == {"vlan/native": "pub"}


def test_a_definite_refusal_fails_at_once(idle) -> None:
    action, driver = run(idle, ["refuse"] * 5, 60, FakeClock(), {"network": "pub"})
    assert action["status"] == "ERROR" and "refused after 1 attempt(s)" in action["error"], action
    assert driver.calls == 1
    assert networks(idle) == {}


def test_transient_failures_end_in_error_when_the_window_closes(idle) -> None:
    clock = FakeClock(step=1.0)  # every reading of the clock is one second later
    action, driver = run(idle, ["down"] * 1000, 20, clock, {"network": "pub"})
    assert action["status"] == "ERROR" and "still failing after" in action["error"], action
    assert 2 < driver.calls <= 21  # the clock moves 1 s a try: no more tries than the window allows
    assert networks(idle) == {}


def test_a_change_made_whose_answer_was_lost_ends_done(idle) -> None:
    """The switch applied the change every time but never said so (an upstream whose API stopped while
    its networking daemon went on): the port is read back before the action ends, and it is DONE."""
    action, _driver = run(idle, ["lost"] * 1000, 5, FakeClock(step=1.0), {"network": "pub"})
    assert action["status"] == "DONE", action
    assert networks(idle) == {"vlan/native": "pub"}


def test_an_action_in_error_leaves_the_attachments_saying_what_the_port_carries(idle) -> None:
    """n1 is on pub, but its port lost the VLAN behind rhaas's back; adding a tagged network is then
    refused: the action ends in ERROR and the NIC's attachments say what the port really carries."""
    action, driver = run(idle, [], 0, FakeClock(), {"network": "pub"})
    assert action["status"] == "DONE" and networks(idle) == {"vlan/native": "pub"}
    driver.inner.set_port("gi1/0/1", PortState())  # drift: the switch forgot
    idle.admin.ok("PUT", "/network/pub2", {"owner": "admin", "access": "", "net_id": ""})
    tagged = idle.admin.ok("GET", "/network/pub2")["channels"][1]
    action, _driver = run(idle, ["refuse"] * ATTEMPTS, 0, FakeClock(), {"network": "pub2", "channel": tagged})
    assert action["status"] == "ERROR", action
    assert networks(idle) == {}


# --- the upstream switch says which failures may pass ---------------------------------------------------
class FakeUpstream:
    key = "http://up#p"
    action_timeout = 42.0

    def __init__(self, error: Exception) -> None:
        self.error = error

    def nic_state(self, node: str, nic: str) -> PortState:
        raise self.error

    def set_nic_state(self, node: str, nic: str, state: PortState) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (UpstreamUnavailableError("upstream http://up is unreachable"), True),
        (UpstreamError("upstream http://up refused x: HTTP 502", transient=True), True),
        (UpstreamError("upstream http://up refused x: ProjectMismatchError: no"), False),
    ],
)
def test_the_upstream_switch_keeps_the_transience_of_its_upstreams_failure(error, transient) -> None:
    switch = UpstreamSwitch("upstream", UpstreamSwitchSettings(upstream="http://up#p"), FakeUpstream(error))
    assert switch.retry_window == 42.0
    with pytest.raises(SwitchError) as info:
        switch.set_port("n1/eth0", PortState(native="100"))
    assert info.value.transient is transient


def test_the_upstream_keeps_the_transience_when_it_names_itself() -> None:
    from rhaas.backends.upstream import Upstream

    up = Upstream(UpstreamSettings(url="http://up.test", project="p", action_timeout=7))
    try:
        assert up.action_timeout == 7

        def fails(exc: Exception) -> Any:
            raise exc

        for inner, transient in (
            (NotFoundError("gone"), False),
            (NotFoundError("5xx", transient=True), True),
        ):
            with pytest.raises(UpstreamError) as info:
                up.call("showing n1", fails, inner)
            assert info.value.transient is transient and "http://up.test" in info.value.msg
    finally:
        up.client.close()


def test_the_reconciler_runs_only_on_a_recursive_instance_and_is_on_by_default(idle) -> None:
    assert Settings().upstream.reconcile_interval == 60
    base = make_backend(idle.settings)
    assert Reconciler.of(idle.sessions, base, 60) is None
