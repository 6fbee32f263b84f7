"""Typed settings, one model per section, loaded from an optional TOML file and command-line flags.

Example ``rhaas.toml``::

    [database]
    url = "postgresql://rhaas@db.example.org/rhaas"

    [auth]
    mode = "database"        # or "null" (everyone is admin: development only)

    [networks]
    vlans = "100-999"        # the VLAN pool of the vlan_pool allocator

    [worker]
    in_process = true        # apply networking actions inside the API server
    threads = 8

    [upstream]               # only for a recursive instance
    url = "http://hil.example.org:5000"
    project = "reseller"
    user = "reseller-bot"
    password = "…"

    [images]
    store = "/var/lib/rhaas/images"   # kernels, initrds and disk images, one file per sha256

    [provisioning]           # fast provisioning: FPBL agents, kexec deploys, NMI returns
    enabled = true
    agent_listen = "10.20.0.1:5001"  # the agents' listener (TLS): provisioning network only
    agent_url = "https://10.20.0.1:5001"
    boot_listen = "10.20.0.1:8080"   # the network boot's (plain HTTP: what firmware fetches)
    boot_url = "http://10.20.0.1:8080"
    fpbl_dir = "/var/lib/rhaas/fpbl"
    return_timeout = 60      # seconds before a return falls back to power cycle → network boot

    [pool]
    min_free = 0
    max_nodes = 20
    node_filter = "^rack3-"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(Section):
    url: str = "sqlite:///rhaas.sqlite3"


class AuthSettings(Section):
    mode: Literal["database", "null"] = "database"
    #: How long a verified password is remembered, so a request does not pay for the KDF each time.
    cache_seconds: float = Field(default=60.0, ge=0, le=3600)


class NetworkSettings(Section):
    vlans: str = "100-999"


class WorkerSettings(Section):
    in_process: bool = True
    threads: int = Field(default=8, ge=1, le=256)
    poll_interval: float = Field(default=0.5, gt=0, le=60)
    lease_seconds: float = Field(default=120.0, gt=0, le=3600)


class UpstreamSettings(Section):
    """Set ``url`` to make this a recursive instance of the HIL-compatible service at ``url``."""

    url: str | None = None
    project: str = ""
    user: str | None = None
    password: str | None = None
    #: Prefix of the upstream networks this instance creates (unique per instance on one upstream).
    network_prefix: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)
    #: How long a networking action upstream may take, outages included, before it counts as failed
    #: (an upstream that is unreachable or answers 5xx is tried again, with backoff, within it).
    action_timeout: float = Field(default=120.0, gt=0, le=3600)
    #: Seconds between background reconciles with the upstream, which repair drift as
    #: ``rhaas pool reconcile --fix`` does (0: none; run by the process that runs the networking worker).
    reconcile_interval: float = Field(default=60.0, ge=0, le=86400)


class PoolSettings(Section):
    """Bounds on the free pool of a recursive instance."""

    min_free: int = Field(default=0, ge=0)
    max_nodes: int | None = Field(default=None, ge=0)
    #: Only upstream nodes whose names match this regular expression are claimed.
    node_filter: str = ".*"
    #: Claim from upstream when a project asks for more nodes than the pool holds.
    auto_grow: bool = True


class ImageSettings(Section):
    """The content-addressed image store: one file per sha256 under ``store``."""

    store: str = "rhaas-images"
    #: The largest kernel, initrd or disk image accepted, in bytes.
    max_blob_bytes: int = Field(default=8 * 2**30, gt=0)


class ProvisioningSettings(Section):
    """Fast provisioning (kexec deploys, NMI returns) of nodes enrolled with an FPBL agent."""

    enabled: bool = False
    #: ``HOST:PORT`` of the listener serving the FPBL agents' API, over TLS (``rhaas-admin serve`` runs it
    #: beside the customer API). Bind it to an address on the provisioning network only: what it serves
    #: hands out agent secrets. Required when ``enabled``.
    agent_listen: str | None = None
    #: The PEM file with that listener's private key and self-signed certificate, made on the first start
    #: if missing. Agents are booted with the SHA-256 of the certificate (``rhaas.pin=``) and talk to no
    #: server without it: replacing the file cuts off every FPBL booted before.
    agent_tls_key: str = "rhaas-agent-tls.pem"
    #: The URL at which FPBL agents reach this instance (written into their kernel command line): the
    #: ``agent_listen`` listener, directly or through the boot service's relay: ``https://HOST:PORT``.
    agent_url: str | None = None
    #: ``HOST:PORT`` of the network boot's plain-HTTP listener (iPXE scripts, the FPBL's kernel and
    #: initrd: what a node's firmware fetches, with no TLS to speak of). Required with ``boot_url``.
    boot_listen: str | None = None
    deploy_timeout: float = Field(default=600.0, gt=0, le=86400)
    #: How long the return FPBL may take to check in after the NMI before the reboot path is taken.
    return_timeout: float = Field(default=60.0, gt=0, le=86400)
    reboot_timeout: float = Field(default=600.0, gt=0, le=86400)
    #: How a return wipes the disks: ``full`` (every block zeroed, by the device where it can: BLKZEROOUT),
    #: ``discard`` (every block discarded, what still reads non-zero written over), or ``metadata`` (only
    #: the first and last MiB of each disk and partition: an opt-in that leaves the data between readable).
    wipe_policy: Literal["full", "discard", "metadata"] = "full"
    #: How much of each wipe the agent reads back: ``sample`` (the metadata regions and 64 random ranges
    #: spread over the disk, on every return) or ``full`` (every wiped byte).
    wipe_verify: Literal["sample", "full"] = "sample"
    #: Also zero the RAM the customer's kernel had, and read it back (a return takes longer).
    memory_scrub: bool = False
    #: How returns start: ``fast`` (NMI into the crash FPBL, power cycle as the fallback) or ``reboot``
    #: (power cycle into a network boot of the FPBL, for BMCs or upstreams without an NMI).
    return_path: Literal["fast", "reboot"] = "fast"
    agent_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    tick_seconds: float = Field(default=0.5, gt=0, le=60)
    #: The provisioning network: a network of this instance (admin-owned) whose VLAN an enrolled node's
    #: NIC ``nic`` carries whenever the FPBL owns the node (every state but ``deployed``); the project's
    #: networks take the NIC over once the customer's OS is up, and give it back at the return.
    #: None: the NIC carries the project's networks only, and nodes reach the agent API some other way.
    network: str | None = None
    nic: str = "eth0"
    #: Where nodes' iPXE reaches this instance's boot routes (``<boot_url>/boot/v1/...``), e.g. through
    #: ``rhaas-admin boot-service``'s relay. Set: enrolling a node also boots it from the network into
    #: the FPBL (boot device PXE, one power cycle), once its NIC is on the provisioning network.
    boot_url: str | None = None
    #: The FPBL the boot routes serve: the directory ``rhaas-admin fpbl build --out`` wrote.
    fpbl_dir: str | None = None
    #: More kernel parameters for the FPBL, after its own; the return FPBL inherits them. A server's serial
    #: console (``console=ttyS1,115200n8``), a driver's options (``MODULE.PARAM=VALUE``: the FPBL gives
    #: them to the module as modprobe does). Words of letters, digits and ``_.,:/=+@-``; no ``rhaas.*``.
    fpbl_args: str = Field(default="", max_length=1024)
    #: Agents deploying the same whole-disk image exchange its chunks with each other (each serves what it
    #: has verified, in plain HTTP on ``peer_port`` of its provisioning-network address), and a tracker on
    #: the agents' listener tells them of each other: the server sends about one image per fleet deploy
    #: instead of one per node. Off (the default, until it has been proven on the lab's nodes): every agent
    #: fetches every chunk from the server.
    peer_exchange: bool = False
    peer_port: int = Field(default=7070, gt=0, lt=65536)
    #: With the peer exchange, and not 0: each piece an agent takes from the server is also sent once to a
    #: multicast group of the image (UDP ``peer_port``, 239.255.x.y, TTL 1) at this many Mbit/s in all, and
    #: every agent deploying it takes it from there; the peers only repair what the network lost. Set it
    #: below the slowest node link's rate (the group's datagrams reach every node; a full link drops them),
    #: on a provisioning network that carries multicast (switches flood it, or snoop IGMP). 0 (the
    #: default): no multicast.
    peer_multicast_mbit: int = Field(default=0, ge=0, le=400_000)

    @field_validator("fpbl_args")
    @classmethod
    def _kernel_words(cls, value: str) -> str:
        if any(c.isspace() and c != " " for c in value):
            raise ValueError("[provisioning] fpbl_args: one line, its words separated by spaces")
        for word in value.split():
            if not _KERNEL_WORD.fullmatch(word) or word.startswith("rhaas."):
                raise ValueError(
                    f"[provisioning] fpbl_args: {word[:40]!r} is not a kernel parameter it takes (words of "
                    "letters, digits and _.,:/=+@-, none of them rhaas.*)"
                )
        return " ".join(value.split())

    @field_validator("agent_listen", "boot_listen")
    @classmethod
    def _host_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            split_listen(value, str(info.field_name))
        return value


#: One kernel parameter ``fpbl_args`` may hold: nothing an iPXE script or a shell would read as more.
_KERNEL_WORD = re.compile(r"[A-Za-z0-9_.,:/=+@-]+")


def split_listen(value: str, setting: str = "agent_listen") -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` for an IPv6 address) → (host, port); ValueError naming the setting."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/ "):
        raise ValueError(f"[provisioning] {setting} must be HOST:PORT (e.g. 10.20.0.1:5001), not {value!r}")
    return host, int(port)


class Settings(Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    networks: NetworkSettings = Field(default_factory=NetworkSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    provisioning: ProvisioningSettings = Field(default_factory=ProvisioningSettings)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (TOML) with ``overrides`` given as ``section__key=value`` on top."""
    data: dict[str, Any] = {}
    if path is not None:
        data = tomllib.loads(Path(path).read_text())
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return Settings.model_validate(data)


def parse_vlan_ranges(spec: str) -> list[int]:
    """``"100-200, 300"`` → [100, …, 200, 300]. Raises ValueError on anything else."""
    vlans: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 4094:
            raise ValueError(f"VLAN range {part!r} is not within 1-4094")
        vlans.update(range(first, last + 1))
    return sorted(vlans)
