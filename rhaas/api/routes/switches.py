"""Routes: /switches, /switch/<switch>/…, ports and their NICs (admin-only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from rhaas.api.deps import get_backend, get_caller, get_db
from rhaas.api.routes.common import ok, reply, wake_worker
from rhaas.api.schemas import NicRefBody, SwitchRegisterBody
from rhaas.backends.base import Backend
from rhaas.core import switches
from rhaas.core.access import Caller

router = APIRouter(tags=["switches"])


@router.get("/switches")
def list_switches(db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(switches.list_switches(db, caller))


@router.put("/switch/{switch}")
def register_switch(
    switch: str, body: SwitchRegisterBody, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    switches.register_switch(db, caller, switch, body.model_dump())
    db.commit()
    return ok()


@router.delete("/switch/{switch}")
def delete_switch(
    switch: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    switches.delete_switch(db, caller, switch)
    db.commit()
    return ok()


@router.get("/switch/{switch}")
def show_switch(switch: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(switches.show_switch(db, caller, switch))


# Port names may contain "/", so the action routes must be registered before the bare port routes.
@router.get("/switch/{switch}/port/{port:path}/state", summary="rhaas extension: read a port back")
def port_state(
    switch: str,
    port: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    return reply(switches.port_state(db, caller, backend, switch, port))


@router.post("/switch/{switch}/port/{port:path}/connect_nic")
def connect_nic(
    switch: str,
    port: str,
    body: NicRefBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    switches.connect_nic(db, caller, switch, port, body.node, body.nic)
    db.commit()
    return ok()


@router.post("/switch/{switch}/port/{port:path}/detach_nic")
def detach_nic(
    switch: str, port: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    switches.detach_nic(db, caller, switch, port)
    db.commit()
    return ok()


@router.post("/switch/{switch}/port/{port:path}/revert")
def revert_port(
    request: Request,
    switch: str,
    port: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    status_id = switches.revert_port(db, caller, switch, port)
    db.commit()
    wake_worker(request)
    return reply({"status_id": status_id})


@router.put("/switch/{switch}/port/{port:path}")
def register_port(
    switch: str, port: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    switches.register_port(db, caller, switch, port)
    db.commit()
    return ok()


@router.delete("/switch/{switch}/port/{port:path}")
def delete_port(
    switch: str, port: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    switches.delete_port(db, caller, switch, port)
    db.commit()
    return ok()


@router.get("/switch/{switch}/port/{port:path}")
def show_port(
    switch: str, port: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    return reply(switches.show_port(db, caller, switch, port))
