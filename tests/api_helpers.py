"""What API tests share besides fixtures: callers speaking HIL's wire format, the API in-process with its
worker, test settings, and the small site most tests start from.

The fixtures that hand these out (``api``, ``site``, ``db_url``) live in conftest.py; this module holds
no fixture and starts nothing by itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
from starlette.testclient import TestClient

from rhaas.api.app import create_app
from rhaas.api.state import AppState
from rhaas.config import Settings, load_settings
from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.lab.polling import wait_for


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Caller:
    """Calls the API as one user (or anonymously), the way HIL's client does: JSON, no Content-Type."""

    def __init__(self, client: TestClient, user: str | None = None, password: str | None = None) -> None:
        self.client = client
        self.headers = {"Authorization": basic(user, password or "")} if user else {}
        self.user = user

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        content = json.dumps(body) if body is not None else None
        return self.client.request(method, "/v0" + path, content=content, headers=self.headers, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """Call, insist on ``status``, return the parsed JSON body (None when empty)."""
        response = self(method, path, body)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        if not response.content:
            return None
        is_json = response.headers.get("content-type", "").startswith("application/json")
        return response.json() if is_json else response.text

    def error(self, method: str, path: str, body: Any, status: int, type_: str) -> str:
        """Call, insist on an error of ``status`` and ``type_`` in HIL's JSON shape; return its msg."""
        response = self(method, path, body)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        data = response.json()
        assert set(data) == {"type", "msg"} and data["type"] == type_, data
        assert data["msg"]
        return str(data["msg"])

    def wait_action(self, status_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll a networking action until it is no longer PENDING; the action then."""

        def ended() -> dict[str, Any] | None:
            action = self.ok("GET", f"/networking_action/{status_id}")
            return dict(action) if action["status"] != "PENDING" else None

        return wait_for(f"networking action {status_id} to end", ended, timeout, every=0.02)


class Api:
    """The API in-process with its worker, and a caller per role. ``client`` is the customer API's
    listener; ``agent`` the provisioning network's (FPBL agents, network boot)."""

    def __init__(self, client: TestClient, settings: Settings, agent: TestClient) -> None:
        self.client = client
        self.agent = agent
        self.settings = settings
        self.sessions = AppState.of(client.app).sessions
        self.anon = Caller(client)
        self.admin = Caller(client, "admin", "adminpw")

    def add_user(self, name: str, password: str, projects: list[str], is_admin: bool = False) -> Caller:
        self.admin.ok("PUT", f"/auth/basic/user/{name}", {"password": password, "is_admin": is_admin})
        for project in projects:
            self.admin.ok("POST", f"/auth/basic/user/{name}/add_project", {"project": project})
        return Caller(self.client, name, password)


def make_settings(db_url: str, **overrides: Any) -> Settings:
    """Test settings; the image store is a fresh temporary directory unless ``images__store`` is given."""
    overrides.setdefault("images__store", tempfile.mkdtemp(prefix="rhaas-test-images-"))
    settings = load_settings(None, database__url=db_url, networks__vlans="100-109", **overrides)
    settings.worker.poll_interval = 0.05
    return settings


@contextlib.contextmanager
def make_api(db_url: str, **overrides: Any) -> Iterator[Api]:
    """The API in-process on ``db_url`` with an admin (admin/adminpw); ``overrides`` as for settings."""
    from rhaas.core.users import bootstrap_admin

    settings = make_settings(db_url, **overrides)
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions() as db:
        bootstrap_admin(db, "admin", "adminpw")
        db.commit()
    app = create_app(settings, sessions)
    agent_app = AppState.of(app).agent_app
    assert agent_app is not None
    try:
        with (
            TestClient(app, raise_server_exceptions=False) as client,
            TestClient(agent_app, raise_server_exceptions=False) as agent,
        ):
            yield Api(client, settings, agent)
    finally:
        sessions.kw["bind"].dispose()
        shutil.rmtree(settings.images.store, ignore_errors=True)


def populate_site(api: Api) -> Api:
    """The ``site`` fixture's content, for tests that build their own ``Api``."""
    admin = api.admin
    for project in ("p1", "p2"):
        admin.ok("PUT", f"/project/{project}")
    api.alice = api.add_user("alice", "alicepw", ["p1"])  # type: ignore[attr-defined]
    api.bob = api.add_user("bob", "bobpw", ["p2"])  # type: ignore[attr-defined]
    admin.ok("PUT", "/switch/sw0", {"type": "mock"})
    for i in range(1, 5):
        admin.ok("PUT", f"/switch/sw0/port/gi1/0/{i}")
        obm = {"type": "mock", "host": f"bmc{i}", "user": "u", "password": "secret-bmc"}
        admin.ok("PUT", f"/node/n{i}", {"obm": obm})
        admin.ok("PUT", f"/node/n{i}/nic/eth0", {"macaddr": f"52:54:00:00:00:0{i}"})
        admin.ok("POST", f"/switch/sw0/port/gi1/0/{i}/connect_nic", {"node": f"n{i}", "nic": "eth0"})
    return api
