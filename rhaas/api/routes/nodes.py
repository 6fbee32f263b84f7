"""Routes: /nodes, /node/<node>/… (registration, NICs, metadata, OBM and power)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from rhaas.api.deps import DB, CurrentBackend, CurrentCaller
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
from rhaas.core import nodes, power

router = APIRouter(tags=["nodes"])


@router.get("/nodes/{is_free}")
def list_nodes(is_free: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(nodes.list_nodes(db, caller, is_free))


@router.put("/node/{node}")
def register_node(node: str, body: NodeRegisterBody, db: DB, caller: CurrentCaller) -> Response:
    obm = body.obm.model_dump() if body.obm is not None else None
    obmd = body.obmd.model_dump() if body.obmd is not None else None
    nodes.register_node(db, caller, node, obm, body.metadata, obmd=obmd)
    return ok()


@router.delete("/node/{node}")
def delete_node(node: str, db: DB, caller: CurrentCaller) -> Response:
    nodes.delete_node(db, caller, node)
    return ok()


@router.get("/node/{node}")
def show_node(node: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(nodes.show_node(db, caller, node))


@router.put("/node/{node}/nic/{nic}")
def add_nic(node: str, nic: str, body: NicBody, db: DB, caller: CurrentCaller) -> Response:
    nodes.add_nic(db, caller, node, nic, body.macaddr)
    return ok()


@router.delete("/node/{node}/nic/{nic}")
def remove_nic(node: str, nic: str, db: DB, caller: CurrentCaller) -> Response:
    nodes.remove_nic(db, caller, node, nic)
    return ok()


@router.put("/node/{node}/metadata/{label}")
def set_metadata(
    node: str,
    label: str,
    body: MetadataBody,
    db: DB,
    caller: CurrentCaller,
) -> Response:
    nodes.set_metadata(db, caller, node, label, body.value)
    return ok()


@router.delete("/node/{node}/metadata/{label}")
def delete_metadata(node: str, label: str, db: DB, caller: CurrentCaller) -> Response:
    nodes.delete_metadata(db, caller, node, label)
    return ok()


@router.put("/node/{node}/obm")
def set_obm(
    node: str, body: ObmEnableBody, db: DB, caller: CurrentCaller, backend: CurrentBackend
) -> Response:
    nodes.set_obm_enabled(db, caller, backend, node, body.enabled)
    return ok()


@router.put("/node/{node}/obm_credentials", summary="rhaas extension: rotate a node's BMC credentials")
def rotate_obm_credentials(node: str, body: ObmCredentialsBody, db: DB, caller: CurrentCaller) -> Response:
    nodes.rotate_obm_credentials(db, caller, node, body.user, body.password)
    return ok()


@router.post("/node/{node}/power_on")
def power_on(node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    power.power_on(db, caller, backend, node)
    return ok()


@router.post("/node/{node}/power_off")
def power_off(node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    power.power_off(db, caller, backend, node)
    return ok()


@router.post("/node/{node}/power_cycle")
def power_cycle(
    node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend, body: PowerCycleBody | None = None
) -> Response:
    force = body.force if body else False
    power.power_cycle(db, caller, backend, node, force)
    return ok()


@router.post("/node/{node}/power_nmi", summary="rhaas extension: send a diagnostic interrupt (NMI)")
def power_nmi(node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    power.send_nmi(db, caller, backend, node)
    return ok()


@router.get("/node/{node}/power_status")
def power_status(node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    return reply({"power_status": power.power_status(db, caller, backend, node)})


@router.put("/node/{node}/boot_device")
def boot_device(
    node: str, body: BootdevBody, db: DB, caller: CurrentCaller, backend: CurrentBackend
) -> Response:
    power.set_bootdev(db, caller, backend, node, body.bootdev)
    return ok()


@router.get("/node/{node}/console")
def console(node: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    stream: Iterator[bytes] = power.console(db, caller, backend, node)
    first = next(stream, b"")  # fail before the 200 if the BMC cannot give a console

    def chunks() -> Iterator[bytes]:
        yield first
        yield from stream

    return StreamingResponse(chunks(), media_type="text/plain")
