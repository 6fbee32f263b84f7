"""The Python client library of rhaas (and of HIL: it speaks HIL's REST API and follows its redirects).

    from rhaas.client import Client

    with Client("http://127.0.0.1:5000", "alice", "secret") as c:
        c.project.connect("proj1", "node1")
        status = c.node.connect_network("node1", "eth0", "net1")
        c.wait_networking_action(status["status_id"])

Resource groups mirror HIL's client: ``c.project``, ``c.node``, ``c.network``, ``c.switch``, ``c.port``,
``c.user``, ``c.extensions`` (plus the rhaas extensions ``c.pool`` and ``c.image``). Calls return the
parsed JSON answer (None when the server answers with an empty body) and raise the `rhaas.errors` class
the server names; see `rhaas.client.base` for the error rules. The command-line interface (`rhaas.cli`)
and a recursive instance's upstream backend both use this library and nothing else to talk to a server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from rhaas.client.base import Connection
from rhaas.client.images import Images
from rhaas.client.networks import Networks
from rhaas.client.nodes import Nodes
from rhaas.client.projects import Extensions, Pool, Projects
from rhaas.client.switches import Ports, Switches
from rhaas.client.users import Users
from rhaas.errors import BadArgumentError, BlockedError, SwitchError, UpstreamError

__all__ = ["Client", "action_failed", "describe_action"]

#: Environment variable families, in order of preference. Credentials are taken from the same family
#: as the endpoint, so HIL credentials are never sent to an rhaas endpoint or the other way round.
ENV_FAMILIES = ("RHAAS", "HIL")


class Client:
    """A connection to one rhaas or HIL endpoint. Thread-safe; close it (or use ``with``) when done.

    ``http``: an `httpx.Client` to send requests through instead of a new pooled one (tests pass a
    Starlette ``TestClient`` or an ``httpx.Client`` on a ``MockTransport``); requests go to absolute URLs
    under ``endpoint``, with basic auth if ``username`` is given.
    """

    def __init__(
        self,
        endpoint: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._conn = Connection(endpoint, username, password, timeout=timeout, http=http)
        self.project = Projects(self._conn)
        self.node = Nodes(self._conn)
        self.network = Networks(self._conn)
        self.switch = Switches(self._conn)
        self.port = Ports(self._conn)
        self.user = Users(self._conn)
        self.extensions = Extensions(self._conn)
        self.pool = Pool(self._conn)
        self.image = Images(self._conn)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> Client:
        """A client for ``RHAAS_ENDPOINT`` (with ``RHAAS_USERNAME``/``RHAAS_PASSWORD``), or else for
        ``HIL_ENDPOINT`` (with ``HIL_USERNAME``/``HIL_PASSWORD``). BadArgumentError if neither is set."""
        env = os.environ if environ is None else environ
        for family in ENV_FAMILIES:
            endpoint = env.get(f"{family}_ENDPOINT", "").strip()
            if not endpoint:
                continue
            username = env.get(f"{family}_USERNAME") or None
            password = env.get(f"{family}_PASSWORD")
            if username is not None and password is None:
                raise BadArgumentError(f"{family}_USERNAME is set but {family}_PASSWORD is not.")
            return cls(endpoint, username, password, timeout=timeout, http=http)
        raise BadArgumentError(
            "No endpoint: set RHAAS_ENDPOINT (or HIL_ENDPOINT), e.g. http://127.0.0.1:5000, "
            "and RHAAS_USERNAME/RHAAS_PASSWORD (or HIL_USERNAME/HIL_PASSWORD)."
        )

    @property
    def endpoint(self) -> str:
        """The endpoint URL, without a trailing ``/`` or ``/v0``."""
        return self._conn.endpoint

    @property
    def username(self) -> str | None:
        return self._conn.username

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """Call any route: ``path`` is relative to ``/v0/`` and must already be encoded (see
        `rhaas.client.base.segment`); ``json=None`` sends no body. For extensions without a group here."""
        if json is None:
            return self._conn.call(method, path.lstrip("/"), params=params)
        return self._conn.call(method, path.lstrip("/"), json=json, params=params)

    def wait_networking_action(
        self, status_id: str, timeout: float = 60.0, *, raise_on_error: bool = True
    ) -> dict[str, Any]:
        """Poll a networking action until it is DONE (or ERROR) and return its final status.

        Polls after 20 ms, then twice as long each time up to 1 s. Raises SwitchError if it ends in
        ERROR (unless ``raise_on_error`` is False) and BlockedError if it is still PENDING after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            action = self.node.show_networking_action(status_id)
            status = action.get("status")
            if status == "DONE":
                return action
            if status == "ERROR":
                if not raise_on_error:
                    return action
                raise action_failed(status_id, action)
            if status != "PENDING":
                raise UpstreamError(f"Networking action {status_id} has an unknown status {status!r}.")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BlockedError(
                    f"Networking action {status_id} ({describe_action(action)}) is still PENDING "
                    f"after {timeout:g} s."
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Close the pooled connections (not those of an ``http`` client passed in)."""
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}, username={self.username!r})"


def action_failed(status_id: str, action: Mapping[str, Any]) -> SwitchError:
    """The error for a networking action that ended in ERROR (rhaas says why in its ``error`` key)."""
    why = action.get("error") or "the switch did not apply it"
    return SwitchError(f"Networking action {status_id} ({describe_action(action)}) failed: {why}")


def describe_action(action: Mapping[str, Any]) -> str:
    """``"connect node1/eth0 to net1 on vlan/native"`` and the like, for messages."""
    where = f"{action.get('node')}/{action.get('nic')}"
    channel = action.get("channel")
    on = f" on {channel}" if channel else ""
    if action.get("type") == "revert_port":
        return f"revert the port of {where}"
    if action.get("new_network"):
        return f"connect {where} to {action['new_network']}{on}"
    return f"detach {where}{on}"
