"""Routes: fast provisioning (rhaas extension). ``/v0/node/<node>/provision``, the node's provisioning
state and history, provision jobs; and the FPBL agent's own API under ``/agent/v1`` (``agent_router``),
authenticated by each node's bearer secret rather than by users."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rhaas.api.deps import get_caller, get_db
from rhaas.api.routes.common import reply, wake_provisioning
from rhaas.api.routes.images import blob_response, file_response
from rhaas.api.schemas import AgentCheckinBody, AgentReportBody, EnrollBody, ProvisionBody
from rhaas.config import ProvisioningSettings
from rhaas.core import images, provisioning
from rhaas.core.access import Caller
from rhaas.db.models import NodeProvisioning
from rhaas.errors import BadArgumentError, IllegalStateError, NotFoundError, ValidationError
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


class WorkSignal:
    """Agents' held ``GET .../work`` requests wait here; a route of this process that queues work for a
    node (a provision, a detach) wakes them at once. Thread-safe: routes run in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def listening(self, node: str) -> Iterator[asyncio.Event]:
        """An event set when work is queued for ``node`` while the block runs (listen, then look)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(node, []).append(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiting = self._waiters.get(node, [])
                waiting.remove(entry)
                if not waiting:
                    del self._waiters[node]

    def notify(self, node: str) -> None:
        with self._lock:
            waiting = list(self._waiters.get(node, ()))
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)


def notify_work(request: Request, node: str) -> None:
    """Wake the agent of ``node`` if it is waiting for work on this server."""
    signal: WorkSignal | None = getattr(request.app.state, "work_signal", None)
    if signal is not None:
        signal.notify(node)


def _settings(request: Request) -> ProvisioningSettings:
    settings: ProvisioningSettings = request.app.state.settings.provisioning
    if not settings.enabled:
        raise IllegalStateError("Fast provisioning is not enabled on this instance ([provisioning] enabled).")
    return settings


@router.put("/node/{node}/fpbl", summary="rhaas extension: enrol a free node for fast provisioning")
def enroll(
    node: str,
    request: Request,
    body: EnrollBody | None = None,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    settings = _settings(request)
    agent_url = (body.agent_url if body else None) or settings.agent_url
    if not agent_url:
        raise BadArgumentError("No agent_url given, and [provisioning] agent_url is not set.")
    answer = provisioning.enroll(db, caller, node, agent_url.rstrip("/"), settings)
    db.commit()
    wake_provisioning(request)
    return reply(answer)


@router.post("/node/{node}/provision", summary="rhaas extension: deploy an image on a ready node")
def provision(
    node: str,
    body: ProvisionBody,
    request: Request,
    db: Session = Depends(get_db),
    caller: Caller = Depends(get_caller),
) -> Response:
    job = provisioning.provision(db, caller, node, body.image, _settings(request))
    db.commit()
    notify_work(request, node)
    return reply({"job_id": job}, status=202)


@router.get("/node/{node}/provisioning", summary="rhaas extension: a node's provisioning state and history")
def node_provisioning(
    node: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)
) -> Response:
    return reply(provisioning.show_node_provisioning(db, caller, node))


@router.get("/provision_job/{job_id}", summary="rhaas extension: a provision or return job")
def show_job(job_id: str, db: Session = Depends(get_db), caller: Caller = Depends(get_caller)) -> Response:
    return reply(provisioning.show_job(db, caller, job_id))


# --- the agent's API -------------------------------------------------------------------------------


def _agent(request: Request, node: str, db: Session, params: tuple[str, ...] = ()) -> NodeProvisioning:
    """The calling agent's node, authenticated first (so strangers learn nothing, not even the setting)."""
    row = provisioning.agent_row(db, node, request.headers.get("authorization"))
    _settings(request)
    unknown = [key for key in request.query_params if key not in params]
    if unknown:
        raise ValidationError(
            f"Request arguments are not valid for this request: unknown {unknown[0][:40]!r}"
            + (f" (it takes {', '.join(params)})." if params else " (it takes no parameters).")
        )
    return row


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
def agent_checkin(
    node: str, body: AgentCheckinBody, request: Request, db: Session = Depends(get_db)
) -> Response:
    row = _agent(request, node, db)
    provisioning.checkin(db, row, body.model_dump())
    db.commit()
    return reply({})


