"""The chunk store: whole-disk images as content-addressed chunks, kept in the database.

A whole-disk image is its *logical* content (the bytes a node's disk will hold, whatever format it was
uploaded in), cut into windows of `CHUNK_SIZE` bytes (the last one shorter). A window of zeros is a hole:
it is neither stored nor sent. Every other window is a `Chunk`, named by the sha256 of its bytes, stored
once however many images hold it, and listed in the image's `ImageExtent` rows. The image's
`DiskManifest` says its virtual size and the sha256 of its whole logical content (zeros in the holes
included), which the server computes itself from the stored chunks before it accepts an image.

The chunks live in the database, not in a directory of one server: every API server sharing the database
reads the same store, and a backup of the database backs up the images. Fleet delivery moves these same
chunks.

Who learns what. A chunk's digest is a claim to know its bytes, so the store answers "do you have it?"
(`missing_chunks`) and accepts a chunk in an image (`check_chunks`) only for chunks the caller has a
right to: those in an image the caller may use, and those the caller uploaded (`ChunkUpload`, the proof
of possession); administrators have every chunk. A chunk that only another project holds is "missing":
the caller sends it, the server checks its digest and keeps the one copy (deduplication is silent). So
nobody learns whether another project's private image holds some content, and nobody can bind a chunk
into an image by its digest alone.

Deleting an image removes the chunks that no other image holds (`collect`); chunks uploaded but never
used in an image are readable by administrators only, and `prune` removes them once they are old.

This module knows nothing of HTTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rhaas.core.access import Caller, require_admin
from rhaas.db.models import Chunk, ChunkUpload, Image, ImageExtent, Project, User, utcnow
from rhaas.errors import AuthorizationError, BadArgumentError, NotFoundError

#: The logical size of a chunk (the last chunk of an image is shorter when its size is not a multiple).
CHUNK_SIZE = 4 * 2**20
#: The size of a chunk's pieces: what the agents' peer exchange passes on, each checked against its own
#: digest (a chunk takes seconds on a slow link; a piece is passed on as soon as it arrives).
PIECE_SIZE = 256 * 2**10
#: The whole-disk image formats a client may upload (recorded; the store holds the logical content).
FORMATS = ("raw", "qcow2", "gzip", "xz", "zstd")
#: The most digests one "which are missing?" question may ask about.
MAX_QUERY = 1024
#: The largest virtual size accepted (1 PiB): far beyond any disk, small enough for every integer type.
MAX_VIRTUAL_SIZE = 2**50
#: Chunks read from the database at a time while the server hashes an image's content.
_READ_BATCH = 4
_ZEROS = bytes(CHUNK_SIZE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    """``value`` as a bare lowercase sha256 (a ``sha256:`` prefix is accepted). Raises BadArgumentError."""
    digest = value.removeprefix("sha256:")
    if not _SHA256.match(digest):
        raise BadArgumentError(f"{value[:80]!r} is not a sha256 digest (64 lowercase hex digits).")
    return digest


def may_upload(caller: Caller) -> None:
    """Admins and project members may upload; a user in no project has nothing to use an image for."""
    if not caller.is_admin and not caller.projects:
        raise AuthorizationError("Only administrators and project members may upload images.")


def visible_images(caller: Caller) -> Any:
    """The SQL condition for the images ``caller`` may see and use: public ones and its projects' own."""
    if caller.is_admin:
        return True
    mine = select(Project.id).where(Project.label.in_(sorted(caller.projects)))
    return or_(Image.owner_id.is_(None), Image.owner_id.in_(mine))


def is_zero(data: bytes) -> bool:
    """Whether ``data`` is all zeros (a hole)."""
    return data == _ZEROS[: len(data)] if len(data) <= CHUNK_SIZE else not any(data)


# -- chunks ------------------------------------------------------------------------------------------------
def store_chunk(db: Session, caller: Caller, sha256: str, data: bytes) -> int:
    """Keep ``data`` as the chunk ``sha256`` (once: a chunk already stored is not written again) and note
    that the caller has its bytes. Returns its size.

    Raises BadArgumentError, keeping nothing, if the bytes hash to something else, are empty, larger than
    `CHUNK_SIZE`, or all zeros (a hole is never stored).
    """
    may_upload(caller)
    digest = check_sha256(sha256)
    if not data:
        raise BadArgumentError("A chunk must not be empty.")
    if len(data) > CHUNK_SIZE:
        raise BadArgumentError(f"A chunk holds at most {CHUNK_SIZE} bytes, not {len(data)}.")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BadArgumentError(f"The uploaded bytes have sha256 {actual}, not {digest}: nothing was stored.")
    if is_zero(data):
        raise BadArgumentError("The chunk is all zeros: a hole is left out of an image, never stored.")
    if db.get(Chunk, digest) is None:
        try:
            with db.begin_nested():
                db.add(Chunk(sha256=digest, size=len(data), data=data, pieces=piece_digests(data)))
        except IntegrityError:
            pass  # a concurrent upload of the same bytes stored it first
    user_id = db.scalar(select(User.id).where(User.label == caller.name))
    if user_id is not None and db.get(ChunkUpload, (digest, user_id)) is None:
        try:
            with db.begin_nested():
                db.add(ChunkUpload(sha256=digest, user_id=user_id))
        except IntegrityError:
            pass  # the same user's concurrent upload recorded it first
    return len(data)


