"""The work the server hands out (``GET .../work``), and how a job step fails (standard library only).

An answer is one of::

    {"action": "wait", "poll_after": 5}
    {"action": "deploy", "job", "kernel": ARTIFACT, "initrd": ARTIFACT, "disk": ARTIFACT|null, "cmdline",
     "secret"?, "return_token"?}
    {"action": "wipe", "job", "policy": "full"|"discard"|"metadata", "verify"?: "sample"|"full",
     "scrub_memory"?: bool}

with ``ARTIFACT = {"url", "sha256", "size"}``. A deploy carries the agent's new secret (the one it booted
with is dead) and the deploy's return token, the only credential the return payload may hold. This
module only checks and types answers; doing the work is `rhaas.agent.deploy`'s and `rhaas.agent.wipe`'s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rhaas.agent import disk as disks

MAX_POLL = 300.0
MIN_POLL = 0.2


class AgentError(RuntimeError):
    """A job step failed; ``phase`` says which. The message is what the server is told."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class ProtocolError(ValueError):
    """The server sent something this agent does not understand."""


class Artifact(NamedTuple):
    url: str
    sha256: str
    size: int


class Wait(NamedTuple):
    poll_after: float


class Deploy(NamedTuple):
    job: str
    kernel: Artifact
    initrd: Artifact
    disk: Artifact | None
    cmdline: str
    #: The agent's secret from now on, and the return token for the crash kernel (None: not given).
    secret: str | None = None
    return_token: str | None = None


class Wipe(NamedTuple):
    job: str
    policy: str
    scrub_memory: bool = False
    #: How much of the wipe is read back: "sample" or "full" (a server that does not say: "full").
    verify: str = "full"


Work = Wait | Deploy | Wipe


def _artifact(data: Any, what: str) -> Artifact:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not an object")
    url, sha, size = data.get("url"), data.get("sha256"), data.get("size")
    if not isinstance(url, str) or not url:
        raise ProtocolError(f"{what}.url is missing")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise ProtocolError(f"{what}.sha256 is not a SHA-256 hex digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{what}.size is not a byte count")
    return Artifact(url, sha.lower(), size)


def _credential(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ProtocolError(f"{key} is not a token")
    return value


def parse_work(data: Any) -> Work:
    """One answer of GET .../work. Raises `ProtocolError` if it is malformed."""
    if not isinstance(data, dict):
        raise ProtocolError("work is not a JSON object")
    action = data.get("action")
    if action == "wait":
        poll = data.get("poll_after", 5)
        if not isinstance(poll, int | float) or isinstance(poll, bool):
            raise ProtocolError("poll_after is not a number")
        return Wait(min(MAX_POLL, max(MIN_POLL, float(poll))))
    job = data.get("job")
    if not isinstance(job, str) or not job:
        raise ProtocolError(f"{action} work has no job id")
    if action == "deploy":
        cmdline = data.get("cmdline", "")
        if not isinstance(cmdline, str):
            raise ProtocolError("cmdline is not a string")
        image = data.get("disk")
        secret, token = _credential(data, "secret"), _credential(data, "return_token")
        return Deploy(
            job, _artifact(data.get("kernel"), "kernel"), _artifact(data.get("initrd"), "initrd"),
            None if image is None else _artifact(image, "disk"), cmdline, secret, token,
        )  # fmt: skip
    if action == "wipe":
        policy = data.get("policy")
        if policy not in disks.WIPE_POLICIES:
            raise ProtocolError(f"unknown wipe policy {policy!r}")
        scrub = data.get("scrub_memory", False)
        if not isinstance(scrub, bool):
            raise ProtocolError("scrub_memory is not true or false")
        verify = data.get("verify", "full")
        if verify not in disks.VERIFY_MODES:
            raise ProtocolError(f"unknown verify mode {verify!r}")
        return Wipe(job, policy, scrub, verify)
    raise ProtocolError(f"unknown action {action!r}")
