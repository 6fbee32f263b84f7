"""rhaas extensions: bulk node claims (any instance) and the free pool of a recursive instance (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import Field
from sqlalchemy.orm import Session

from rhaas.api.deps import get_backend, get_caller, get_db
from rhaas.api.routes.common import reply
from rhaas.api.schemas import Body
from rhaas.backends.base import Backend
from rhaas.core import pool, projects
from rhaas.core.access import Caller

router = APIRouter(tags=["pool (rhaas extension)"])


class CountBody(Body):
    count: int = Field(ge=1, le=1000)


class ReconcileBody(Body):
    fix: bool = False


@router.post("/project/{project}/connect_nodes", summary="rhaas extension: claim any N free nodes")
def connect_nodes(
    project: str,
    body: CountBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    names = projects.connect_nodes(db, caller, backend, project, body.count)
    db.commit()
    return reply(names)


@router.get("/pool", summary="rhaas extension: the free pool and its upstream")
def show_pool(
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    return reply(pool.show_pool(db, caller, backend))


@router.post("/pool/grow", summary="rhaas extension: claim nodes from the upstream")
def grow(
    body: CountBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    names = pool.grow(db, caller, backend, body.count)
    db.commit()
    return reply(names)


@router.post("/pool/shrink", summary="rhaas extension: give idle nodes back to the upstream")
def shrink(
    body: CountBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    names = pool.shrink(db, caller, backend, body.count)
    db.commit()
    return reply(names)


@router.post("/pool/reconcile", summary="rhaas extension: compare with the upstream; fix drift if asked")
def reconcile(
    body: ReconcileBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    drift = pool.reconcile(db, caller, backend, body.fix)
    if body.fix:
        db.commit()
    return reply(drift.as_dict())