def _available(db: Session, caller: Caller, digests: Sequence[str]) -> set[str]:
    """The chunks among ``digests`` that ``caller`` has a right to (see the module docstring)."""
    if not digests:
        return set()
    if caller.is_admin:
        return set(db.scalars(select(Chunk.sha256).where(Chunk.sha256.in_(digests))))
    uploaded = (
        select(ChunkUpload.sha256)
        .join(User, User.id == ChunkUpload.user_id)
        .where(User.label == caller.name, ChunkUpload.sha256.in_(digests))
    )
    in_images = (
        select(ImageExtent.chunk_sha256)
        .join(Image, Image.id == ImageExtent.image_id)
        .where(ImageExtent.chunk_sha256.in_(digests), visible_images(caller))
        .distinct()
    )
    return set(db.scalars(uploaded)) | set(db.scalars(in_images))


def missing_chunks(db: Session, caller: Caller, digests: list[str]) -> list[str]:
    """Those of ``digests`` the caller must upload before naming them in an image, in the order asked
    (each once). A chunk only another project holds is missing: see the module docstring."""
    may_upload(caller)
    if len(digests) > MAX_QUERY:
        raise BadArgumentError(f"Ask about at most {MAX_QUERY} chunks at a time, not {len(digests)}.")
    wanted = list(dict.fromkeys(check_sha256(d) for d in digests))
    have = _available(db, caller, wanted)
    return [d for d in wanted if d not in have]


def piece_digests(data: bytes) -> bytes:
    """The raw SHA-256 digests of ``data``'s pieces, one after the other."""
    return b"".join(
        hashlib.sha256(data[at : at + PIECE_SIZE]).digest() for at in range(0, len(data), PIECE_SIZE)
    )


