"""rhaas extensions: bulk node claims (any instance) and the free pool of a recursive instance (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from rhaas.api.deps import DB, CurrentCaller
from rhaas.api.routes.common import reply
from rhaas.api.schemas import Body
from rhaas.core import pool, projects
from rhaas.core.access import require_admin

router = APIRouter(tags=["pool (rhaas extension)"])


class CountBody(Body):
    count: int = Field(ge=1, le=1000)


class ReconcileBody(Body):
    fix: bool = False


@router.post("/project/{project}/connect_nodes", summary="rhaas extension: claim any N free nodes")
def connect_nodes(project: str, body: CountBody, db: DB, caller: CurrentCaller) -> Response:
    names = projects.connect_nodes(db, caller, project, body.count)
    return reply(names)


@router.get("/pool", summary="rhaas extension: the free pool and its upstream")
def show_pool(db: DB, caller: CurrentCaller) -> Response:
    require_admin(caller)
    up = pool.upstream_of(db)
    policy = pool.policy_of(db)
    total, free = pool.node_counts(db)
    return reply(
        {
            "upstream": {"url": up.url, "project": up.project} if up else None,
            "nodes": total,
            "free": free,
            "policy": policy.model_dump(),
        }
    )


@router.post("/pool/grow", summary="rhaas extension: claim nodes from the upstream")
def grow(body: CountBody, db: DB, caller: CurrentCaller) -> Response:
    names = pool.grow(db, caller, body.count)
    return reply(names)


@router.post("/pool/shrink", summary="rhaas extension: give idle nodes back to the upstream")
def shrink(body: CountBody, db: DB, caller: CurrentCaller) -> Response:
    names = pool.shrink(db, caller, body.count)
    return reply(names)


@router.post("/pool/reconcile", summary="rhaas extension: compare with the upstream; fix drift if asked")
def reconcile(body: ReconcileBody, db: DB, caller: CurrentCaller) -> Response:
    drift = pool.reconcile(db, caller, body.fix)  # without fix it changes nothing: committing is a no-op
    return reply(drift.as_dict())
