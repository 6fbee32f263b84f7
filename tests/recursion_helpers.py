"""Levels of rhaas as real servers on loopback, and the upstream drivers a recursive instance uses.

`start_level` starts ``rhaas-admin serve``, recursive on another level if one is given; `Level` holds
its admin client and the users a test made. `upstream_drivers` builds the upstream switch and OBM drivers
in the test process, over a level, as a recursive instance builds them: how those drivers find their
upstream is decided there and nowhere else in the tests. Nothing here is a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rhaas.backends import upstream
from rhaas.config import UpstreamSettings
from rhaas.drivers.obm.upstream import UpstreamOBM, UpstreamOBMSettings
from rhaas.drivers.switch.upstream import UpstreamSwitch, UpstreamSwitchSettings
from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server


@dataclass
class Level:
    server: Server
    admin: httpx.Client
    users: dict[str, httpx.Client] = field(default_factory=dict)

    def user(self, name: str, password: str, project: str) -> httpx.Client:
        ok(self.admin.put(f"/auth/basic/user/{name}", json={"password": password}))
        ok(self.admin.post(f"/auth/basic/user/{name}/add_project", json={"project": project}))
        self.users[name] = self.server.client(name, password)
        return self.users[name]

    def close(self) -> None:
        for c in (self.admin, *self.users.values()):
            c.close()


def ok(response: httpx.Response, *codes: int) -> Any:
    """The JSON body (None when empty) of a response that must have one of ``codes`` (default 200)."""
    assert response.status_code in (codes or (200,)), (
        response.request.url,
        response.status_code,
        response.text,
    )
    return response.json() if response.content else None


def wait_done(client: httpx.Client, status_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll a networking action until it is no longer PENDING; the action then."""

    def ended() -> dict[str, Any] | None:
        action: dict[str, Any] = client.get(f"/networking_action/{status_id}").json()
        return action if action["status"] != "PENDING" else None

    return wait_for(f"action {status_id} to end", ended, timeout, every=0.05)


def start_level(
    db_url: str, log: Path, upstream: Level | str | None, project: str, bot: str, *extra: str
) -> Level:
    """A level on ``db_url``: recursive on ``upstream`` (a level, or the URL of a HIL double) as ``bot`` of
    ``project`` there (password ``<bot>-pw``), if given; ``extra``: more ``rhaas-admin serve`` flags."""
    args: list[str] = ["--vlans", "100-199", *extra]
    env = {}
    if upstream is not None:
        url = upstream if isinstance(upstream, str) else upstream.server.url
        args += ["--upstream", url, "--upstream-project", project, "--upstream-user", bot]
        env["RHAAS_UPSTREAM_PASSWORD"] = f"{bot}-pw"
    server = Server(db_url, log, *args, env=env).start()
    return Level(server, server.client("admin", "adminpw"))


class UpstreamDrivers:
    """Builds upstream drivers over one upstream, with the settings a recursive instance stores."""

    def __init__(self, up: upstream.Upstream) -> None:
        self.up = up

    def switch(self) -> UpstreamSwitch:
        return UpstreamSwitch("upstream", UpstreamSwitchSettings(upstream=self.up.key), self.up)

    def obm(self, node: str) -> UpstreamOBM:
        return UpstreamOBM(UpstreamOBMSettings(upstream=self.up.key, node=node), self.up)


@contextmanager
def upstream_drivers(level: Level, project: str, user: str, password: str) -> Iterator[UpstreamDrivers]:
    """Upstream drivers in this process over ``level``, as ``user`` of ``project`` there."""
    settings = UpstreamSettings(url=level.server.url, project=project, user=user, password=password)
    up = upstream.Upstream(settings)
    try:
        yield UpstreamDrivers(up)
    finally:
        up.client.close()
