"""Routes: fast provisioning (rhaas extension). ``/v0/node/<node>/provision``, the node's provisioning state
and history, provision jobs, fleet-sized requests and their groups (``router``, on the customer API); and,
for the provisioning-network app only (rhaas.api.app.create_agent_app), the FPBL agent's own API under
``/agent/v1`` (``agent_router``), authenticated by each node's bearer secret (a check-in also by its
deploy's return token) rather than by users, and the network boot under ``/boot/v1`` (``boot_router``).
Those two must never be included in the customer API: they hand out and accept agent secrets."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rhaas.api.deps import DB, CurrentCaller, State, after_commit, unit_of_work
from rhaas.api.routes.common import reply
from rhaas.api.routes.images import blob_response, file_response
from rhaas.api.schemas import (
    AgentCheckinBody,
    AgentPeersBody,
    AgentReportBody,
    EnrollBody,
    ProvisionBody,
    ProvisionGroupBody,
)
from rhaas.api.state import AppState
from rhaas.config import ProvisioningSettings
from rhaas.core import images, provisioning
from rhaas.db.models import NodeProvisioning
from rhaas.errors import BadArgumentError, IllegalStateError, NotFoundError, ValidationError
from rhaas.notify import work_key
from rhaas.provisioning.manifest import load_exported

router = APIRouter(tags=["provisioning"])
agent_router = APIRouter(prefix="/agent/v1", tags=["agent"])
#: What a node's firmware fetches in a network boot (no credentials: iPXE has none to give).
boot_router = APIRouter(prefix="/boot/v1", tags=["boot"])
FPBL_FILES = ("vmlinuz", "initrd")
#: The longest an agent's ``GET .../work?wait=`` is held open (a longer wait is cut to this).
MAX_WORK_WAIT = 25.0
#: How often a held request reads the database again, for work another API server queued.
WORK_RECHECK = 2.0


def _settings(state: AppState) -> ProvisioningSettings:
    settings = state.settings.provisioning
    if not settings.enabled:
        raise IllegalStateError("Fast provisioning is not enabled on this instance ([provisioning] enabled).")
    return settings


@router.put("/node/{node}/fpbl", summary="rhaas extension: enrol a free node for fast provisioning")
def enroll(
    node: str, db: DB, caller: CurrentCaller, state: State, body: EnrollBody | None = None
) -> Response:
    settings = _settings(state)
    agent_url = (body.agent_url if body else None) or settings.agent_url
    if not agent_url:
        raise BadArgumentError("No agent_url given, and [provisioning] agent_url is not set.")
    answer = provisioning.enroll(db, caller, node, agent_url.rstrip("/"), settings, state.agent_pin)
    after_commit(db, state.wake_ticker)
    return reply(answer)


@router.post("/node/{node}/provision", summary="rhaas extension: deploy an image on a ready node")
def provision(node: str, body: ProvisionBody, db: DB, caller: CurrentCaller, state: State) -> Response:
    seed = body.model_dump(exclude={"image"})
    job = provisioning.provision(db, caller, node, body.image, _settings(state), seed)
    after_commit(db, state.notify_work, node)
    return reply({"job_id": job}, status=202)


@router.post("/provision_group", summary="rhaas extension: deploy an image on many nodes, all or none")
def provision_group(body: ProvisionGroupBody, db: DB, caller: CurrentCaller, state: State) -> Response:
    seed = body.model_dump(exclude={"image", "nodes"})
    group = provisioning.provision_group(db, caller, body.nodes, body.image, _settings(state), seed)
    for node in group["jobs"]:
        after_commit(db, state.notify_work, node)
    return reply(group, status=202)


@router.get("/provision_group/{group_id}", summary="rhaas extension: a provision group's progress")
def show_group(group_id: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(provisioning.show_group(db, caller, group_id))


@router.get("/node/{node}/provisioning", summary="rhaas extension: a node's provisioning state and history")
def node_provisioning(node: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(provisioning.show_node_provisioning(db, caller, node))


@router.get("/provision_job/{job_id}", summary="rhaas extension: a provision or return job")
def show_job(job_id: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(provisioning.show_job(db, caller, job_id))


# --- the agent's API -------------------------------------------------------------------------------


def _agent(
    request: Request, state: AppState, node: str, db: Session, params: tuple[str, ...] = ()
) -> NodeProvisioning:
    """The calling agent's node, authenticated first (so strangers learn nothing, not even the setting)."""
    row = provisioning.agent_row(db, node, request.headers.get("authorization"))
    _agent_settings(request, state, params)
    return row


