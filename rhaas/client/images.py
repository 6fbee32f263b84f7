"""``client.image``: OS images and the blob store behind them (rhaas extension: ``/v0/image/<image>``,
``/v0/images``, ``/v0/blob/<sha256>``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rhaas.client.base import Resource, check_name, segment

_CHUNK = 1 << 20


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

    def delete(self, image: str) -> None:
        self._conn.call("DELETE", f"image/{segment('image', image)}")

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
