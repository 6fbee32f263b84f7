"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), the API in-process, callers.

Every API test runs twice, on SQLite and on PostgreSQL (``RHAAS_TEST_PG``, default the local server at
127.0.0.1:5432). A migrated template is made once per session; each test gets a copy (a file copy on
SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL), so no test ever wipes a shared database.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from rhaas.api.app import create_app
from rhaas.api.state import AppState
from rhaas.config import Settings, load_settings
from rhaas.core.access import ADMIN
from rhaas.db.session import make_engine, make_sessionmaker, upgrade
from rhaas.drivers.obm.mock import MockOBM
from rhaas.drivers.switch.mock import MockSwitch
from rhaas.lab.servers import Server

PG_ADMIN_URL = os.environ.get("RHAAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, Any] = {}


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else the reason it cannot be used."""
    if "reason" not in _pg_state:
        try:
            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
                _pg_state["reason"] = None
        except psycopg.Error as exc:
            _pg_state["reason"] = f"PostgreSQL at {PG_ADMIN_URL} does not answer: {exc}"
    return _pg_state["reason"]


def _pg_url(dbname: str) -> str:
    base = httpx.URL(PG_ADMIN_URL.replace("postgresql://", "http://", 1))
    return str(base.copy_with(path="/" + dbname)).replace("http://", "postgresql://", 1)


def _pg_exec(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    templates: dict[str, str] = {}
    sqlite_template = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade(f"sqlite:///{sqlite_template}")
    templates["sqlite"] = str(sqlite_template)
    if _pg_available() is None:
        name = f"rhaas_tmpl_{uuid.uuid4().hex[:10]}"
        _pg_exec(f'CREATE DATABASE "{name}"')
        upgrade(_pg_url(name))
        templates["postgresql"] = name
    yield templates
    if "postgresql" in templates:
        _pg_exec(f'DROP DATABASE IF EXISTS "{templates["postgresql"]}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _templates: dict[str, str]) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    if request.param == "sqlite":
        path = tmp_path / "rhaas.sqlite3"
        shutil.copy(_templates["sqlite"], path)
        yield f"sqlite:///{path}"
        return
    reason = _pg_available()
    if reason is not None:
        pytest.skip(reason)
    name = f"rhaas_t_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{_templates["postgresql"]}"')
    try:
        yield _pg_url(name)
    finally:
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True, scope="session")
def _cheap_kdf() -> Iterator[None]:
    """In-process tests hash passwords with a cheap scrypt cost (the format records the cost, so
    verification follows). Servers started as subprocesses keep the real cost."""
    from rhaas.core import passwords

    real = passwords._N
    passwords._N = 2**8
    yield
    passwords._N = real


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Iterator[None]:
    MockSwitch.forget_all()
    MockOBM.forget_all()
    yield
    MockSwitch.forget_all()
    MockOBM.forget_all()


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
        deadline = time.monotonic() + timeout
        while True:
            action = self.ok("GET", f"/networking_action/{status_id}")
            if action["status"] != "PENDING":
                return dict(action)
            if time.monotonic() > deadline:
                raise AssertionError(f"networking action {status_id} still PENDING after {timeout} s")
            time.sleep(0.02)


class Api:
    """The API in-process with its worker, and a caller per role."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
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
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Api(client, settings)
    finally:
        sessions.kw["bind"].dispose()
        shutil.rmtree(settings.images.store, ignore_errors=True)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with make_api(db_url) as api:
        yield api


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A real ``rhaas-admin serve`` on this test's database (admin/adminpw), stopped however it ends."""
    srv = Server(db_url, tmp_path / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def site(api: Api) -> Api:
    """A small site: projects p1/p2, users alice (p1) and bob (p2), mock switch sw0 with four ports,
    nodes n1..n4 with eth0 wired to sw0 ports, mock BMCs with OBM enabled."""
    return populate_site(api)


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


__all__ = ["ADMIN", "Api", "Caller", "basic", "make_settings", "populate_site"]
