"""Request bodies. Unknown keys and wrong types are refused (400 ValidationError), as in HIL."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NodeBody(Body):
    node: str


class ObmForm(BaseModel):
    """HIL's in-tree OBM form; extra keys are checked by the chosen driver's settings model."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str = Field(description='driver: "ipmi", "redfish", "mock", or a HIL type URL')


class ObmdForm(Body):
    """HIL master's OBM form: the node's URL in obmd and obmd's admin token."""

    uri: str = Field(description="the node's URL in obmd, http(s)://host:port/node/<id>")
    admin_token: str = Field(description="obmd's admin token (a secret: never shown again)")


class NodeRegisterBody(Body):
    """Exactly one of ``obm`` (HIL's in-tree form) and ``obmd`` (HIL master's)."""

    obm: ObmForm | None = None
    obmd: ObmdForm | None = None
    metadata: dict[str, Any] | None = None


class NicBody(Body):
    macaddr: str


class MetadataBody(Body):
    value: Any


class ObmCredentialsBody(Body):
    user: str
    password: str


class ObmEnableBody(Body):
    enabled: bool


class PowerCycleBody(Body):
    force: bool = False


class BootdevBody(Body):
    bootdev: str


class NetworkCreateBody(Body):
    owner: str
    access: str
    net_id: str


class ConnectNetworkBody(Body):
    network: str
    channel: str | None = None


class NetworkBody(Body):
    network: str


class SwitchRegisterBody(BaseModel):
    """``type`` plus the driver's own fields, checked by the driver's settings model."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str


class NicRefBody(Body):
    node: str
    nic: str


class UserCreateBody(Body):
    password: str
    is_admin: bool = False


class UserPatchBody(Body):
    is_admin: bool | None = None
    password: str | None = None


class ProjectBody(Body):
    project: str


class ExtentBody(Body):
    """Bytes ``offset`` to ``offset + length`` of a whole-disk image are the chunk ``sha256``."""

    offset: int = Field(ge=0)
    length: int = Field(gt=0)
    sha256: str


class DiskManifestBody(Body):
    """A whole-disk image: its logical content as chunks already uploaded, holes (zeros) left out."""

    format: str
    virtual_size: int = Field(gt=0)
    logical_sha256: str
    extents: list[ExtentBody]


class ImageRegisterBody(Body):
    """Blobs by sha256 (upload them first); ``project`` null makes a public image (admins only).

    ``disk`` is a raw disk image's blob (with ``kernel`` and ``initrd``), or a whole-disk image's manifest
    (``kernel`` and ``initrd`` then optional)."""

    project: str | None
    kernel: str | None = None
    initrd: str | None = None
    disk: str | DiskManifestBody | None = None
    cmdline: str = ""


class ChunkQueryBody(Body):
    sha256: list[str]


class ChunkPruneBody(Body):
    #: Keep what was uploaded less than this many seconds ago (an upload whose image is not registered yet).
    min_age: int = Field(default=86400, ge=0)


#: How much first-boot data a provision request may carry (cloud-init reads it from a small volume).
MAX_SEED_TEXT = 64 * 1024
MAX_SSH_KEYS = 32


class ProvisionBody(Body):
    image: str
    #: SSH public keys for the image's default user (cloud-init ``ssh_authorized_keys``).
    ssh_keys: list[str] = Field(default_factory=list, max_length=MAX_SSH_KEYS)
    #: cloud-init user-data (``#cloud-config``, a script, ...) and network configuration (v1 or v2 YAML).
    user_data: str | None = Field(default=None, max_length=MAX_SEED_TEXT)
    network_config: str | None = Field(default=None, max_length=MAX_SEED_TEXT)
    #: Overrides of the boot entry found on a whole-disk image: paths inside it, and the command line.
    kernel: str | None = Field(default=None, max_length=4096)
    initrd: str | None = Field(default=None, max_length=4096)
    cmdline: str | None = Field(default=None, max_length=4096)


#: The most nodes one fleet-sized provision request may name.
MAX_GROUP_NODES = 1000


class ProvisionGroupBody(ProvisionBody):
    #: The nodes to deploy the image on, all in one project: all are queued, or none is.
    nodes: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        min_length=1, max_length=MAX_GROUP_NODES
    )


class EnrollBody(Body):
    #: Where the node's FPBL agent reaches this instance; default: ``[provisioning] agent_url``.
    agent_url: str | None = None


class AgentCheckinBody(Body):
    mode: Literal["ready", "return"]
    boot_id: str = Field(max_length=64)
    kernel: str = Field(default="", max_length=200)
    memory_kb: int = Field(default=0, ge=0)
    disks: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    #: ``elfcorehdr=`` is on the agent's kernel command line: it runs as a crash kernel.
    elfcorehdr: bool = False


class AgentReportBody(Body):
    job: str = Field(max_length=64)
    phase: str = Field(max_length=64)
    state: Literal["start", "done", "error"]
    at: float
    detail: str = ""
    progress: dict[str, int] | None = None


def _ip(value: str | None) -> str | None:
    if value is not None:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value[:60]!r} is not an IP address") from None
    return value


class PeerAddress(Body):
    address: str = Field(max_length=64)
    port: int = Field(gt=0, lt=65536)

    _address = field_validator("address")(_ip)


class AgentPeersBody(Body):
    """An agent's announcement to the peer-exchange tracker (see rhaas.core.provisioning.tracker)."""

    #: Where it serves chunks to its peers; the address is the one it calls from unless given.
    port: int = Field(gt=0, lt=65536)
    address: str | None = Field(default=None, max_length=64)
    #: The pieces it has verified and written: a bit map in hex, bit n for the n-th piece of the work
    #: answer's extents, in order (a million pieces at most).
    have: str = Field(default="", max_length=1 << 18, pattern=r"^[0-9a-f]*$")
    #: Peers it dropped (they served a chunk that did not match, stalled, or could not be reached).
    dropped: list[PeerAddress] = Field(default_factory=list, max_length=1024)

    _address = field_validator("address")(_ip)