def _agent_settings(request: Request, state: AppState, params: tuple[str, ...] = ()) -> None:
    """After authentication: fast provisioning is on, and the request has only the arguments it takes."""
    _settings(state)
    unknown = [key for key in request.query_params if key not in params]
    if unknown:
        raise ValidationError(
            f"Request arguments are not valid for this request: unknown {unknown[0][:40]!r}"
            + (f" (it takes {', '.join(params)})." if params else " (it takes no parameters).")
        )


def _wait_seconds(request: Request) -> float:
    """``?wait=`` of a work request: seconds, 0 (the default) to answer at once, cut to MAX_WORK_WAIT."""
    values = request.query_params.getlist("wait")
    if not values:
        return 0.0
    try:
        if len(values) > 1:
            raise ValueError
        seconds = float(values[0])
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError
    except ValueError:
        raise ValidationError(
            f"wait={values[-1][:40]!r} is not a number of seconds (0 or more; at most"
            f" {MAX_WORK_WAIT:g} are used)."
        ) from None
    return min(seconds, MAX_WORK_WAIT)


@agent_router.post("/nodes/{node}/checkin")
def agent_checkin(node: str, body: AgentCheckinBody, request: Request, db: DB, state: State) -> Response:
    """A check-in, by the agent's secret or (the return FPBL) by its deploy's return token, which it
    trades here for a fresh secret (``{"secret"}`` in the answer)."""
    row, by_token = provisioning.checkin_row(db, node, request.headers.get("authorization"))
    _agent_settings(request, state)
    return reply(provisioning.checkin(db, row, body.model_dump(), by_token, _settings(state)))


@agent_router.get("/nodes/{node}/work")
async def agent_work(node: str, request: Request, state: State) -> Response:
    """What the agent does next. ``?wait=S`` holds the request up to S seconds while there is nothing to
    do (a long poll): work queued for the node on this server answers it at once, work queued on another
    server within WORK_RECHECK seconds."""

    def look() -> dict[str, Any]:
        with unit_of_work(state.sessions) as db:
            row = _agent(request, state, node, db, params=("wait",))
            wait = _wait_seconds(request)
            answer = provisioning.work(db, row, str(request.base_url).rstrip("/"), _settings(state))
        return {"answer": answer, "wait": wait}

    started = time.monotonic()
    while True:
        with state.notifier.listening(work_key(node)) as woken:
            looked = await run_in_threadpool(look)
            answer, left = looked["answer"], started + looked["wait"] - time.monotonic()
            if answer["action"] != "wait":
                return reply(answer)
            if left <= 0:
                if looked["wait"] > 0:
                    answer["poll_after"] = 0  # waited here already: ask again at once
                return reply(answer)
            await woken.wait(min(WORK_RECHECK, left))


@agent_router.post("/nodes/{node}/report")
def agent_report(node: str, body: AgentReportBody, request: Request, db: DB, state: State) -> Response:
    row = _agent(request, state, node, db)
    provisioning.report(db, row, body.model_dump(exclude_none=True), _settings(state))
    after_commit(db, state.wake_ticker)
    return reply({})


