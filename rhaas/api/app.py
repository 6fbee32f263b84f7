"""The application factory: HIL's REST API under ``/v0``, plus the OpenAPI document at /openapi.json."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from rhaas import __version__
from rhaas.api import errors
from rhaas.api.deps import Authenticator, check_input
from rhaas.api.routes import images, networks, nodes, pool, projects, provisioning, switches, users
from rhaas.backends import make_backend
from rhaas.config import Settings
from rhaas.core.images import BlobStore
from rhaas.db.session import make_engine, make_sessionmaker
from rhaas.worker.networking import NetworkWorker
from rhaas.worker.provisioning import ProvisioningTicker

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
    """Build the API. The schema must exist (``rhaas-admin db upgrade``); the VLAN pool is topped up."""
    if sessions is None:
        sessions = make_sessionmaker(make_engine(settings.database.url))
    # The one backend of this instance: routes, the worker and the ticker are handed it.
    backend = make_backend(settings)
    with sessions() as db:
        backend.prepare(db)  # the VLAN pool; a recursive instance's upstream switch
        db.commit()

    worker = NetworkWorker(sessions, backend, settings.worker) if settings.worker.in_process else None
    ticker = None
    if settings.provisioning.enabled:
        wake = worker.wake if worker is not None else None
        ticker = ProvisioningTicker(
            sessions, settings.provisioning, wake_worker=wake, obm_for=backend.obm_driver
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for background in (worker, ticker):
            if background is not None:
                background.start()
        try:
            yield
        finally:
            for background in (worker, ticker):
                if background is not None:
                    background.stop()

    app = FastAPI(
        title="rhaas",
        version=__version__,
        description="HIL-compatible bare-metal API (base or recursive instance).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.sessions = sessions
    app.state.authenticator = Authenticator(settings.auth)
    app.state.worker = worker
    app.state.provisioning_ticker = ticker
    app.state.work_signal = provisioning.WorkSignal()
    app.state.blobs = BlobStore(settings.images.store, settings.images.max_blob_bytes)
    app.state.wake_worker = worker.wake if worker is not None else None
    # Long-polls of networking actions wait on this; the in-process worker notifies it (other workers'
    # results are seen by the waiters' own short re-reads).
    app.state.actions_finished = worker.finished if worker is not None else threading.Condition()
    errors.install(app)
    app.add_middleware(JSONBodies)
    for module in (projects, nodes, networks, switches, users, pool, images, provisioning):
        app.include_router(module.router, prefix="/v0", dependencies=[Depends(check_input)])
    app.include_router(images.blob_router, prefix="/v0")  # raw bodies, streamed: no JSON input checks
    app.include_router(provisioning.agent_router)  # FPBL agents, authenticated by their node's secret
    app.include_router(provisioning.boot_router)  # firmware in a network boot: iPXE scripts, the FPBL
    return app