def piece_count(length: int) -> int:
    """How many pieces a chunk of ``length`` bytes has."""
    return -(-length // PIECE_SIZE)


def pieces(db: Session, digests: Sequence[str]) -> dict[str, list[str]]:
    """The hex digests of the pieces of each chunk of ``digests``. A chunk stored before pieces existed
    (or with pieces of another size) gets them computed now, and kept."""
    out: dict[str, list[str]] = {}
    wanted = sorted(set(digests))
    for at in range(0, len(wanted), MAX_QUERY):
        query = select(Chunk.sha256, Chunk.size, Chunk.pieces).where(
            Chunk.sha256.in_(wanted[at : at + MAX_QUERY])
        )
        for sha, size, raw in db.execute(query).all():
            if raw is None or len(raw) != 32 * piece_count(size):
                raw = piece_digests(chunk_data(db, sha))
                db.execute(update(Chunk).where(Chunk.sha256 == sha).values(pieces=raw))
            out[sha] = [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]
    return out


def chunk_data(db: Session, sha256: str) -> bytes:
    """A chunk's bytes, with no access check (the caller has made its own). NotFoundError if absent."""
    data = db.scalar(select(Chunk.data).where(Chunk.sha256 == sha256))
    if data is None:
        raise NotFoundError(f"Chunk {sha256} does not exist.")
    return data


def read_chunk(db: Session, caller: Caller, sha256: str) -> bytes:
    """A chunk's bytes, for administrators and whoever may use an image that holds it."""
    digest = check_sha256(sha256)
    if not db.scalar(select(exists().where(Chunk.sha256 == digest))):
        raise NotFoundError(f"Chunk {digest} does not exist.")
    if not caller.is_admin:
        held = select(ImageExtent.image_id).join(Image, Image.id == ImageExtent.image_id)
        held = held.where(ImageExtent.chunk_sha256 == digest, visible_images(caller))
        if not db.scalar(select(exists(held))):
            raise AuthorizationError("You may not read this chunk: no image you may use holds it.")
    data = db.scalar(select(Chunk.data).where(Chunk.sha256 == digest))
    if data is None:  # deleted since the check above
        raise NotFoundError(f"Chunk {digest} does not exist.")
    return data


# -- manifests --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extent:
    """Bytes ``offset`` to ``offset + length`` of an image's logical content are the chunk ``sha256``."""

    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format: str
    virtual_size: int
    logical_sha256: str
    extents: tuple[Extent, ...]


def chunk_length(offset: int, virtual_size: int) -> int:
    """The length of the chunk window starting at ``offset`` of an image of ``virtual_size`` bytes."""
    return min(CHUNK_SIZE, virtual_size - offset)


def check_manifest(
    format: str, virtual_size: int, logical_sha256: str, extents: Iterable[tuple[int, int, str]]
) -> Manifest:
    """A manifest whose shape is right: a known format, a size, and extents that are whole chunk windows
    (each at a multiple of `CHUNK_SIZE`, as long as its window), in order, inside the image. Raises
    BadArgumentError naming the first thing wrong."""
    if format not in FORMATS:
        raise BadArgumentError(f"Disk format {format[:40]!r} is not one of {', '.join(FORMATS)}.")
    if not 0 < virtual_size <= MAX_VIRTUAL_SIZE:
        raise BadArgumentError(f"The virtual size must be 1 to {MAX_VIRTUAL_SIZE} bytes, not {virtual_size}.")
    logical = check_sha256(logical_sha256)
    checked: list[Extent] = []
    previous = -1
    for offset, length, sha256 in extents:
        where = f"The extent at offset {offset}"
        if offset <= previous:
            raise BadArgumentError(f"{where} is out of order or overlaps the one before: sort by offset.")
        if offset % CHUNK_SIZE:
            raise BadArgumentError(f"{where} does not start on a chunk boundary ({CHUNK_SIZE} bytes).")
        if offset >= virtual_size:
            raise BadArgumentError(f"{where} is past the end of the image ({virtual_size} bytes).")
        if length != chunk_length(offset, virtual_size):
            raise BadArgumentError(
                f"{where} is {length} bytes long; a chunk there is {chunk_length(offset, virtual_size)}."
            )
        checked.append(Extent(offset, length, check_sha256(sha256)))
        previous = offset
    return Manifest(format, virtual_size, logical, tuple(checked))


def check_chunks(db: Session, caller: Caller, manifest: Manifest) -> None:
    """Every chunk of ``manifest`` is stored, the caller has a right to it, and it is as long as its
    extent. Raises NotFoundError (naming the first few missing) or BadArgumentError."""
    digests = list(dict.fromkeys(e.sha256 for e in manifest.extents))
    have: set[str] = set()
    sizes: dict[str, int] = {}
    for start in range(0, len(digests), MAX_QUERY):
        batch = digests[start : start + MAX_QUERY]
        have |= _available(db, caller, batch)
        rows = db.execute(select(Chunk.sha256, Chunk.size).where(Chunk.sha256.in_(batch)))
        sizes.update((digest, size) for digest, size in rows)
    missing = [d for d in digests if d not in have]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise NotFoundError(
            f"{len(missing)} chunk(s) of the image are not uploaded: {shown}. Upload them first "
            "(PUT /v0/chunk/<sha256>; POST /v0/chunks/missing says which)."
        )
    for extent in manifest.extents:
        if sizes[extent.sha256] != extent.length:
            raise BadArgumentError(
                f"The extent at offset {extent.offset} is {extent.length} bytes long, but chunk "
                f"{extent.sha256} holds {sizes[extent.sha256]}."
            )


def _windows(manifest: Manifest) -> Iterator[tuple[int, Extent | None]]:
    """Every chunk window of the image in order: (its length, its extent or None for a hole)."""
    by_offset = {e.offset: e for e in manifest.extents}
    for offset in range(0, manifest.virtual_size, CHUNK_SIZE):
        yield chunk_length(offset, manifest.virtual_size), by_offset.get(offset)


def check_content(db: Session, manifest: Manifest) -> None:
    """The stored chunks, with zeros in the holes, hash to the manifest's logical sha256, and no extent
    is a hole. Raises BadArgumentError.

    It only reads, a few chunks at a time, and ends the session's transaction after each few: on SQLite a
    transaction holds the write lock (taken at BEGIN), which must not be held over the hash of a large
    image. So the caller must have nothing uncommitted in ``db``, and must expect its objects expired.
    """
    digest = hashlib.sha256()
    pending: list[tuple[int, Extent | None]] = []

    def drain() -> None:
        wanted = list({e.sha256 for _, e in pending if e is not None})
        data: dict[str, bytes] = {}
        if wanted:
            rows = db.execute(select(Chunk.sha256, Chunk.data).where(Chunk.sha256.in_(wanted)))
            data = {name: chunk for name, chunk in rows}
            db.rollback()
        for length, extent in pending:
            if extent is None:
                digest.update(_ZEROS[:length])
                continue
            chunk = data.get(extent.sha256)
            if chunk is None:  # deleted since check_chunks: its last image went
                raise NotFoundError(f"Chunk {extent.sha256} is not uploaded: upload it again.")
            if is_zero(chunk):
                raise BadArgumentError(f"The extent at offset {extent.offset} is all zeros: leave holes out.")
            digest.update(chunk)
        pending.clear()

    stored = 0  # chunks among the pending windows
    for window in _windows(manifest):
        pending.append(window)
        stored += window[1] is not None
        if stored >= _READ_BATCH or len(pending) >= 256:
            drain()
            stored = 0
    drain()
    if digest.hexdigest() != manifest.logical_sha256:
        raise BadArgumentError(
            f"The image's chunks, with zeros in its holes, have sha256 {digest.hexdigest()}, not the "
            f"manifest's logical_sha256 {manifest.logical_sha256}: nothing was registered."
        )


def add_extents(db: Session, image_id: int, manifest: Manifest) -> None:
    """Write ``manifest``'s extents as rows of image ``image_id`` (one insert per thousand)."""
    rows = [
        {"image_id": image_id, "start": e.offset, "length": e.length, "chunk_sha256": e.sha256}
        for e in manifest.extents
    ]
    for start in range(0, len(rows), 1000):
        db.execute(insert(ImageExtent), rows[start : start + 1000])


def image_holds(db: Session, image_id: int, sha256: str) -> bool:
    """Whether image ``image_id`` holds chunk ``sha256`` (one indexed lookup, for each chunk a node asks)."""
    held = select(ImageExtent.start).where(
        ImageExtent.image_id == image_id, ImageExtent.chunk_sha256 == sha256
    )
    return bool(db.scalar(select(exists(held))))


def image_chunks(db: Session, image_id: int) -> list[str]:
    """The distinct chunks image ``image_id`` holds."""
    query = select(ImageExtent.chunk_sha256).where(ImageExtent.image_id == image_id).distinct()
    return list(db.scalars(query))


def extents(db: Session, image_id: int) -> list[Extent]:
    """Image ``image_id``'s extents, in order."""
    query = select(ImageExtent).where(ImageExtent.image_id == image_id).order_by(ImageExtent.start)
    return [Extent(r.start, r.length, r.chunk_sha256) for r in db.scalars(query)]


def extent_summary(db: Session, image_id: int) -> tuple[int, int]:
    """(how many extents, how many bytes they hold) of image ``image_id``."""
    query = select(func.count(), func.coalesce(func.sum(ImageExtent.length), 0))
    count, stored = db.execute(query.where(ImageExtent.image_id == image_id)).one()
    return int(count), int(stored)


def remove_extents(db: Session, image_id: int) -> list[str]:
    """Delete image ``image_id``'s extents; returns the chunks they named (for `collect`)."""
    digests = image_chunks(db, image_id)
    db.execute(delete(ImageExtent).where(ImageExtent.image_id == image_id))
    return digests


def _unused(digests: Sequence[str]) -> Any:
    return and_(Chunk.sha256.in_(digests), ~exists().where(ImageExtent.chunk_sha256 == Chunk.sha256))


def collect(db: Session, digests: Sequence[str]) -> set[str]:
    """Delete those of ``digests`` no image holds any more (with their upload records); returns them.

    A chunk an image being registered at the same moment takes is kept: the delete fails on its foreign
    key and is given up (a later `prune` finds the chunk if that image does not commit)."""
    deleted: set[str] = set()
    for start in range(0, len(digests), MAX_QUERY):
        batch = digests[start : start + MAX_QUERY]
        try:
            with db.begin_nested():
                deleted |= set(db.scalars(delete(Chunk).where(_unused(batch)).returning(Chunk.sha256)))
        except IntegrityError:
            pass
    return deleted


def prune(db: Session, caller: Caller, min_age: int) -> dict[str, int]:
    """Delete the chunks no image holds that nobody uploaded in the last ``min_age`` seconds: uploads
    never registered as an image (admins only). Returns ``{"chunks", "bytes"}`` deleted."""
    require_admin(caller)
    if min_age < 0:
        raise BadArgumentError("min_age must not be negative.")
    cutoff = utcnow() - dt.timedelta(seconds=min_age)
    recent = exists().where(ChunkUpload.sha256 == Chunk.sha256, ChunkUpload.created_at > cutoff)
    unused = ~exists().where(ImageExtent.chunk_sha256 == Chunk.sha256)
    rows = db.execute(select(Chunk.sha256, Chunk.size).where(unused, ~recent, Chunk.created_at <= cutoff))
    found = {digest: size for digest, size in rows}
    gone = collect(db, list(found))
    return {"chunks": len(gone), "bytes": sum(found[d] for d in gone)}
