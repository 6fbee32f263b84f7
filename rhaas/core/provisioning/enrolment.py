"""Enrolment and agent credentials: a node put under fast provisioning, its agent's secret, its NIC.

An administrator enrols a free node (`enroll`): it gets a ``node_provisioning`` row in state
``booting``, a secret for its FPBL agent (stored hashed; `agent_row` checks it on every agent call),
and, with a provisioning network, the NIC the FPBL holds on that network (`holds_port`) in every state
but ``deployed``. Nothing here calls a switch or a BMC: the worker's ticker does, from the row's
``port_dirty`` and ``boot_pending`` flags.

Credentials are scoped to one deploy and one return. An agent secret is replaced at enrolment, at each
network boot, when a deploy is handed out (`rotate_secret`) and when a return check-in proves itself;
it dies when the agent reports ``kexec`` done (`revoke_secret`): the customer's kernel then runs, and
what it can read holds only the deploy's return token (`issue_return_token`), which `checkin_row`
accepts for one return check-in and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rhaas import states
from rhaas.config import ProvisioningSettings
from rhaas.core.access import Caller, get_node, require_admin
from rhaas.db.models import Generation, Network, Node, NodeProvisioning
from rhaas.errors import AuthorizationError, BadArgumentError, BlockedError, NotFoundError

_AUTH_FAILED = "Agent authentication failed."


#: What ``secret_sha256`` holds once the secret is revoked: no secret hashes to it.
REVOKED = ""


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def rotate_secret(row: NodeProvisioning) -> str:
    """A fresh agent secret for the node (stored hashed); every earlier one stops working."""
    secret = secrets.token_urlsafe(32)
    row.secret_sha256 = secret_hash(secret)
    return secret


def revoke_secret(row: NodeProvisioning) -> None:
    """No agent secret works for the node any more (its customer's kernel runs)."""
    row.secret_sha256 = REVOKED


def issue_return_token(row: NodeProvisioning) -> str:
    """A fresh return token for the deploy being handed out (stored hashed); any earlier one dies."""
    token = secrets.token_urlsafe(32)
    row.return_sha256 = secret_hash(token)
    return token


def agent_words(agent_url: str, node: str, pin: str | None) -> tuple[str, str]:
    """A fresh agent secret, and the kernel command-line words that tell the agent where and who it is,
    and (``pin``: the SHA-256 of the agents' listener's certificate) which server to believe."""
    secret = secrets.token_urlsafe(32)
    words = f"rhaas.agent={agent_url} rhaas.node={node} rhaas.secret={secret}"
    return secret, words + (f" rhaas.pin={pin}" if pin else "")


def check_agent_url(agent_url: str, pin: str | None) -> None:
    """Agents of an instance with a TLS key (``pin``) reach it over https only, and https needs a key."""
    if not agent_url.startswith(("http://", "https://")) or any(c.isspace() for c in agent_url):
        raise BadArgumentError(f"agent_url {agent_url[:100]!r} is not an https URL.")
    if pin and not agent_url.startswith("https://"):
        raise BadArgumentError(
            f"agent_url {agent_url[:100]!r}: agents reach this instance over https only (the agents'"
            " listener is TLS, its certificate pinned in each FPBL)."
        )
    if not pin and agent_url.startswith("https://"):
        raise BadArgumentError(
            f"agent_url {agent_url[:100]!r}: this instance has no agents' TLS key to pin"
            " ([provisioning] agent_tls_key)."
        )


def bump_node_generation(db: Session) -> None:
    """Free-node lists are cached per node generation; a state change here changes what is free."""
    db.execute(update(Generation).where(Generation.name == "node").values(value=Generation.value + 1))


def enroll(
    db: Session, caller: Caller, node_name: str, agent_url: str, settings: ProvisioningSettings,
    pin: str | None = None,
) -> dict[str, str]:  # fmt: skip
    """Put a node under fast provisioning (admin): a new agent secret, state ``booting``.

    Returns the kernel command-line words that tell the FPBL agent where to check in and as whom; the
    secret is shown only here (it is stored hashed). Enrolling again rotates the secret. With a
    provisioning network configured, the node's NIC is put on it (by the ticker, through the networking
    worker); with a boot URL, the ticker then boots the node from the network (boot device PXE, one
    power cycle), and each network boot's iPXE script (`boot_script`) carries a fresh secret.
    """
    require_admin(caller)
    node = get_node(db, node_name)
    if node.project_id is not None:
        raise BlockedError(f"Node {node_name} is in a project; only a free node can be enrolled.")
    check_agent_url(agent_url, pin)
    vlan = nic = None
    if settings.network is not None:
        network = db.scalar(select(Network).where(Network.label == settings.network))
        if network is None:
            raise NotFoundError(f"The provisioning network {settings.network} does not exist.")
        found = next((n for n in node.nics if n.label == settings.nic), None)
        if found is None or found.port is None:
            raise BadArgumentError(
                f"Node {node_name} has no NIC {settings.nic} on a switch port for the provisioning network."
            )
        vlan, nic = network.network_id, found.label
    secret, words = agent_words(agent_url, node.label, pin)
    row = db.get(NodeProvisioning, node.id)
    if row is None:
        row = NodeProvisioning(node_id=node.id, secret_sha256="")
        db.add(row)
    elif not states.allows(row.state, states.Event.ENROL):
        raise BlockedError(f"Node {node_name} is {row.state}; enrol it again once it is ready.")
    states.transition(row, states.Event.ENROL)
    row.secret_sha256, row.return_sha256, row.boot_id = secret_hash(secret), None, None
    row.vlan, row.nic, row.port_dirty = vlan, nic, vlan is not None
    row.boot_pending = settings.boot_url is not None
    bump_node_generation(db)
    return {"cmdline": words}


def hand_over(row: NodeProvisioning) -> None:
    """The NIC changes hands (FPBL ↔ the project's networks): the ticker tells the switch."""
    if row.vlan is not None:
        row.port_dirty = True


def holds_port(row: NodeProvisioning | None, nic_label: str) -> str | None:
    """The provisioning VLAN NIC ``nic_label`` carries instead of its project's networks, or None.

    The FPBL owns the node in every state but ``deployed``: while it boots, waits, downloads and wipes,
    the NIC is on the provisioning network whatever the project connected (those attachments are
    recorded, and reach the switch once the customer's OS is up)."""
    if row is None or row.vlan is None or row.nic != nic_label or row.state == states.DEPLOYED:
        return None
    return row.vlan


def agent_row(db: Session, node_name: str, authorization: str | None) -> NodeProvisioning:
    """The provisioning row of the agent calling as ``node_name``; AuthorizationError for anything else.

    Unknown nodes, nodes not enrolled and wrong secrets all get the same answer.
    """
    row, by_token = checkin_row(db, node_name, authorization)
    if by_token:
        raise AuthorizationError(_AUTH_FAILED)
    return row


def checkin_row(db: Session, node_name: str, authorization: str | None) -> tuple[NodeProvisioning, bool]:
    """Like `agent_row`, for a check-in, which may also present the return token: the row, and whether
    the token was what matched (the check-in then decides whether it takes it, see `refuse`)."""
    scheme, _, secret = (authorization or "").partition(" ")
    node = db.scalar(select(Node).where(Node.label == node_name))
    row = db.get(NodeProvisioning, node.id) if node is not None else None
    if scheme.lower() != "bearer" or row is None:
        raise AuthorizationError(_AUTH_FAILED)
    digest = secret_hash(secret.strip())
    if hmac.compare_digest(row.secret_sha256, digest):
        return row, False
    if row.return_sha256 is not None and hmac.compare_digest(row.return_sha256, digest):
        return row, True
    raise AuthorizationError(_AUTH_FAILED)


def refuse() -> AuthorizationError:
    """What a credential that is not good for the call gets: the same answer as a wrong one."""
    return AuthorizationError(_AUTH_FAILED)
