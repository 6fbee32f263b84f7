"""The image cache: where builds go, how concurrent builds are kept apart, and their manifests.

Everything lands under the cache directory (``$RHAAS_CACHE``, else ``~/.cache/rhaas``), keyed by package
versions, with a ``manifest.json`` beside each output that records them. This module only places and
guards files; what goes in them is the builders'.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir(override: Path | str | None = None) -> Path:
    """The cache root: ``override``, else ``$RHAAS_CACHE``, else ``~/.cache/rhaas``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("RHAAS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rhaas"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialize builds in one cache directory across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def safe_version(version: str) -> str:
    """A package version as a directory name (epochs have a colon)."""
    return version.replace(":", "%3a")


def read_manifest(path: Path) -> dict[str, object] | None:
    """A manifest's data, or None if it is missing or damaged (then the build runs again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(path: Path, data: dict[str, object]) -> None:
    """Write a manifest atomically (a reader sees the old one or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file beside it, renamed into place."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)