@agent_router.post("/nodes/{node}/peers")
def agent_peers(node: str, body: AgentPeersBody, request: Request, db: DB, state: State) -> Response:
    """The peer-exchange tracker: the other agents deploying the node's image, what each holds, and the
    chunks this one may fetch from the server ([provisioning] peer_exchange)."""
    row = _agent(request, state, node, db)
    if not _settings(state).peer_exchange:
        raise IllegalStateError(
            "The agents' peer exchange is off on this instance ([provisioning] peer_exchange)."
        )
    address = (
        str(body.address) if body.address is not None else (request.client.host if request.client else "")
    )
    if not address:
        raise BadArgumentError("No address given, and the caller's is unknown.")
    dropped = [(str(p.address), p.port) for p in body.dropped]
    settings = _settings(state)
    mbit = settings.peer_multicast_mbit
    multicast = (settings.peer_port, mbit * 125_000.0) if mbit else None
    answer = provisioning.peer_announce(
        db, row, state.tracker, address, body.port, body.have, dropped, multicast
    )
    return reply(answer)


@agent_router.get("/nodes/{node}/blobs/{sha256}")
def agent_blob(node: str, sha256: str, request: Request, db: DB, state: State) -> Response:
    """A blob of the image the node is being deployed with; nothing else (Range supported)."""
    row = _agent(request, state, node, db)
    digest = images.check_sha256(sha256)
    allowed = provisioning.deploy_blobs(db, row)
    if digest not in allowed:
        raise NotFoundError(f"Blob {digest} is not part of this node's deploy.")
    return blob_response(request, state.blobs, db, digest)


@agent_router.get("/nodes/{node}/chunks/{sha256}")
def agent_chunk(node: str, sha256: str, request: Request, db: DB, state: State) -> Response:
    """A chunk of the whole-disk image the node is being deployed with; nothing else."""
    row = _agent(request, state, node, db)
    data = provisioning.deploy_chunk(db, row, images.check_sha256(sha256))
    return Response(data, media_type="application/octet-stream")


# --- network boot ------------------------------------------------------------------------------------


def _boot_settings(request: Request, state: AppState) -> tuple[ProvisioningSettings, str, str]:
    settings = _settings(state)
    if request.query_params:
        raise ValidationError("Request arguments are not valid for this request: it takes no parameters.")
    if not settings.boot_url or not settings.fpbl_dir or not settings.agent_url:
        raise IllegalStateError(
            "Network boot is not set up here ([provisioning] boot_url, fpbl_dir and agent_url)."
        )
    return settings, settings.boot_url.rstrip("/"), settings.agent_url.rstrip("/")


def _script(text: str) -> Response:
    return Response(text, media_type="text/plain")


@boot_router.get("/ipxe", summary="The DHCP boot file: chains to the script of the booting NIC's MAC")
def boot_chain(request: Request, state: State) -> Response:
    _, base, _ = _boot_settings(request, state)
    return _script(f"#!ipxe\nchain {base}/boot/v1/ipxe/${{net0/mac}}\n")


@boot_router.get("/ipxe/{mac}", summary="A node's network boot: the FPBL with a fresh agent secret")
def boot_node(mac: str, request: Request, db: DB, state: State) -> Response:
    settings, base, agent_url = _boot_settings(request, state)
    try:
        cmdline = load_exported(Path(settings.fpbl_dir or "")).cmdline
    except (OSError, ValueError, KeyError) as exc:
        raise IllegalStateError(f"The FPBL in [provisioning] fpbl_dir cannot be read: {exc}") from None
    cmdline = f"{cmdline} {settings.fpbl_args}".strip()
    text = provisioning.boot_script(db, mac, base, agent_url, cmdline, state.agent_pin)
    return _script(text)


@boot_router.get("/fpbl/{name}", summary="The FPBL's kernel (vmlinuz) or initrd (Range supported)")
def boot_file(name: str, request: Request, state: State) -> Response:
    settings, _, _ = _boot_settings(request, state)
    if name not in FPBL_FILES:
        raise NotFoundError(f"The FPBL has no file {name[:40]!r}; it has {', '.join(FPBL_FILES)}.")
    path = Path(settings.fpbl_dir or "") / name
    if not path.is_file():
        raise IllegalStateError(f"The FPBL's {name} is missing from [provisioning] fpbl_dir.")
    return file_response(request, path)
