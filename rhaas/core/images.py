"""OS images and the content-addressed store that holds their kernels, initrds and disk images.

An image is either a kernel and an initrd (with an optional raw disk image), each a blob, or a whole-disk
image: its logical content in the chunk store (`rhaas.core.chunks`), with a kernel and initrd optional.

A blob is named by the sha256 of its bytes: a client uploads to ``PUT /v0/blob/<sha256>`` and the store
keeps it only if the bytes hash to that name, so a blob can never be half-written or mislabelled. An image
names its blobs by hash. Visibility follows networks: a public image (no owner) is registered by an
administrator and usable by every project; a private image belongs to the project that registered it.

This module knows nothing of HTTP; the routes stream bodies into `BlobStore.put`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rhaas.core import chunks
from rhaas.core.access import Caller, check_label, get_project, require_admin, require_project_access
from rhaas.core.chunks import check_sha256, may_upload, visible_images
from rhaas.db.models import Blob, DiskManifest, Image, Project
from rhaas.errors import (
    AuthorizationError,
    BadArgumentError,
    BlockedError,
    DuplicateError,
    IllegalStateError,
    NotFoundError,
    RangeNotSatisfiableError,
    ValidationError,
)

__all__ = ["check_sha256", "may_upload"]  # where the blob routes and provisioning find them


class BlobStore:
    """Files named by their sha256 under ``root``. Writes go to a temporary file, renamed when verified."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the bytes of ``chunks`` as ``sha256``; returns their size.

        Raises BadArgumentError (and keeps nothing) if they hash to something else or exceed the limit.
        """
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BadArgumentError(
                            f"The upload is larger than the limit of {self.max_bytes} bytes."
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise BadArgumentError(
                    f"The uploaded bytes have sha256 {digest.hexdigest()}, not {sha256}: nothing was stored."
                )
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return size


def record_blob(db: Session, sha256: str, size: int) -> None:
    """Note a stored blob in the database (idempotent: concurrent uploads of one blob are fine)."""
    if db.get(Blob, sha256) is not None:
        return
    try:
        with db.begin_nested():
            db.add(Blob(sha256=sha256, size=size))
    except IntegrityError:
        pass  # another upload of the same bytes recorded it first


def _uses(sha256: str) -> Any:
    return or_(Image.kernel_sha256 == sha256, Image.initrd_sha256 == sha256, Image.disk_sha256 == sha256)


def may_read_blob(db: Session, caller: Caller, sha256: str) -> None:
    """A blob is readable by admins and by whoever may use an image that holds it."""
    if db.get(Blob, sha256) is None:
        raise NotFoundError(f"Blob {sha256} does not exist.")
    if not db.scalar(select(exists().where(_uses(sha256), visible_images(caller)))):
        raise AuthorizationError("You may not read this blob: no image you may use holds it.")


def _blob(db: Session, value: str | None, role: str) -> Blob | None:
    if value is None:
        return None
    blob = db.get(Blob, check_sha256(value))
    if blob is None:
        raise NotFoundError(
            f"The {role} blob {value} does not exist: upload it first (PUT /v0/blob/<sha256>)."
        )
    return blob


def _owner(db: Session, caller: Caller, project: str | None) -> Project | None:
    """The project a new image is to belong to (None: public, admins only), checked for ``caller``."""
    if project is None:
        require_admin(caller)
        return None
    owner = get_project(db, project)
    require_project_access(caller, project)
    return owner


def _check_cmdline(cmdline: str) -> None:
    if len(cmdline) > 4096 or any(ch in cmdline for ch in "\n\r\x00"):
        raise BadArgumentError("The kernel command line must be one line of at most 4096 characters.")


def _refuse_duplicate(db: Session, name: str) -> None:
    if db.scalar(select(exists().where(Image.label == name))):
        raise DuplicateError(f"Image {name} already exists.")


def register_image(
    db: Session,
    caller: Caller,
    name: str,
    *,
    project: str | None,
    kernel: str | None,
    initrd: str | None,
    disk: str | None = None,
    cmdline: str = "",
) -> None:
    """Register a kernel + initrd image (``disk``: an optional raw disk blob). ``project=None`` makes it
    public (admins only)."""
    check_label("Image", name)
    owner = _owner(db, caller, project)
    if kernel is None or initrd is None:
        raise BadArgumentError(
            'An image needs a kernel and an initrd, or a whole-disk image ("disk": its manifest).'
        )
    _check_cmdline(cmdline)
    blobs = (_blob(db, kernel, "kernel"), _blob(db, initrd, "initrd"), _blob(db, disk, "disk"))
    _refuse_duplicate(db, name)
    image = Image(label=name, owner=owner, kernel=blobs[0], initrd=blobs[1], disk=blobs[2], cmdline=cmdline)
    try:
        with db.begin_nested():
            db.add(image)
    except IntegrityError as exc:
        raise DuplicateError(f"Image {name} already exists.") from exc


def register_disk_image(
    db: Session,
    caller: Caller,
    name: str,
    manifest: chunks.Manifest,
    *,
    project: str | None,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str = "",
) -> None:
    """Register a whole-disk image from chunks in the store. ``kernel`` and ``initrd`` (both or neither)
    are optional overrides kept for later.

    Everything is checked before anything is written, the content last: every chunk is stored, is the
    caller's to use and fits its extent, and the chunks with zeros in the holes hash to the manifest's
    logical sha256 (`chunks.check_content`, which ends the read transaction as it goes).
    """
    check_label("Image", name)
    _owner(db, caller, project)
    if (kernel is None) != (initrd is None):
        raise BadArgumentError("Give both a kernel and an initrd, or neither, with a whole-disk image.")
    _check_cmdline(cmdline)
    for value, role in ((kernel, "kernel"), (initrd, "initrd")):
        _blob(db, value, role)
    _refuse_duplicate(db, name)
    chunks.check_chunks(db, caller, manifest)
    chunks.check_content(db, manifest)
    # The read transaction ended: read what the rows need again (an image of that name, or a blob, may
    # have come or gone meanwhile).
    owner = _owner(db, caller, project)
    blobs = (_blob(db, kernel, "kernel"), _blob(db, initrd, "initrd"))
    _refuse_duplicate(db, name)
    image = Image(label=name, owner=owner, kernel=blobs[0], initrd=blobs[1], cmdline=cmdline)
    image.manifest = DiskManifest(
        format=manifest.format, virtual_size=manifest.virtual_size, logical_sha256=manifest.logical_sha256
    )
    try:
        with db.begin_nested():
            db.add(image)
            db.flush()
            chunks.add_extents(db, image.id, manifest)
    except IntegrityError:
        # Another image of this name, or the deletion of a chunk, committed first: say which.
        _refuse_duplicate(db, name)
        chunks.check_chunks(db, caller, manifest)
        raise


def _find(db: Session, caller: Caller, name: str) -> Image:
    """The image ``name`` if ``caller`` may use it (public, or its project's); AuthorizationError if not."""
    image = db.scalar(select(Image).where(Image.label == name))
    if image is None:
        raise NotFoundError(f"Image {name} does not exist.")
    if image.owner is not None:
        require_project_access(caller, image.owner.label)
    return image


def get_image(db: Session, caller: Caller, name: str) -> Image:
    """The image ``name`` for provisioning, if ``caller`` may use it (public, or its project's): a kernel +
    initrd image, or a whole-disk image (its extents in the chunk store)."""
    return _find(db, caller, name)


def _blob_view(blob: Blob | None) -> dict[str, Any] | None:
    return None if blob is None else {"sha256": blob.sha256, "size": blob.size}


def _disk_view(db: Session, image: Image) -> dict[str, Any] | None:
    if image.manifest is None:
        return _blob_view(image.disk)
    count, stored = chunks.extent_summary(db, image.id)
    return {
        "format": image.manifest.format,
        "virtual_size": image.manifest.virtual_size,
        "logical_sha256": image.manifest.logical_sha256,
        "chunk_size": chunks.CHUNK_SIZE,
        "chunks": count,
        "stored_bytes": stored,
    }


def show_image(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    image = _find(db, caller, name)
    return {
        "name": image.label,
        "project": image.owner.label if image.owner else None,
        "kernel": _blob_view(image.kernel),
        "initrd": _blob_view(image.initrd),
        "disk": _disk_view(db, image),
        "cmdline": image.cmdline,
    }


def image_manifest(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    """A whole-disk image's manifest with every extent, for whoever may use it (to fetch its chunks)."""
    image = _find(db, caller, name)
    if image.manifest is None:
        raise IllegalStateError(f"Image {name} is not a whole-disk image: it has no manifest.")
    return {
        "format": image.manifest.format,
        "virtual_size": image.manifest.virtual_size,
        "logical_sha256": image.manifest.logical_sha256,
        "chunk_size": chunks.CHUNK_SIZE,
        "extents": [
            {"offset": e.offset, "length": e.length, "sha256": e.sha256} for e in chunks.extents(db, image.id)
        ],
    }


def list_images(db: Session, caller: Caller) -> list[str]:
    return list(db.scalars(select(Image.label).where(visible_images(caller)).order_by(Image.label)))


def delete_image(db: Session, caller: Caller, name: str) -> None:
    """Delete an image. A whole-disk image's chunks that no other image holds go with it; its blobs
    stay until an administrator deletes them."""
    image = _find(db, caller, name)
    if image.owner is None:
        require_admin(caller)
    else:
        require_project_access(caller, image.owner.label)
    held = chunks.remove_extents(db, image.id)
    db.delete(image)
    db.flush()
    chunks.collect(db, held)


def delete_blob(db: Session, store: BlobStore, caller: Caller, sha256: str) -> None:
    """Remove an unused blob from the store (admins only)."""
    require_admin(caller)
    blob = db.get(Blob, check_sha256(sha256))
    if blob is None:
        raise NotFoundError(f"Blob {sha256} does not exist.")
    if db.scalar(select(exists().where(_uses(sha256)))):
        raise BlockedError(f"Blob {sha256} is used by an image.")
    db.delete(blob)
    db.flush()
    store.path(sha256).unlink(missing_ok=True)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` range as (start, end inclusive); None for no header. Raises ValidationError."""
    if header is None:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise ValidationError(f"Range {header[:80]!r} is not a single 'bytes=start-end' range.")
    first, last = match.group(1), match.group(2)
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        raise RangeNotSatisfiableError(f"Range {header[:80]!r} is outside the blob's {size} bytes.")
    return start, end
