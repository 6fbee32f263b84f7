"""The agent API of one node, as the agent speaks it: JSON calls and streamed downloads over HTTPS to
the server whose certificate the FPBL pins (plain HTTP without a pin, for tests; standard library only).

The protocol is HTTP + JSON with ``Authorization: Bearer <secret>`` (docs/fast-provisioning.md); the
return FPBL's first check-in presents its deploy's return token instead, and gets a secret back::

    POST {agent}/agent/v1/nodes/{node}/checkin  {"mode", "boot_id", "kernel", "memory_kb", "disks",
                                                 "elfcorehdr"}  -> {"secret"?}
    GET  {agent}/agent/v1/nodes/{node}/work     {"action": "wait"|"deploy"|"wipe", ...}
    POST {agent}/agent/v1/nodes/{node}/report   {"job", "phase", "state", "at", "detail", "progress"?}

This module moves bytes and JSON; what the answers mean is `rhaas.agent.work`'s.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from rhaas.agent import wire
from rhaas.agent.settings import Settings
from rhaas.agent.work import AgentError, Artifact, ProtocolError

API_PREFIX = "/agent/v1/nodes"
HTTP_TIMEOUT = 30.0
DOWNLOAD_CHUNK = 1 << 20


class ServerError(OSError):
    """The agent API answered with an unexpected HTTP status (``status``; 0 if it was not HTTP)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """The agent API of one node: JSON requests and streamed downloads, to the pinned server only."""

    def __init__(self, settings: Settings, timeout: float = HTTP_TIMEOUT) -> None:
        self.base = settings.agent
        self.pin = settings.pin
        self.node_path = f"{API_PREFIX}/{urllib.parse.quote(settings.node, safe='')}"
        self.headers: dict[str, str] = {}
        self.use(settings.token or settings.secret)
        self.timeout = timeout
        self.connections = wire.Pool()  # kept open: a deploy's chunks do not each pay a TLS handshake

    def use(self, credential: str) -> None:
        """Present ``credential`` (a secret, or a return token) from the next call on."""
        self.headers = {"Authorization": f"Bearer {credential}"}

    def resolve(self, url: str) -> str:
        """An artifact URL: absolute, or relative to the agent base URL."""
        return urllib.parse.urljoin(self.base + "/", url)

    def _open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> wire.Response:
        parts = urllib.parse.urlsplit(url)
        scheme = "https" if self.pin else "http"  # a pinned agent never falls back to plain HTTP
        if parts.scheme != scheme or not parts.hostname:
            raise ProtocolError(f"cannot fetch {url}: only {scheme}:// URLs are used here")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if self.pin else 80)
        return self.connections.request(
            method, parts.hostname, port, target, headers, body, self.timeout, self.pin
        )

    def call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        """A JSON call of this node's agent API (``name``: the part after the node's path)."""
        return self.call_url(method, f"{self.base}{self.node_path}/{name}", body, name)

    def call_url(self, method: str, url: str, body: dict[str, Any] | None = None, name: str = "") -> Any:
        """A JSON call of the agent API at ``url`` (absolute, or relative to the base URL)."""
        name = name or url
        headers = dict(self.headers, Accept="application/json")
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            with self._open(method, self.resolve(url), headers, payload) as response:
                data = response.read()
        except wire.HttpError as exc:
            raise ServerError(f"{method} {name}: {exc}") from exc
        if response.status != 200:
            raise ServerError(f"{method} {name}: HTTP {response.status}: {data[:200]!r}", response.status)
        try:
            return json.loads(data or b"{}")
        except ValueError as exc:
            raise ProtocolError(f"{method} {name}: not JSON: {data[:200]!r}") from exc

    def download(
        self, artifact: Artifact, sink: Callable[[bytes], object], progress: Callable[[int, int], None]
    ) -> str:
        """Stream ``artifact`` into ``sink``; its SHA-256. Raises `AgentError` (phase 'download') if it is
        not ``artifact.size`` bytes long."""
        digest = hashlib.sha256()
        done = 0
        with self._open("GET", self.resolve(artifact.url), self.headers) as response:
            if response.status != 200:
                raise AgentError("download", f"GET {artifact.url}: HTTP {response.status}{_why(response)}")
            while chunk := response.read(DOWNLOAD_CHUNK):
                done += len(chunk)
                if done > artifact.size:
                    raise AgentError("download", f"{artifact.url} is longer than {artifact.size} bytes")
                digest.update(chunk)
                sink(chunk)
                progress(done, artifact.size)
        if done != artifact.size:
            raise AgentError("download", f"{artifact.url} is {done} bytes, not {artifact.size}")
        return digest.hexdigest()


def _why(response: wire.Response) -> str:
    """``: <msg>`` of a refusal in HIL's error shape, or nothing."""
    try:
        msg = json.loads(response.read(4096))["msg"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f": {str(msg)[:300]}"
