"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), the API in-process, a real server,
a virtual BMC process, QEMU nodes stopped however a test ends, the FPBL.

Every API test runs twice, on SQLite and on PostgreSQL (``RHAAS_TEST_PG``, default the local server at
127.0.0.1:5432; ``scripts/test`` starts a throwaway server when none answers there). A migrated template
is made once per session; each test gets a copy (a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on
PostgreSQL), so no test ever wipes a shared database.

Helpers that are not fixtures live in plain modules beside this one (``api_helpers``, ``ipmi_helpers``,
``recursion_helpers``, …): test modules import those, never each other and never this file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from agent_helpers import prov_images
from api_helpers import Api, make_api, populate_site
from hil_double import HilDouble
from ipmi_helpers import BmcProcess
from obmd_helpers import running_obmd

from rhaas.db.session import upgrade
from rhaas.drivers.obm.mock import MockOBM
from rhaas.drivers.switch.mock import MockSwitch
from rhaas.lab.servers import Server

if TYPE_CHECKING:
    from rhaas.lab.obmd import FakeObmd
    from rhaas.lab.qemu import QemuNode

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


@pytest.fixture
def return_path() -> str:
    """The instance's ``[provisioning] return_path`` for `prov` (a test parametrizes it to change it)."""
    return "fast"


@pytest.fixture
def prov(db_url: str, return_path: str) -> Iterator[Api]:
    """An API with fast provisioning on (short deadlines, a fast ticker), the site populated and the
    provisioning test images registered; agents are spoken for by `agent_helpers.Agent`."""
    overrides = {
        "provisioning__enabled": True,
        "provisioning__agent_url": "http://10.0.2.2:5000",
        "provisioning__return_timeout": 3.0,
        "provisioning__reboot_timeout": 3.0,
        "provisioning__tick_seconds": 0.05,
        "provisioning__return_path": return_path,
        "provisioning__peer_exchange": True,  # off by default; its tracker is part of what these prove
    }
    with make_api(db_url, **overrides) as api:
        populate_site(api)
        prov_images(api)
        yield api


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[BmcProcess]:
    """A virtual BMC process with a fake machine, speaking IPMI on 127.0.0.1 (see ipmi_helpers)."""
    process = BmcProcess(tmp_path / "bmc.json")
    try:
        process.start()
        yield process
    finally:
        process.stop()


@pytest.fixture
def obmd() -> Iterator[FakeObmd]:
    """A fake obmd (HIL master's power daemon) on 127.0.0.1, in a thread, stopped however the test ends."""
    with running_obmd() as daemon:
        yield daemon


@pytest.fixture
def nodes() -> Iterator[list[QemuNode]]:
    """Every QEMU node a test makes goes in here and is stopped, by PID, however the test ends."""
    made: list[QemuNode] = []
    yield made
    for node in made:
        node.stop()
    for node in made:
        assert not node.is_running()


@pytest.fixture(scope="module")
def fpbl() -> Any:
    """The FPBL (kernel + initramfs with the agent), built once per test module from Debian packages."""
    from rhaas.provisioning.fpbl import build_fpbl

    return build_fpbl()


@pytest.fixture
def hil() -> Iterator[HilDouble]:
    """A HIL master double (API, networking daemon, obmd) on 127.0.0.1, admin/adminpw, no per-request
    delay (set ``hil.delay = 0.2`` for HIL's real cost); stopped however the test ends."""
    double = HilDouble().start()
    try:
        yield double
    finally:
        double.stop()
