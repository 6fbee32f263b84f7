"""The application factories: two ASGI apps over one `AppState`, for two listeners.

- the customer API (`create_app`): HIL's REST API under ``/v0``, the OpenAPI document at /openapi.json
  and /docs. It must not serve the FPBL agents' routes or the network boot routes: those hand out and
  accept agent secrets, which a customer must never get (docs/fast-provisioning.md, "Trust").
- the provisioning-network app (`create_agent_app`): ``/agent/v1`` (FPBL agents, authenticated by their
  node's secret) and ``/boot/v1`` (firmware in a network boot), and nothing else. ``rhaas-admin serve``
  binds it to ``[provisioning] agent_listen``, an address on the provisioning network only, over TLS
  with the key agents pin (`rhaas.provisioning.agenttls`).
- the network boot's app (`create_boot_app`): ``/boot/v1`` only, on ``[provisioning] boot_listen`` in
  plain HTTP, which is all a node's firmware speaks.

The background threads (networking worker, provisioning ticker, reconciler) belong to the customer
app's lifespan, so they run once however many listeners serve.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from rhaas import __version__
from rhaas.api import errors
from rhaas.api.auth import Authenticator
from rhaas.api.deps import check_input
from rhaas.api.routes import images, networks, nodes, pool, projects, provisioning, switches, users
from rhaas.api.state import AppState
from rhaas.backends import make_backend
from rhaas.config import Settings
from rhaas.core.images import BlobStore
from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.notify import Notifier
from rhaas.provisioning.agenttls import pin_of
from rhaas.worker.networking import NetworkWorker
from rhaas.worker.provisioning import ProvisioningTicker
from rhaas.worker.reconcile import Reconciler

log = logging.getLogger("rhaas")


class JSONBodies:
    """Every /v0 body is JSON, whatever Content-Type says: HIL's client sends none, and ``curl -d``
    sends a form type (HIL then refused every call with a body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v0/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """Build the customer API; its provisioning-network app is ``AppState.of(app).agent_app``. The schema
    must exist (``rhaas-admin db upgrade``); the VLAN pool is topped up."""
    return create_apps(settings, sessions)[0]


def create_apps(settings: Settings, sessions: sessionmaker[Session] | None = None) -> tuple[FastAPI, FastAPI]:
    """The customer API and the provisioning-network app, sharing one state (see the module's docstring)."""
    if sessions is None:
        sessions = make_sessionmaker(make_engine(settings.database.url))
    # The one backend of this instance: routes, the worker and the ticker are handed it.
    backend = make_backend(settings)
    with sessions() as db:
        backend.prepare(db)  # the VLAN pool; a recursive instance's upstream switch
        db.commit()

    # Long polls wait on the notifier; the in-process worker notifies it when it finishes an action
    # (other processes' changes are seen by the waiters' own periodic re-reads).
    notifier = Notifier()
    worker = (
        NetworkWorker(sessions, backend, settings.worker, notifier=notifier)
        if settings.worker.in_process
        else None
    )
    # Drift with an upstream is repaired where the worker runs (the process that gives up on actions).
    reconciler = Reconciler.of(sessions, backend, settings.upstream.reconcile_interval) if worker else None
    ticker = None
    if settings.provisioning.enabled:
        wake = worker.wake if worker is not None else None
        ticker = ProvisioningTicker(
            sessions, settings.provisioning, wake_worker=wake, obm_for=backend.obm_driver
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for background in (worker, ticker, reconciler):
            if background is not None:
                background.start()
        try:
            yield
        finally:
            for background in (worker, ticker, reconciler):
                if background is not None:
                    background.stop()

    app = FastAPI(
        title="rhaas",
        version=__version__,
        description="HIL-compatible bare-metal API (base or recursive instance).",
        lifespan=lifespan,
    )
    key = Path(settings.provisioning.agent_tls_key)
    state = AppState(
        settings=settings,
        agent_pin=pin_of(key) if settings.provisioning.enabled and key.exists() else None,
        sessions=sessions,
        authenticator=Authenticator(settings.auth),
        blobs=BlobStore(settings.images.store, settings.images.max_blob_bytes),
        notifier=notifier,
        backend=backend,
        worker=worker,
        ticker=ticker,
    )
    state.install(app)
    errors.install(app)
    app.add_middleware(JSONBodies)
    for module in (projects, nodes, networks, switches, users, pool, images, provisioning):
        app.include_router(module.router, prefix="/v0", dependencies=[Depends(check_input)])
    app.include_router(images.blob_router, prefix="/v0")  # raw bodies, streamed: no JSON input checks
    return app, create_agent_app(state)


def create_agent_app(state: AppState) -> FastAPI:
    """The provisioning-network app over ``state`` (built by `create_apps`): the agents' and the network
    boot's routes, HIL's error shape, no lifespan (the customer app's runs the background threads) and no
    API documents. It is recorded as ``state.agent_app``."""
    agent_app = FastAPI(title="rhaas provisioning network", docs_url=None, redoc_url=None, openapi_url=None)
    state.install(agent_app)
    state.agent_app = agent_app
    errors.install(agent_app)
    agent_app.include_router(provisioning.agent_router)  # FPBL agents, authenticated by their node's secret
    agent_app.include_router(provisioning.boot_router)  # firmware in a network boot: iPXE scripts, the FPBL
    create_boot_app(state)
    return agent_app


def create_boot_app(state: AppState) -> FastAPI:
    """The network boot's app over ``state``: ``/boot/v1`` and nothing else, no documents, no lifespan. It
    is recorded as ``state.boot_app``."""
    boot_app = FastAPI(title="rhaas network boot", docs_url=None, redoc_url=None, openapi_url=None)
    state.install(boot_app)
    state.boot_app = boot_app
    errors.install(boot_app)
    boot_app.include_router(provisioning.boot_router)
    return boot_app
