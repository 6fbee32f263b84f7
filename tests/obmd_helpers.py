"""The fake obmd (`rhaas.lab.obmd.FakeObmd`) as tests use it: started on 127.0.0.1, stopped however the
test ends (it runs in a thread of the test process), and the obmd form of a node registered on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rhaas.lab.obmd import FakeObmd


@contextlib.contextmanager
def running_obmd(admin_token: str | None = None) -> Iterator[FakeObmd]:
    daemon = FakeObmd(admin_token)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def obmd_form(daemon: FakeObmd, node_id: str, **state: Any) -> dict[str, str]:
    """Add a machine ``node_id`` to the fake obmd; the ``{"uri", "admin_token"}`` that registers it."""
    daemon.add(node_id, **state)
    return {"uri": daemon.node_uri(node_id), "admin_token": daemon.admin_token}
