"""``client.image``: OS images and the stores behind them (rhaas extension: ``/v0/image/<image>``,
``/v0/images``, ``/v0/blob/<sha256>``, and for whole-disk images ``/v0/chunk/<sha256>``, ``/v0/chunks/...``).

A whole-disk image is registered from its file as it comes (`Images.register_disk`): the file is read
once, in its format (`rhaas.client.diskimage`), as logical `CHUNK_SIZE` windows; all-zero windows are
holes, sent nowhere; the others are hashed, the server is asked which of them it lacks for this caller,
and only those are uploaded, by a second thread while the next ones are read. At most a few windows are
in memory at once, whatever the image's size. The image is then registered with its manifest, which the
server checks against the chunks it stored.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rhaas.client.base import Connection, Resource, check_name, segment
from rhaas.client.diskimage import CHUNK_SIZE, open_disk_image
from rhaas.errors import BadArgumentError, DuplicateError, NotFoundError

_CHUNK = 1 << 20
#: Windows handed to the uploading thread at a time: one batch is sent while one waits and the next is
#: read, so about three batches of windows are in memory at most.
_BATCH = 4
#: Chunk uploads in flight at once.
_PARALLEL = 3
_ZEROS = bytes(CHUNK_SIZE)
#: The server hashes the whole image before it answers a registration: allow it this many bytes a second.
_SERVER_HASH_RATE = 100 * 2**20


@dataclass
class DiskProgress:
    """How far a whole-disk upload is (handed to the ``progress`` callback as it goes)."""

    file_size: int
    file_read: int = 0  # bytes of the file read (compressed bytes, for the compressed formats)
    logical: int = 0  # bytes of logical content gone through
    chunks: int = 0  # windows holding data
    holes: int = 0  # all-zero windows (neither stored nor sent)
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@dataclass
class _Pipeline:
    """The uploading side: asks which chunks of a batch are missing and uploads those, `_PARALLEL` at a
    time (a request's round trip, not the bandwidth, is what a chunk mostly waits for); records the
    first error for the reader's thread to raise."""

    conn: Connection
    progress: DiskProgress
    known: set[str] = field(default_factory=set)  # digests the server has for us (sent, or it said so)
    error: BaseException | None = None
    work: queue.Queue[list[tuple[str, bytes]] | None] = field(default_factory=lambda: queue.Queue(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with ThreadPoolExecutor(_PARALLEL, thread_name_prefix="rhaas-chunk-put") as pool:
            while (batch := self.work.get()) is not None:
                if self.error is not None:
                    continue  # drain, so the reader is never stuck on a full queue
                try:
                    self._send(batch, pool)
                except BaseException as exc:  # handed to the reader's thread, which raises it
                    self.error = exc

    def _send(self, batch: list[tuple[str, bytes]], pool: ThreadPoolExecutor) -> None:
        fresh = {d: data for d, data in batch if d not in self.known}
        if not fresh:
            return
        missing = self.conn.call("POST", "chunks/missing", json={"sha256": list(fresh)})["missing"]
        list(pool.map(lambda digest: self._put(digest, fresh[digest]), missing))
        self.known.update(fresh)

    def _put(self, digest: str, data: bytes) -> None:
        self.conn.put_bytes(f"chunk/{digest}", [data])
        with self.lock:
            self.progress.uploaded_chunks += 1
            self.progress.uploaded_bytes += len(data)


def _scan(
    conn: Connection,
    path: Path,
    progress: DiskProgress,
    report: Callable[[DiskProgress], None] | None,
) -> dict[str, Any]:
    """Read the image once, uploading the chunks the server lacks; return its manifest."""
    pipeline = _Pipeline(conn, progress)
    thread = threading.Thread(target=pipeline.run, name="rhaas-chunk-upload", daemon=True)
    logical = hashlib.sha256()
    extents: list[dict[str, Any]] = []
    batch: list[tuple[str, bytes]] = []
    with open_disk_image(path) as source:
        thread.start()
        try:
            offset = 0
            for window in source.windows():
                if window is None or window == _ZEROS[: len(window)]:
                    # A source that yields None knows its size before it is read.
                    known = source.virtual_size or 0
                    length = len(window) if window is not None else min(CHUNK_SIZE, known - offset)
                    logical.update(_ZEROS[:length])
                    progress.holes += 1
                else:
                    length = len(window)
                    logical.update(window)
                    digest = hashlib.sha256(window).hexdigest()
                    extents.append({"offset": offset, "length": length, "sha256": digest})
                    batch.append((digest, window))
                    progress.chunks += 1
                    if len(batch) >= _BATCH:
                        pipeline.work.put(batch)
                        batch = []
                offset += length
                progress.logical, progress.file_read = offset, source.consumed
                if pipeline.error is not None:
                    break
                if report is not None:
                    report(progress)
            if batch and pipeline.error is None:
                pipeline.work.put(batch)
        finally:
            pipeline.work.put(None)
            thread.join()
        if pipeline.error is not None:
            raise pipeline.error
        return {
            "format": source.format,
            "virtual_size": offset,
            "logical_sha256": logical.hexdigest(),
            "extents": extents,
        }


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class Images(Resource):
    def list(self) -> list[str]:
        """Names of the images the caller may use (public ones and its projects' own)."""
        result: list[str] = self._conn.call("GET", "images")
        return result

    def show(self, image: str) -> dict[str, Any]:
        result: dict[str, Any] = self._conn.call("GET", f"image/{segment('image', image)}")
        return result

    def register(
        self,
        image: str,
        *,
        project: str | None,
        kernel: str,
        initrd: str,
        disk: str | None = None,
        cmdline: str = "",
    ) -> None:
        """Register an image from uploaded blobs (sha256 digests). ``project=None``: public (admin)."""
        body = {"project": project, "kernel": kernel, "initrd": initrd, "disk": disk, "cmdline": cmdline}
        self._conn.call("PUT", f"image/{segment('image', image)}", json=body)

    def register_disk(
        self,
        image: str,
        path: str | Path,
        *,
        project: str | None,
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str = "",
        progress: Callable[[DiskProgress], None] | None = None,
    ) -> dict[str, Any]:
        """Register the whole-disk image file at ``path`` (raw, qcow2, or raw compressed with gzip, xz or
        zstd: detected) as ``image``, uploading only the chunks the server lacks for this caller.

        ``kernel``/``initrd``: optional blob digests kept with the image. ``progress`` is called after
        each window read. Returns the manifest's summary with the upload's figures: ``format``,
        ``virtual_size``, ``logical_sha256``, ``chunks``, ``holes``, ``uploaded_chunks``,
        ``uploaded_bytes``, ``file_read``, ``seconds``. Raises `DiskImageError` for a file it cannot
        read (nothing registered; chunks already sent stay unused until pruned).
        """
        path = Path(path)
        name = segment("image", image)
        self._refuse_taken(image)  # before reading what may be gigabytes
        size = path.stat().st_size if path.exists() else 0
        state = DiskProgress(file_size=size)
        manifest = _scan(self._conn, path, state, progress)
        body = {"project": project, "disk": manifest, "cmdline": cmdline}
        if kernel is not None or initrd is not None:
            body.update(kernel=kernel, initrd=initrd)
        timeout = max(self._conn.timeout, 30 + manifest["virtual_size"] / _SERVER_HASH_RATE)
        try:
            self._conn.call("PUT", f"image/{name}", json=body, timeout=timeout)
        except NotFoundError as exc:
            if "not uploaded" not in str(exc):
                raise  # a project that does not exist, a kernel blob never uploaded
            # A chunk the server had for us went (the last image holding it was deleted meanwhile):
            # read the file again, which sends only what is missing now, and register once more.
            state = DiskProgress(file_size=size)
            manifest = _scan(self._conn, path, state, progress)
            body["disk"] = manifest
            self._conn.call("PUT", f"image/{name}", json=body, timeout=timeout)
        summary = {k: v for k, v in manifest.items() if k != "extents"}
        figures = asdict(state)
        del figures["started"], figures["logical"]
        return {"name": image, **summary, **figures, "seconds": round(state.seconds, 3)}

    def _refuse_taken(self, image: str) -> None:
        """DuplicateError if the caller can see an image of that name already (one of another project's
        is found only by the registration itself)."""
        if image in self.list():
            raise DuplicateError(f"Image {image} already exists.")

    def manifest(self, image: str) -> dict[str, Any]:
        """A whole-disk image's manifest: ``format``, ``virtual_size``, ``logical_sha256``,
        ``chunk_size`` and every extent (``offset``, ``length``, ``sha256``) in order."""
        result: dict[str, Any] = self._conn.call("GET", f"image/{segment('image', image)}/manifest")
        return result

    def chunk(self, sha256: str) -> bytes:
        """A chunk's bytes (for whoever may use an image that holds it)."""
        return b"".join(self._conn.get_bytes(f"chunk/{check_name('chunk', sha256)}"))

    def export_disk(self, image: str, path: str | Path) -> dict[str, Any]:
        """Write a whole-disk image's logical content to ``path`` as a sparse raw file, chunk by chunk,
        and check it against the manifest's logical sha256 (BadArgumentError if it differs). Returns the
        manifest without its extents."""
        manifest = self.manifest(image)
        size = int(manifest["virtual_size"])
        by_offset = {int(e["offset"]): e for e in manifest["extents"]}
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            out.truncate(size)  # holes stay holes
            for offset in range(0, size, CHUNK_SIZE):
                length = min(CHUNK_SIZE, size - offset)
                extent = by_offset.get(offset)
                if extent is None:
                    digest.update(_ZEROS[:length])
                    continue
                data = self.chunk(extent["sha256"])
                if len(data) != length or hashlib.sha256(data).hexdigest() != extent["sha256"]:
                    raise BadArgumentError(f"Chunk {extent['sha256']} came back damaged.")
                out.seek(offset)
                out.write(data)
                digest.update(data)
        if digest.hexdigest() != manifest["logical_sha256"]:
            raise BadArgumentError(
                f"Image {image} came back with sha256 {digest.hexdigest()}, not {manifest['logical_sha256']}."
            )
        return {k: v for k, v in manifest.items() if k != "extents"}

    def delete(self, image: str) -> None:
        self._conn.call("DELETE", f"image/{segment('image', image)}")

    def prune_chunks(self, min_age: int = 86400) -> dict[str, int]:
        """Delete uploaded chunks no image holds, uploaded more than ``min_age`` seconds ago (admins)."""
        result: dict[str, int] = self._conn.call("POST", "chunks/prune", json={"min_age": min_age})
        return result

    def upload(self, path: str | Path) -> dict[str, Any]:
        """Upload a file to the blob store (streamed); returns ``{"sha256", "size"}``."""
        path = Path(path)
        digest = file_sha256(path)
        result: dict[str, Any] = self._conn.put_bytes(f"blob/{digest}", _file_chunks(path))
        return result

    def download(self, sha256: str, byte_range: tuple[int, int] | None = None) -> Iterator[bytes]:
        """A blob's bytes in chunks; ``byte_range`` (first, last) inclusive asks for part of it."""
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else None
        return self._conn.get_bytes(f"blob/{check_name('blob', sha256)}", headers=headers)

    def delete_blob(self, sha256: str) -> None:
        self._conn.call("DELETE", f"blob/{check_name('blob', sha256)}")
