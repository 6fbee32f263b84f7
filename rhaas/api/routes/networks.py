"""Routes: /networks, /network/<network>/…, NIC connect/detach, /networking_action/<id>."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.orm import Session

from rhaas.api.deps import get_backend, get_caller, get_db
from rhaas.api.routes.common import ok, reply, wake_worker
from rhaas.api.schemas import ConnectNetworkBody, NetworkBody, NetworkCreateBody
from rhaas.backends.base import Backend
from rhaas.core import networks
from rhaas.core.access import Caller

router = APIRouter(tags=["networks"])


@router.get("/networks")
def list_networks(db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(networks.list_networks(db, caller))


@router.put("/network/{network}")
def create_network(
    network: str,
    body: NetworkCreateBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    networks.create_network(db, caller, backend, network, body.owner, body.access, body.net_id)
    db.commit()
    return ok()


@router.delete("/network/{network}")
def delete_network(
    network: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    networks.delete_network(db, caller, backend, network)
    db.commit()
    return ok()


@router.get("/network/{network}")
def show_network(
    network: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    return reply(networks.show_network(db, caller, network))


@router.get("/network/{network}/attachments")
def list_attachments(
    network: str,
    project: str | None = None,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    return reply(networks.list_attachments(db, caller, network, project))


@router.put("/network/{network}/access/{project}")
def grant_access(
    network: str, project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    networks.grant_access(db, caller, network, project)
    db.commit()
    return ok()


@router.delete("/network/{network}/access/{project}")
def revoke_access(
    network: str, project: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    networks.revoke_access(db, caller, network, project)
    db.commit()
    return ok()


@router.post("/node/{node}/nic/{nic}/connect_network", status_code=202)
def connect_network(
    request: Request,
    node: str,
    nic: str,
    body: ConnectNetworkBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    status_id = networks.connect_network(db, caller, node, nic, body.network, body.channel)
    db.commit()
    wake_worker(request)
    return reply({"status_id": status_id}, 202)


@router.post("/node/{node}/nic/{nic}/detach_network", status_code=202)
def detach_network(
    request: Request,
    node: str,
    nic: str,
    body: NetworkBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    status_id = networks.detach_network(db, caller, node, nic, body.network)
    db.commit()
    wake_worker(request)
    return reply({"status_id": status_id}, 202)


@router.get("/networking_action/{status_id}")
def show_action(
    request: Request,
    status_id: str,
    wait: float | None = Query(
        default=None, ge=0, le=30, description="rhaas extension: answer when no longer PENDING (≤ s)"
    ),
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    action = networks.show_action(db, caller, status_id)
    if wait:
        deadline = time.monotonic() + wait
        finished = request.app.state.actions_finished
        while action["status"] == "PENDING" and time.monotonic() < deadline:
            db.rollback()  # release the read (and SQLite's lock) while waiting
            with finished:
                finished.wait(min(0.02, max(deadline - time.monotonic(), 0)))
            action = networks.show_action(db, caller, status_id)
    return reply(action)
