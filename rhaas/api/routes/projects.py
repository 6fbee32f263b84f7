"""Routes: /projects, /project/<project>/…"""

from __future__ import annotations

from fastapi import APIRouter, Response

from rhaas.api.deps import DB, CurrentBackend, CurrentCaller, State, after_commit
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import NodeBody
from rhaas.core import projects

router = APIRouter(tags=["projects"])


@router.get("/projects")
def list_projects(db: DB, caller: CurrentCaller) -> Response:
    return reply(projects.list_projects(db, caller))


@router.put("/project/{project}")
def create_project(project: str, db: DB, caller: CurrentCaller) -> Response:
    projects.create_project(db, caller, project)
    return ok()


@router.delete("/project/{project}")
def delete_project(project: str, db: DB, caller: CurrentCaller) -> Response:
    projects.delete_project(db, caller, project)
    return ok()


@router.post("/project/{project}/connect_node")
def connect_node(
    project: str, body: NodeBody, db: DB, caller: CurrentCaller, backend: CurrentBackend
) -> Response:
    projects.connect_node(db, caller, backend, project, body.node)
    return ok()


@router.post("/project/{project}/detach_node")
def detach_node(
    project: str,
    body: NodeBody,
    db: DB,
    caller: CurrentCaller,
    state: State,
) -> Response:
    projects.detach_node(db, caller, project, body.node, state.settings.provisioning)
    # A node under fast provisioning is returned now: its NMI goes at once; and an FPBL waiting for
    # work (a node never deployed) wipes it now.
    after_commit(db, state.wake_ticker)
    after_commit(db, state.notify_work, body.node)
    return ok()


@router.get("/project/{project}/nodes")
def project_nodes(project: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(projects.list_project_nodes(db, caller, project))


@router.get("/project/{project}/networks")
def project_networks(project: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(projects.list_project_networks(db, caller, project))
