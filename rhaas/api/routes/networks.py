"""Routes: /networks, /network/<network>/…, NIC connect/detach, /networking_action/<id>."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from rhaas.api.deps import DB, CurrentBackend, CurrentCaller, State, after_commit
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import ConnectNetworkBody, NetworkBody, NetworkCreateBody
from rhaas.core import networks
from rhaas.notify import ACTIONS

router = APIRouter(tags=["networks"])
#: How often a held ``GET /networking_action/<id>?wait=`` reads the action again (a worker of another
#: process may finish it; this process's worker wakes the request at once).
ACTION_RECHECK = 0.02


@router.get("/networks")
def list_networks(db: DB, caller: CurrentCaller) -> Response:
    return reply(networks.list_networks(db, caller))


@router.put("/network/{network}")
def create_network(
    network: str, body: NetworkCreateBody, db: DB, caller: CurrentCaller, backend: CurrentBackend
) -> Response:
    networks.create_network(db, caller, backend, network, body.owner, body.access, body.net_id)
    return ok()


@router.delete("/network/{network}")
def delete_network(network: str, db: DB, caller: CurrentCaller, backend: CurrentBackend) -> Response:
    networks.delete_network(db, caller, backend, network)
    return ok()


@router.get("/network/{network}")
def show_network(network: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(networks.show_network(db, caller, network))


@router.get("/network/{network}/attachments")
def list_attachments(network: str, db: DB, caller: CurrentCaller, project: str | None = None) -> Response:
    return reply(networks.list_attachments(db, caller, network, project))


@router.put("/network/{network}/access/{project}")
def grant_access(network: str, project: str, db: DB, caller: CurrentCaller) -> Response:
    networks.grant_access(db, caller, network, project)
    return ok()


@router.delete("/network/{network}/access/{project}")
def revoke_access(network: str, project: str, db: DB, caller: CurrentCaller) -> Response:
    networks.revoke_access(db, caller, network, project)
    return ok()


@router.post("/node/{node}/nic/{nic}/connect_network", status_code=202)
def connect_network(
    node: str, nic: str, body: ConnectNetworkBody, db: DB, caller: CurrentCaller, state: State
) -> Response:
    status_id = networks.connect_network(db, caller, node, nic, body.network, body.channel)
    after_commit(db, state.wake_worker)
    return reply({"status_id": status_id}, 202)


@router.post("/node/{node}/nic/{nic}/detach_network", status_code=202)
def detach_network(
    node: str, nic: str, body: NetworkBody, db: DB, caller: CurrentCaller, state: State
) -> Response:
    status_id = networks.detach_network(db, caller, node, nic, body.network)
    after_commit(db, state.wake_worker)
    return reply({"status_id": status_id}, 202)


@router.get("/networking_action/{status_id}")
async def show_action(
    status_id: str,
    db: DB,
    caller: CurrentCaller,
    state: State,
    wait: Annotated[
        float | None, Query(ge=0, le=30, description="rhaas extension: answer when no longer PENDING (≤ s)")
    ] = None,
) -> Response:
    # ?wait=S holds the request up to S seconds while the action is PENDING: on the event loop, not in a
    # thread of the pool. (A comment, not a docstring: that would change the OpenAPI document.)

    def look() -> dict[str, Any]:
        action = networks.show_action(db, caller, status_id)
        db.rollback()  # release the read (and SQLite's lock) while waiting
        return action

    if not wait:
        return reply(await run_in_threadpool(networks.show_action, db, caller, status_id))
    deadline = time.monotonic() + wait
    with state.notifier.listening(ACTIONS) as finished:
        action = await run_in_threadpool(look)
        while action["status"] == "PENDING" and time.monotonic() < deadline:
            await finished.wait(min(ACTION_RECHECK, deadline - time.monotonic()))
            action = await run_in_threadpool(look)
    return reply(action)
