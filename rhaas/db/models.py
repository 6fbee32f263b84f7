"""SQLAlchemy models: the single source of truth for every committed state.

Names follow HIL's data model where HIL has one (``label`` is an object's name). Drivers are not tables:
a switch or a node's OBM stores its driver name and its validated settings as JSON.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite, as HIL does.
Id = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON}


user_projects = Table(
    "user_projects",
    Base.metadata,
    Column("user_id", Id, ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", Id, ForeignKey("project.id", ondelete="CASCADE"), primary_key=True),
)

network_projects = Table(
    "network_projects",
    Base.metadata,
    Column("network_id", Id, ForeignKey("network.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", Id, ForeignKey("project.id", ondelete="CASCADE"), primary_key=True),
)


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    projects: Mapped[list[Project]] = relationship(secondary=user_projects, order_by=Project.label)


class Switch(Base):
    __tablename__ = "switch"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(255))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ports: Mapped[list[Port]] = relationship(back_populates="switch", order_by="Port.label")


class Port(Base):
    __tablename__ = "port"
    __table_args__ = (UniqueConstraint("switch_id", "label"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    switch_id: Mapped[int] = mapped_column(Id, ForeignKey("switch.id"), index=True)
    switch: Mapped[Switch] = relationship(back_populates="ports")
    nic: Mapped[Nic | None] = relationship(back_populates="port")


class Generation(Base):
    """Change counters kept by database triggers (migration 0003): ``node`` moves whenever a node is
    added, removed, renamed or changes project, so readers can cache node lists safely."""

    __tablename__ = "generation"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Node(Base):
    __tablename__ = "node"
    __table_args__ = (Index("ix_node_project_label", "project_id", "label"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)
    project_id: Mapped[int | None] = mapped_column(Id, ForeignKey("project.id"))
    obm_type: Mapped[str] = mapped_column(String(255))
    obm_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    obm_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    project: Mapped[Project | None] = relationship()
    nics: Mapped[list[Nic]] = relationship(back_populates="node", order_by="Nic.label")
    metadata_items: Mapped[list[NodeMetadata]] = relationship(
        back_populates="node", order_by="NodeMetadata.label", cascade="all, delete-orphan"
    )


class NodeMetadata(Base):
    __tablename__ = "node_metadata"
    __table_args__ = (UniqueConstraint("node_id", "label"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    node_id: Mapped[int] = mapped_column(Id, ForeignKey("node.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    node: Mapped[Node] = relationship(back_populates="metadata_items")


class Nic(Base):
    __tablename__ = "nic"
    __table_args__ = (UniqueConstraint("node_id", "label"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    macaddr: Mapped[str] = mapped_column(String(255))
    node_id: Mapped[int] = mapped_column(Id, ForeignKey("node.id"), index=True)
    port_id: Mapped[int | None] = mapped_column(Id, ForeignKey("port.id"), unique=True)
    node: Mapped[Node] = relationship(back_populates="nics")
    port: Mapped[Port | None] = relationship(back_populates="nic")
    attachments: Mapped[list[NetworkAttachment]] = relationship(
        back_populates="nic", order_by="NetworkAttachment.channel"
    )


class Network(Base):
    __tablename__ = "network"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)
    owner_id: Mapped[int | None] = mapped_column(Id, ForeignKey("project.id"), index=True)
    network_id: Mapped[str] = mapped_column(String(255))
    allocated: Mapped[bool] = mapped_column(Boolean)
    #: On a recursive instance: the upstream network this one is (its name there).
    upstream_label: Mapped[str | None] = mapped_column(String(255), unique=True)
    owner: Mapped[Project | None] = relationship()
    access: Mapped[list[Project]] = relationship(secondary=network_projects, order_by=Project.label)
    attachments: Mapped[list[NetworkAttachment]] = relationship(back_populates="network")


class NetworkAttachment(Base):
    """A NIC carries a network on a channel. Written only when the switch has done it."""

    __tablename__ = "network_attachment"
    __table_args__ = (UniqueConstraint("nic_id", "channel"), UniqueConstraint("nic_id", "network_id"))
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    nic_id: Mapped[int] = mapped_column(Id, ForeignKey("nic.id"))
    network_id: Mapped[int] = mapped_column(Id, ForeignKey("network.id"), index=True)
    channel: Mapped[str] = mapped_column(String(255))
    nic: Mapped[Nic] = relationship(back_populates="attachments")
    network: Mapped[Network] = relationship(back_populates="attachments")


PENDING, DONE, ERROR = "PENDING", "DONE", "ERROR"


class NetworkingAction(Base):
    """A queued switch change. At most one PENDING per NIC (a partial unique index enforces it).

    Unlike HIL, finished actions are kept, so a status id stays queryable. A worker claims an action by
    setting ``claimed_by`` and a lease; a lease that runs out lets another worker take the action over.
    """

    __tablename__ = "networking_action"
    __table_args__ = (
        Index(
            "uq_networking_action_pending_nic",
            "nic_id",
            unique=True,
            sqlite_where=text("status = 'PENDING'"),
            postgresql_where=text("status = 'PENDING'"),
        ),
        Index("ix_networking_action_status", "status", "id"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    nic_id: Mapped[int] = mapped_column(Id, ForeignKey("nic.id", ondelete="CASCADE"), index=True)
    new_network_id: Mapped[int | None] = mapped_column(Id, ForeignKey("network.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(255), default="")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    nic: Mapped[Nic] = relationship()
    new_network: Mapped[Network | None] = relationship()


class Vlan(Base):
    """The VLAN pool of the ``vlan_pool`` network allocator."""

    __tablename__ = "vlan"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    vlan_no: Mapped[int] = mapped_column(Integer, unique=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True)


class Blob(Base):
    """Content in the image store, named by its sha256 (the bytes live in the store's directory)."""

    __tablename__ = "blob"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Image(Base):
    """An OS image a node can be provisioned with: kernel, initrd, optional disk image, command line.

    ``owner`` is the project that registered it (private to that project), or NULL for a public image
    registered by an administrator. A whole-disk image (a `DiskManifest` and its `ImageExtent` rows in
    the chunk store) needs no kernel or initrd: those two are then NULL, or overrides kept for later.
    """

    __tablename__ = "image"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    label: Mapped[str] = mapped_column(String(255), unique=True)
    owner_id: Mapped[int | None] = mapped_column(Id, ForeignKey("project.id"), index=True)
    kernel_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    initrd_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    disk_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    cmdline: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    owner: Mapped[Project | None] = relationship()
    kernel: Mapped[Blob | None] = relationship(foreign_keys=[kernel_sha256])
    initrd: Mapped[Blob | None] = relationship(foreign_keys=[initrd_sha256])
    disk: Mapped[Blob | None] = relationship(foreign_keys=[disk_sha256])
    #: A whole-disk image's manifest (its extents are `ImageExtent` rows); None for a kernel + initrd image.
    manifest: Mapped[DiskManifest | None] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    """Up to 4 MiB of a whole-disk image's data, named by the sha256 of its bytes.

    The bytes live in the database itself, not in a directory of one server: every API server sharing the
    database reads the same store, and a backup of the database holds the images. A chunk is never all
    zeros (a hole is neither stored nor sent) and is shared by every image holding the same bytes.
    """

    __tablename__ = "chunk"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    #: The raw SHA-256 digests of its pieces (slices of `rhaas.core.chunks.PIECE_SIZE` bytes), one after
    #: the other: what the agents' peer exchange checks each piece against. NULL for a chunk stored before
    #: pieces existed: computed when first needed.
    pieces: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ChunkUpload(Base):
    """A user sent a chunk's bytes: proof that the user has them, so the user may name the chunk in an
    image without sending it again. Nobody else learns from the store that the chunk exists."""

    __tablename__ = "chunk_upload"
    sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("chunk.sha256", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DiskManifest(Base):
    """What a whole-disk image is: its logical size and content digest (zeros in holes included), and the
    format it was uploaded in (``raw``, ``qcow2``, ``gzip``, ``xz``, ``zstd``: for the record; the store
    holds the logical content, whatever the format)."""

    __tablename__ = "disk_manifest"
    image_id: Mapped[int] = mapped_column(Id, ForeignKey("image.id", ondelete="CASCADE"), primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    logical_sha256: Mapped[str] = mapped_column(String(64))
    image: Mapped[Image] = relationship(back_populates="manifest")


class ImageExtent(Base):
    """One stored chunk of a whole-disk image: bytes ``start`` to ``start + length`` of its logical content.

    ``start`` is a multiple of the chunk size; a chunk-sized range with no row is a hole (zeros). A chunk
    cannot be deleted while a row names it (the foreign key has no cascade)."""

    __tablename__ = "image_extent"
    image_id: Mapped[int] = mapped_column(Id, ForeignKey("image.id", ondelete="CASCADE"), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    length: Mapped[int] = mapped_column(Integer)
    chunk_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("chunk.sha256"), index=True)


class NodeProvisioning(Base):
    """A node under fast provisioning: its FPBL agent's secret, what the agent last said, its state.

    ``state`` is one of `rhaas.states.STATES`, changed only by `rhaas.states.transition`; a node is free
    to claim only when it has no row here or its state is ``ready``.
    """

    __tablename__ = "node_provisioning"
    node_id: Mapped[int] = mapped_column(Id, ForeignKey("node.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    #: sha256 of the agent's bearer secret (a random token: no slow KDF needed).
    secret_sha256: Mapped[str] = mapped_column(String(64))
    #: sha256 of the return token of the deploy handed out last (what the customer's OS can read): good
    #: for one return check-in of that deploy's crash kernel, then None.
    return_sha256: Mapped[str | None] = mapped_column(String(64))
    boot_id: Mapped[str | None] = mapped_column(String(64))
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: The provisioning network's VLAN and the NIC it holds while the FPBL owns the node (every state but
    #: ``deployed``); None: the NIC carries the project's networks only (no provisioning network).
    vlan: Mapped[str | None] = mapped_column(String(64))
    nic: Mapped[str | None] = mapped_column(String(255))
    #: Who holds the NIC changed (FPBL ↔ customer) and the switch has not been told yet.
    port_dirty: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: A network boot into the FPBL (boot device PXE, power cycle) is due once the port is synced.
    boot_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: The node's disks read zeroes: wiped (every block) and verified since a customer last wrote them.
    #: A whole-disk deploy then skips the image's holes instead of zeroing them.
    disk_zeroed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    node: Mapped[Node] = relationship()


class ProvisionJob(Base):
    """One deploy (image onto a node) or return (node back to ready, wiped), with its phases as reported.

    ``phases`` is a list of ``{"phase", "state", "at", "detail"}``; ``path`` says whether the job went
    the fast way (kexec / NMI) or fell back to a firmware reboot.
    """

    __tablename__ = "provision_job"
    __table_args__ = (
        Index("ix_provision_job_node_status", "node_id", "status"),
        Index("ix_provision_job_group_uuid", "group_uuid"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    #: The provision group of a deploy started by a fleet-sized request (one id for all its nodes).
    group_uuid: Mapped[str | None] = mapped_column(String(36))
    node_id: Mapped[int] = mapped_column(Id, ForeignKey("node.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    image_id: Mapped[int | None] = mapped_column(Id, ForeignKey("image.id", ondelete="SET NULL"))
    project_id: Mapped[int | None] = mapped_column(Id, ForeignKey("project.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    path: Mapped[str] = mapped_column(String(16), default="fast")
    phases: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    #: A deploy's first-boot data for cloud-init (``ssh_keys``, ``user_data``, ``network_config``) and
    #: its boot entry overrides (``kernel``, ``initrd``, ``cmdline``); None: none given.
    seed: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: A return's wipe policy, as handed to the agent (None until then).
    wipe_policy: Mapped[str | None] = mapped_column(String(16))
    #: A deploy's: the node's disks read zeroes when it was first handed out (its holes need no writing).
    disk_zeroed: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deadline: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    node: Mapped[Node] = relationship()
    image: Mapped[Image | None] = relationship()
    project: Mapped[Project | None] = relationship()
