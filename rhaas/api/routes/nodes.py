"""Routes: /nodes, /node/<node>/… (registration, NICs, metadata, OBM and power)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from rhaas.api.deps import get_backend, get_caller, get_db
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import (
    BootdevBody,
    MetadataBody,
    NicBody,
    NodeRegisterBody,
    ObmCredentialsBody,
    ObmEnableBody,
    PowerCycleBody,
)
from rhaas.backends.base import Backend
from rhaas.core import nodes, power
from rhaas.core.access import Caller

router = APIRouter(tags=["nodes"])


@router.get("/nodes/{is_free}")
def list_nodes(is_free: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(nodes.list_nodes(db, caller, is_free))


@router.put("/node/{node}")
def register_node(
    node: str, body: NodeRegisterBody, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.register_node(db, caller, node, body.obm.model_dump(), body.metadata)
    db.commit()
    return ok()


@router.delete("/node/{node}")
def delete_node(node: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    nodes.delete_node(db, caller, node)
    db.commit()
    return ok()


@router.get("/node/{node}")
def show_node(node: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(nodes.show_node(db, caller, node))


@router.put("/node/{node}/nic/{nic}")
def add_nic(
    node: str, nic: str, body: NicBody, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.add_nic(db, caller, node, nic, body.macaddr)
    db.commit()
    return ok()


@router.delete("/node/{node}/nic/{nic}")
def remove_nic(
    node: str, nic: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.remove_nic(db, caller, node, nic)
    db.commit()
    return ok()


@router.put("/node/{node}/metadata/{label}")
def set_metadata(
    node: str,
    label: str,
    body: MetadataBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    nodes.set_metadata(db, caller, node, label, body.value)
    db.commit()
    return ok()


@router.delete("/node/{node}/metadata/{label}")
def delete_metadata(
    node: str, label: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.delete_metadata(db, caller, node, label)
    db.commit()
    return ok()


@router.put("/node/{node}/obm")
def set_obm(
    node: str, body: ObmEnableBody, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.set_obm_enabled(db, caller, node, body.enabled)
    db.commit()
    return ok()


@router.put("/node/{node}/obm_credentials", summary="rhaas extension: rotate a node's BMC credentials")
def rotate_obm_credentials(
    node: str, body: ObmCredentialsBody, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    nodes.rotate_obm_credentials(db, caller, node, body.user, body.password)
    db.commit()
    return ok()


@router.post("/node/{node}/power_on")
def power_on(
    node: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    power.power_on(db, caller, backend, node)
    return ok()


@router.post("/node/{node}/power_off")
def power_off(
    node: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    power.power_off(db, caller, backend, node)
    return ok()


@router.post("/node/{node}/power_cycle")
def power_cycle(
    node: str,
    body: PowerCycleBody | None = None,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    force = body.force if body else False
    power.power_cycle(db, caller, backend, node, force)
    return ok()


@router.post("/node/{node}/power_nmi", summary="rhaas extension: send a diagnostic interrupt (NMI)")
def power_nmi(
    node: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    power.send_nmi(db, caller, backend, node)
    return ok()


@router.get("/node/{node}/power_status")
def power_status(
    node: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    return reply({"power_status": power.power_status(db, caller, backend, node)})


@router.put("/node/{node}/boot_device")
def boot_device(
    node: str,
    body: BootdevBody,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    power.set_bootdev(db, caller, backend, node, body.bootdev)
    return ok()


@router.get("/node/{node}/console")
def console(
    node: str,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
    backend: Backend = Depends(get_backend),
) -> Response:
    stream: Iterator[bytes] = power.console(db, caller, backend, node)
    first = next(stream, b"")  # fail before the 200 if the BMC cannot give a console

    def chunks() -> Iterator[bytes]:
        yield first
        yield from stream

    return StreamingResponse(chunks(), media_type="text/plain")
