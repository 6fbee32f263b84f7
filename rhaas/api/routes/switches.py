"""Routes: /switches, /switch/<switch>/…, ports and their NICs (admin-only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from rhaas.api.deps import DB, CurrentBackend, CurrentCaller, State, after_commit
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import NicRefBody, SwitchRegisterBody
from rhaas.core import switches

router = APIRouter(tags=["switches"])


@router.get("/switches")
def list_switches(db: DB, caller: CurrentCaller) -> Response:
    return reply(switches.list_switches(db, caller))


@router.put("/switch/{switch}")
def register_switch(switch: str, body: SwitchRegisterBody, db: DB, caller: CurrentCaller) -> Response:
    switches.register_switch(db, caller, switch, body.model_dump())
    return ok()


@router.delete("/switch/{switch}")
def delete_switch(switch: str, db: DB, caller: CurrentCaller) -> Response:
    switches.delete_switch(db, caller, switch)
    return ok()


@router.get("/switch/{switch}")
def show_switch(switch: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(switches.show_switch(db, caller, switch))


# Port names may contain "/", so the action routes must be registered before the bare port routes.
@router.get("/switch/{switch}/port/{port:path}/state", summary="rhaas extension: read a port back")
def port_state(switch: str, port: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    return reply(switches.port_state(db, caller, backend, switch, port))


@router.post("/switch/{switch}/port/{port:path}/connect_nic")
def connect_nic(
    switch: str,
    port: str,
    body: NicRefBody,
    db: DB,
    caller: CurrentCaller,
) -> Response:
    switches.connect_nic(db, caller, switch, port, body.node, body.nic)
    return ok()


@router.post("/switch/{switch}/port/{port:path}/detach_nic")
def detach_nic(switch: str, port: str, db: DB, caller: CurrentCaller) -> Response:
    switches.detach_nic(db, caller, switch, port)
    return ok()


@router.post("/switch/{switch}/port/{port:path}/revert")
def revert_port(switch: str, port: str, db: DB, caller: CurrentCaller, state: State) -> Response:
    status_id = switches.revert_port(db, caller, switch, port)
    after_commit(db, state.wake_worker)
    return reply({"status_id": status_id})


@router.put("/switch/{switch}/port/{port:path}")
def register_port(switch: str, port: str, db: DB, caller: CurrentCaller) -> Response:
    switches.register_port(db, caller, switch, port)
    return ok()


@router.delete("/switch/{switch}/port/{port:path}")
def delete_port(switch: str, port: str, db: DB, caller: CurrentCaller) -> Response:
    switches.delete_port(db, caller, switch, port)
    return ok()


@router.get("/switch/{switch}/port/{port:path}")
def show_port(switch: str, port: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(switches.show_port(db, caller, switch, port))
