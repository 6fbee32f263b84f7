"""The work the server hands out (``GET .../work``), and how a job step fails (standard library only).

An answer is one of::

    {"action": "wait", "poll_after": 5}
    {"action": "deploy", "job", "kernel": ARTIFACT, "initrd": ARTIFACT, "disk": ARTIFACT|null, "cmdline",
     "secret"?, "return_token"?}
    {"action": "deploy", "job", "image": IMAGE, "boot"?: {"kernel"?, "initrd"?, "cmdline"?},
     "seed"?: {"instance_id", "hostname", "ssh_keys"?, "user_data"?, "network_config"?}, "secret"?,
     "return_token"?}                       # a whole-disk image: see rhaas.agent.extents for IMAGE
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
    #: The kernel and initrd to boot; None for a whole-disk image (its own boot entry is booted).
    kernel: Artifact | None
    initrd: Artifact | None
    disk: Artifact | None
    cmdline: str
    #: The agent's secret from now on, and the return token for the crash kernel (None: not given).
    secret: str | None = None
    return_token: str | None = None
    #: A whole-disk image (an `rhaas.agent.extents.DiskImage`), the overrides of its boot entry
    #: (``kernel``, ``initrd``: paths in it; ``cmdline``), and cloud-init's seed (None: none).
    image: Any = None
    boot: dict[str, str] = {}
    seed: dict[str, Any] | None = None


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


def _strings(data: Any, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict) or any(k not in keys for k in data):
        raise ProtocolError(f"{what} is not an object of {', '.join(keys)}")
    return {k: v for k, v in data.items() if v is not None}


def _image_deploy(
    data: dict[str, Any], job: str, cmdline: str, secret: str | None, token: str | None
) -> Deploy:
    from rhaas.agent.extents import parse_image  # here: it imports this module

    boot = _strings(data.get("boot"), "boot", ("kernel", "initrd", "cmdline"))
    if any(not isinstance(v, str) for v in boot.values()):
        raise ProtocolError("boot overrides are not strings")
    seed = _strings(data.get("seed"), "seed", SEED_KEYS) or None
    if seed is not None:
        texts = [seed.get(k, "") for k in ("instance_id", "hostname", "user_data", "network_config")]
        keys = seed.get("ssh_keys", [])
        named = seed.get("instance_id") and seed.get("hostname")
        if not named or any(not isinstance(t, str) for t in texts):
            raise ProtocolError("seed needs an instance_id and a hostname, and text values")
        if not isinstance(keys, list) or any(not isinstance(k, str) for k in keys):
            raise ProtocolError("seed.ssh_keys is not a list of strings")
    return Deploy(job, None, None, None, cmdline, secret, token, parse_image(data["image"]), boot, seed)


#: What a whole-disk deploy's seed may hold.
SEED_KEYS = ("instance_id", "hostname", "ssh_keys", "user_data", "network_config")


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
        if data.get("image") is not None:
            return _image_deploy(data, job, cmdline, secret, token)
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
