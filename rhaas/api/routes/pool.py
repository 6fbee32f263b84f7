"""rhaas extensions: bulk node claims (any instance) and the free pool of a recursive instance (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from rhaas.api.deps import DB, CurrentBackend, CurrentCaller
from rhaas.api.routes.common import reply
from rhaas.api.schemas import Body
from rhaas.core import pool, projects

router = APIRouter(tags=["pool (rhaas extension)"])


class CountBody(Body):
    count: int = Field(ge=1, le=1000)


class ReconcileBody(Body):
    fix: bool = False


@router.post("/project/{project}/connect_nodes", summary="rhaas extension: claim any N free nodes")
def connect_nodes(
    project: str, body: CountBody, db: DB, caller: CurrentCaller, backend: CurrentBackend
) -> Response:
    names = projects.connect_nodes(db, caller, backend, project, body.count)
    return reply(names)


@router.get("/pool", summary="rhaas extension: the free pool and its upstream")
def show_pool(db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    return reply(pool.show_pool(db, caller, backend))


@router.post("/pool/grow", summary="rhaas extension: claim nodes from the upstream")
def grow(body: CountBody, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    names = pool.grow(db, caller, backend, body.count)
    return reply(names)


@router.post("/pool/shrink", summary="rhaas extension: give idle nodes back to the upstream")
def shrink(body: CountBody, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    names = pool.shrink(db, caller, backend, body.count)
    return reply(names)


@router.post("/pool/reconcile", summary="rhaas extension: compare with the upstream; fix drift if asked")
def reconcile(body: ReconcileBody, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    drift = pool.reconcile(db, caller, backend, body.fix)  # without fix it changes nothing
    return reply(drift.as_dict())
