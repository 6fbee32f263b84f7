"""OS images and the content-addressed store that holds their kernels, initrds and disk images.

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

from rhaas.core.access import Caller, check_label, get_project, require_admin, require_project_access
from rhaas.db.models import Blob, Image, Project
from rhaas.errors import (
    AuthorizationError,
    BadArgumentError,
    BlockedError,
    DuplicateError,
    NotFoundError,
    RangeNotSatisfiableError,
    ValidationError,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    """``value`` as a bare lowercase sha256 (a ``sha256:`` prefix is accepted). Raises BadArgumentError."""
    digest = value.removeprefix("sha256:")
    if not _SHA256.match(digest):
        raise BadArgumentError(f"{value[:80]!r} is not a sha256 digest (64 lowercase hex digits).")
    return digest


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


def may_upload(caller: Caller) -> None:
    """Admins and project members may upload; a user in no project has nothing to use an image for."""
    if not caller.is_admin and not caller.projects:
        raise AuthorizationError("Only administrators and project members may upload images.")


def _visible(caller: Caller) -> Any:
    """The SQL condition for the images ``caller`` may see and use."""
    if caller.is_admin:
        return True
    mine = select(Project.id).where(Project.label.in_(sorted(caller.projects)))
    return or_(Image.owner_id.is_(None), Image.owner_id.in_(mine))


def _uses(sha256: str) -> Any:
    return or_(Image.kernel_sha256 == sha256, Image.initrd_sha256 == sha256, Image.disk_sha256 == sha256)


def may_read_blob(db: Session, caller: Caller, sha256: str) -> None:
    """A blob is readable by admins and by whoever may use an image that holds it."""
    if db.get(Blob, sha256) is None:
        raise NotFoundError(f"Blob {sha256} does not exist.")
    if not db.scalar(select(exists().where(_uses(sha256), _visible(caller)))):
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


def register_image(
    db: Session,
    caller: Caller,
    name: str,
    *,
    project: str | None,
    kernel: str,
    initrd: str,
    disk: str | None = None,
    cmdline: str = "",
) -> None:
    """Register an image. ``project=None`` makes it public (admins only)."""
    check_label("Image", name)
    if project is None:
        require_admin(caller)
        owner = None
    else:
        owner = get_project(db, project)
        require_project_access(caller, project)
    if len(cmdline) > 4096 or any(ch in cmdline for ch in "\n\r\x00"):
        raise BadArgumentError("The kernel command line must be one line of at most 4096 characters.")
    blobs = (_blob(db, kernel, "kernel"), _blob(db, initrd, "initrd"), _blob(db, disk, "disk"))
    if db.scalar(select(exists().where(Image.label == name))):
        raise DuplicateError(f"Image {name} already exists.")
    image = Image(label=name, owner=owner, kernel=blobs[0], initrd=blobs[1], disk=blobs[2], cmdline=cmdline)
    try:
        with db.begin_nested():
            db.add(image)
    except IntegrityError as exc:
        raise DuplicateError(f"Image {name} already exists.") from exc


def get_image(db: Session, caller: Caller, name: str) -> Image:
    """The image ``name`` if ``caller`` may use it (public, or its project's); AuthorizationError if not."""
    image = db.scalar(select(Image).where(Image.label == name))
    if image is None:
        raise NotFoundError(f"Image {name} does not exist.")
    if image.owner is not None:
        require_project_access(caller, image.owner.label)
    return image


def _blob_view(blob: Blob | None) -> dict[str, Any] | None:
    return None if blob is None else {"sha256": blob.sha256, "size": blob.size}


def show_image(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    image = get_image(db, caller, name)
    return {
        "name": image.label,
        "project": image.owner.label if image.owner else None,
        "kernel": _blob_view(image.kernel),
        "initrd": _blob_view(image.initrd),
        "disk": _blob_view(image.disk),
        "cmdline": image.cmdline,
    }


def list_images(db: Session, caller: Caller) -> list[str]:
    return list(db.scalars(select(Image.label).where(_visible(caller)).order_by(Image.label)))


def delete_image(db: Session, caller: Caller, name: str) -> None:
    image = get_image(db, caller, name)
    if image.owner is None:
        require_admin(caller)
    else:
        require_project_access(caller, image.owner.label)
    db.delete(image)


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