@agent_router.get("/nodes/{node}/work")
async def agent_work(node: str, request: Request) -> Response:
    """What the agent does next. ``?wait=S`` holds the request up to S seconds while there is nothing to
    do (a long poll): work queued for the node on this server answers it at once, work queued on another
    server within WORK_RECHECK seconds."""

    def look() -> dict[str, Any]:
        with request.app.state.sessions() as db:
            row = _agent(request, node, db, params=("wait",))
            wait = _wait_seconds(request)
            answer = provisioning.work(db, row, str(request.base_url).rstrip("/"), _settings(request))
            db.commit()
        return {"answer": answer, "wait": wait}

    signal: WorkSignal = request.app.state.work_signal
    started = time.monotonic()
    while True:
        with signal.listening(node) as woken:
            looked = await run_in_threadpool(look)
            answer, left = looked["answer"], started + looked["wait"] - time.monotonic()
            if answer["action"] != "wait":
                return reply(answer)
            if left <= 0:
                if looked["wait"] > 0:
                    answer["poll_after"] = 0  # waited here already: ask again at once
                return reply(answer)
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(WORK_RECHECK, left))


@agent_router.post("/nodes/{node}/report")
def agent_report(
    node: str, body: AgentReportBody, request: Request, db: Session = Depends(get_db)
) -> Response:
    row = _agent(request, node, db)
    provisioning.report(db, row, body.model_dump(exclude_none=True))
    db.commit()
    wake_provisioning(request)
    return reply({})


@agent_router.get("/nodes/{node}/blobs/{sha256}")
def agent_blob(node: str, sha256: str, request: Request, db: Session = Depends(get_db)) -> Response:
    """A blob of the image the node is being deployed with; nothing else (Range supported)."""
    row = _agent(request, node, db)
    digest = images.check_sha256(sha256)
    allowed = provisioning.deploy_blobs(db, row)
    if digest not in allowed:
        raise NotFoundError(f"Blob {digest} is not part of this node's deploy.")
    return blob_response(request, db, digest)


# --- network boot ------------------------------------------------------------------------------------


def _boot_settings(request: Request) -> tuple[ProvisioningSettings, str, str]:
    settings = _settings(request)
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
def boot_chain(request: Request) -> Response:
    _, base, _ = _boot_settings(request)
    return _script(f"#!ipxe\nchain {base}/boot/v1/ipxe/${{net0/mac}}\n")


@boot_router.get("/ipxe/{mac}", summary="A node's network boot: the FPBL with a fresh agent secret")
def boot_node(mac: str, request: Request, db: Session = Depends(get_db)) -> Response:
    settings, base, agent_url = _boot_settings(request)
    try:
        cmdline = load_exported(Path(settings.fpbl_dir or "")).cmdline
    except (OSError, ValueError, KeyError) as exc:
        raise IllegalStateError(f"The FPBL in [provisioning] fpbl_dir cannot be read: {exc}") from None
    text = provisioning.boot_script(db, mac, base, agent_url, cmdline)
    db.commit()
    return _script(text)


@boot_router.get("/fpbl/{name}", summary="The FPBL's kernel (vmlinuz) or initrd (Range supported)")
def boot_file(name: str, request: Request) -> Response:
    settings, _, _ = _boot_settings(request)
    if name not in FPBL_FILES:
        raise NotFoundError(f"The FPBL has no file {name[:40]!r}; it has {', '.join(FPBL_FILES)}.")
    path = Path(settings.fpbl_dir or "") / name
    if not path.is_file():
        raise IllegalStateError(f"The FPBL's {name} is missing from [provisioning] fpbl_dir.")
    return file_response(request, path)
