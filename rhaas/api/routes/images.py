"""Routes: /images, /image/<image> (an rhaas extension in HIL's style), the blob store, /blob/<sha256>,
and the chunk store of whole-disk images, /chunk/<sha256> and /chunks/....

Blobs and chunks are uploaded as raw bytes (``PUT /v0/blob/<sha256>``, ``PUT /v0/chunk/<sha256>``, any
Content-Type), so ``blob_router`` is mounted without the JSON input checks of the other routers.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rhaas.api.deps import DB, CurrentCaller, State
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import ChunkPruneBody, ChunkQueryBody, DiskManifestBody, ImageRegisterBody
from rhaas.core import chunks, images
from rhaas.errors import BadArgumentError, NotFoundError, ValidationError

router = APIRouter(tags=["images"])
blob_router = APIRouter(tags=["images"])


@router.get("/images")
def list_images(db: DB, caller: CurrentCaller) -> Response:
    return reply(images.list_images(db, caller))


@router.put("/image/{image}")
def register_image(image: str, body: ImageRegisterBody, db: DB, caller: CurrentCaller) -> Response:
    """Register a kernel + initrd image, or a whole-disk image from its manifest (``disk`` an object)."""
    if isinstance(body.disk, DiskManifestBody):
        disk = body.disk
        manifest = chunks.check_manifest(
            disk.format,
            disk.virtual_size,
            disk.logical_sha256,
            ((e.offset, e.length, e.sha256) for e in disk.extents),
        )
        images.register_disk_image(
            db,
            caller,
            image,
            manifest,
            project=body.project,
            kernel=body.kernel,
            initrd=body.initrd,
            cmdline=body.cmdline,
        )
        return ok()
    images.register_image(
        db,
        caller,
        image,
        project=body.project,
        kernel=body.kernel,
        initrd=body.initrd,
        disk=body.disk,
        cmdline=body.cmdline,
    )
    return ok()


@router.get("/image/{image}")
def show_image(image: str, db: DB, caller: CurrentCaller) -> Response:
    return reply(images.show_image(db, caller, image))


@router.get("/image/{image}/manifest")
def image_manifest(image: str, db: DB, caller: CurrentCaller) -> Response:
    """A whole-disk image's extents, in order: what to fetch (``GET /v0/chunk/<sha256>``) to rebuild it."""
    return reply(images.image_manifest(db, caller, image))


@router.delete("/image/{image}")
def delete_image(image: str, db: DB, caller: CurrentCaller) -> Response:
    images.delete_image(db, caller, image)
    return ok()


@router.post("/chunks/missing")
def missing_chunks(body: ChunkQueryBody, db: DB, caller: CurrentCaller) -> Response:
    """Which of these chunks the caller must upload: ``{"missing": [...]}``."""
    return reply({"missing": chunks.missing_chunks(db, caller, body.sha256)})


@router.post("/chunks/prune")
def prune_chunks(body: ChunkPruneBody, db: DB, caller: CurrentCaller) -> Response:
    """Delete uploaded chunks no image holds, older than ``min_age`` seconds (admins)."""
    return reply(chunks.prune(db, caller, body.min_age))


def _no_query(request: Request) -> None:
    if request.query_params:
        raise ValidationError("Request arguments are not valid for this request: it takes no parameters.")


@blob_router.put("/blob/{sha256}")
async def upload_blob(sha256: str, request: Request, db: DB, caller: CurrentCaller, state: State) -> Response:
    """Store the request's bytes under their sha256; refused unless they hash to ``sha256``."""
    _no_query(request)
    digest = images.check_sha256(sha256)
    images.may_upload(caller)
    blobs = state.blobs
    if blobs.has(digest):
        size = blobs.path(digest).stat().st_size
        async for _ in request.stream():  # already stored: read and drop the body
            pass
    else:
        size = await blobs.put(digest, request.stream())
    await run_in_threadpool(images.record_blob, db, digest, size)  # off the event loop: see upload_chunk
    return reply({"sha256": digest, "size": size})


@blob_router.get("/blob/{sha256}")
def download_blob(sha256: str, request: Request, db: DB, caller: CurrentCaller, state: State) -> Response:
    """The blob's bytes; a single ``Range: bytes=a-b`` is answered with 206."""
    _no_query(request)
    digest = images.check_sha256(sha256)
    images.may_read_blob(db, caller, digest)
    return blob_response(request, state.blobs, db, digest)


def blob_response(request: Request, blobs: images.BlobStore, db: Session, digest: str) -> Response:
    """The stored blob ``digest``, whole or the single Range asked for (checked first: 416 in HIL's
    error shape rather than Starlette's)."""
    path = blobs.path(digest)
    if not path.is_file():
        raise NotFoundError(
            f"Blob {digest} is recorded but its bytes are missing from the image store; upload it again"
            " (PUT /v0/blob/<sha256>)."
        )
    db.rollback()  # no transaction (on SQLite: the write lock) stays open while the bytes go out
    return file_response(request, path)


def file_response(request: Request, path: Path) -> Response:
    """The file at ``path``, whole or the single Range asked for (checked first: 416 in HIL's error
    shape rather than Starlette's)."""
    images.parse_range(request.headers.get("range"), path.stat().st_size)
    return FileResponse(path, media_type="application/octet-stream")


@blob_router.delete("/blob/{sha256}")
def delete_blob(sha256: str, request: Request, db: DB, caller: CurrentCaller, state: State) -> Response:
    _no_query(request)
    images.delete_blob(db, state.blobs, caller, sha256)
    return ok()


@blob_router.put("/chunk/{sha256}")
async def upload_chunk(sha256: str, request: Request, db: DB, caller: CurrentCaller) -> Response:
    """Store a chunk of a whole-disk image (at most `chunks.CHUNK_SIZE` bytes, hashing to ``sha256``)."""
    _no_query(request)
    digest = images.check_sha256(sha256)
    images.may_upload(caller)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > chunks.CHUNK_SIZE:
            raise BadArgumentError(f"A chunk holds at most {chunks.CHUNK_SIZE} bytes: nothing was stored.")
    # In a worker thread, as the sync routes' work is: a database call that waits for a lock here would
    # hold the event loop, and with it the commit of the request holding that lock.
    size = await run_in_threadpool(chunks.store_chunk, db, caller, digest, bytes(data))
    return reply({"sha256": digest, "size": size})


@blob_router.get("/chunk/{sha256}")
def download_chunk(sha256: str, request: Request, db: DB, caller: CurrentCaller) -> Response:
    """A chunk's bytes, for admins and whoever may use an image that holds it."""
    _no_query(request)
    data = chunks.read_chunk(db, caller, sha256)
    return Response(data, media_type="application/octet-stream")
