"""Routes: /projects, /project/<project>/…"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from rhaas.api.deps import get_backend, get_caller, get_db
from rhaas.api.routes.common import ok, reply, wake_provisioning
from rhaas.api.routes.provisioning import notify_work
from rhaas.api.schemas import NodeBody
from rhaas.backends.base import Backend
from rhaas.core import projects
from rhaas.core.access import Caller

router = APIRouter(tags=["projects"])


@router.get("/projects")
def list_projects(db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(projects.list_projects(db, caller))


@router.put("/project/{project}")
def create_project(
    project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    projects.create_project(db, caller, project)
    db.commit()
    return ok()


@router.delete("/project/{project}")
def delete_project(
    project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    projects.delete_project(db, caller, project)
    db.commit()
    return ok()


@router.post("/project/{project}/connect_node")
def connect_node(
    project: str,
    body: NodeBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    projects.connect_node(db, caller, backend, project, body.node)
    db.commit()
    return ok()


@router.post("/project/{project}/detach_node")
def detach_node(
    project: str,
    body: NodeBody,
    request: Request,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    projects.detach_node(db, caller, project, body.node, request.app.state.settings.provisioning)
    db.commit()
    wake_provisioning(request)  # a node under fast provisioning is returned now: its NMI goes at once
    notify_work(request, body.node)  # and an FPBL waiting for work (a node never deployed) wipes it now
    return ok()


@router.get("/project/{project}/nodes")
def project_nodes(
    project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    return reply(projects.list_project_nodes(db, caller, project))


@router.get("/project/{project}/networks")
def project_networks(
    project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    return reply(projects.list_project_networks(db, caller, project))
