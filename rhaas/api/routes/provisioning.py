"""Routes: fast provisioning (rhaas extension). ``/v0/node/<node>/provision``, the node's provisioning
state and history, provision jobs; and the FPBL agent's own API under ``/agent/v1`` (``agent_router``),
authenticated by each node's bearer secret rather than by users."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from rhaas.api.deps import get_caller, get_db
from rhaas.api.routes.common import reply, wake_provisioning
from rhaas.api.routes.images import blob_response, file_response
from rhaas.api.schemas import AgentCheckinBody, AgentReportBody, EnrollBody, ProvisionBody
from rhaas.config import ProvisioningSettings
from rhaas.core import images, provisioning
from rhaas.core.access import Caller
from rhaas.db.models import NodeProvisioning
from rhaas.errors import BadArgumentError, IllegalStateError, NotFoundError, ValidationError
from rhaas.provisioning.fpbl import load_exported

router = APIRouter(tags=["provisioning"])
agent_router = APIRouter(prefix="/agent/v1", tags=["agent"])
#: What a node's firmware fetches in a network boot (no credentials: iPXE has none to give).
boot_router = APIRouter(prefix="/boot/v1", tags=["boot"])
FPBL_FILES = ("vmlinuz", "initrd")


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


def _agent(request: Request, node: str, db: Session) -> NodeProvisioning:
    """The calling agent's node, authenticated first (so strangers learn nothing, not even the setting)."""
    row = provisioning.agent_row(db, node, request.headers.get("authorization"))
    _settings(request)
    if request.query_params:
        raise ValidationError("Request arguments are not valid for this request: it takes no parameters.")
    return row


@agent_router.post("/nodes/{node}/checkin")
def agent_checkin(
    node: str, body: AgentCheckinBody, request: Request, db: Session = Depends(get_db)
) -> Response:
    row = _agent(request, node, db)
    provisioning.checkin(db, row, body.model_dump())
    db.commit()
    return reply({})


@agent_router.get("/nodes/{node}/work")
def agent_work(node: str, request: Request, db: Session = Depends(get_db)) -> Response:
    row = _agent(request, node, db)
    base = str(request.base_url).rstrip("/")
    answer = provisioning.work(db, row, base, _settings(request))
    db.commit()
    return reply(answer)


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
