"""``rhaas node ...``: nodes, their NICs, networks, metadata, OBM, power, boot device and console."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click

from rhaas.cli.common import (
    emit,
    json_option,
    parse_assignment,
    pass_client,
    report_action,
    timeout_option,
    wait_option,
)
from rhaas.cli.table import fields, table
from rhaas.client import Client

#: HIL's type URLs for in-tree OBMs start with these; anything else http(s) is an obmd URI.
HIL_OBM_URLS = ("http://schema.massopencloud.org/haas/v0/obm/", "http://schema.massopencloud.org/hil/v0/obm/")


@click.group()
def node() -> None:
    """Nodes: registration, NICs, networks, metadata, OBM, power and console."""


@node.command("list")
@click.argument("which", type=click.Choice(["free", "all"]))
@json_option
@pass_client
def list_nodes(client: Client, which: str, as_json: bool) -> None:
    """List the free nodes, or all nodes."""
    emit(client.node.list(which), as_json, lambda data: table(["node"], [[n] for n in data]))


def render_node(data: dict[str, Any]) -> str:
    head = fields(
        [("name", data.get("name")), ("project", data.get("project")), ("metadata", data.get("metadata"))]
    )
    rows = [
        [nic.get("label"), nic.get("macaddr"), nic.get("switch"), nic.get("port"), nic.get("networks")]
        for nic in data.get("nics", [])
    ]
    return head + "\n\n" + table(["nic", "macaddr", "switch", "port", "networks"], rows, empty="(no nics)")


@node.command()
@click.argument("node")
@json_option
@pass_client
def show(client: Client, node: str, as_json: bool) -> None:
    """Show NODE: project, metadata, NICs and their networks."""
    emit(client.node.show(node), as_json, render_node)


@node.command()
@click.argument("node")
@click.argument("obm_type", metavar="OBM_TYPE")
@click.argument("host")
@click.argument("user", required=False)
@click.argument("password", required=False)
@click.option("--port", type=click.IntRange(1, 65535), help="The BMC's port (IPMI: UDP 623).")
@click.option(
    "--metadata",
    "metadata",
    multiple=True,
    metavar="LABEL=VALUE",
    help="Metadata to set at registration (LABEL:=JSON for a JSON value); repeatable.",
)
@pass_client
def register(
    client: Client,
    node: str,
    obm_type: str,
    host: str,
    user: str | None,
    password: str | None,
    port: int | None,
    metadata: tuple[str, ...],
) -> None:
    """Register NODE with its BMC: OBM_TYPE (ipmi, redfish, mock or a HIL type URL), HOST, USER and PASSWORD.

    HIL master's form, NODE OBMD_URI ADMIN_TOKEN, registers an obmd-managed node."""
    meta = dict(parse_assignment(item, "--metadata") for item in metadata) or None
    is_url = obm_type.startswith(("http://", "https://"))
    if user is None and password is None and is_url and not obm_type.startswith(HIL_OBM_URLS):
        client.node.register_obmd(node, obm_type, host, metadata=meta)
        return
    if user is None or password is None:
        raise click.UsageError("register needs NODE OBM_TYPE HOST USER PASSWORD (or NODE OBMD_URI TOKEN).")
    client.node.register(node, obm_type, host, user, password, port=port, metadata=meta)


@node.command()
@click.argument("node")
@pass_client
def delete(client: Client, node: str) -> None:
    """Delete NODE (it must be free and have no NICs)."""
    client.node.delete(node)


@node.command()
@click.argument("node")
@click.argument("device", metavar="DEVICE")
@pass_client
def bootdev(client: Client, node: str, device: str) -> None:
    """Set the next boot DEVICE of NODE (pxe, disk or none)."""
    client.node.set_bootdev(node, device)


# -- NICs and networks --------------------------------------------------------------------------------
@node.group()
def nic() -> None:
    """The NICs of a node."""


@nic.command("register")
@click.argument("node")
@click.argument("nic")
@click.argument("macaddr")
@pass_client
def nic_register(client: Client, node: str, nic: str, macaddr: str) -> None:
    """Add NIC with MACADDR to NODE."""
    client.node.add_nic(node, nic, macaddr)


@nic.command("delete")
@click.argument("node")
@click.argument("nic")
@pass_client
def nic_delete(client: Client, node: str, nic: str) -> None:
    """Remove NIC from NODE."""
    client.node.remove_nic(node, nic)


@node.group()
def network() -> None:
    """Attach networks to a node's NICs, and detach them."""


@network.command("connect")
@click.argument("node")
@click.argument("nic")
@click.argument("network")
@click.argument("channel", required=False)
@wait_option
@timeout_option
@json_option
@pass_client
def network_connect(
    client: Client,
    node: str,
    nic: str,
    network: str,
    channel: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Attach NETWORK to NIC of NODE, on CHANNEL (default: the network's default, vlan/native)."""
    report_action(client, client.node.connect_network(node, nic, network, channel), wait, timeout, as_json)


@network.command("detach")
@click.argument("node")
@click.argument("nic")
@click.argument("network")
@wait_option
@timeout_option
@json_option
@pass_client
def network_detach(
    client: Client, node: str, nic: str, network: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Detach NETWORK from NIC of NODE."""
    report_action(client, client.node.detach_network(node, nic, network), wait, timeout, as_json)


# -- metadata -----------------------------------------------------------------------------------------
@node.group()
def metadata() -> None:
    """Metadata labels of a node."""


@metadata.command("add")
@click.argument("node")
@click.argument("label")
@click.argument("value")
@click.option("--json-value", is_flag=True, help="VALUE is JSON (default: it is sent as a string).")
@pass_client
def metadata_add(client: Client, node: str, label: str, value: str, json_value: bool) -> None:
    """Set LABEL of NODE to VALUE."""
    parsed: Any = value
    if json_value:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} is not JSON ({exc})", param_hint="VALUE") from exc
    client.node.metadata_set(node, label, parsed)


@metadata.command("delete")
@click.argument("node")
@click.argument("label")
@pass_client
def metadata_delete(client: Client, node: str, label: str) -> None:
    """Remove LABEL from NODE."""
    client.node.metadata_delete(node, label)


# -- OBM, power, console ------------------------------------------------------------------------------
@node.group()
def obm() -> None:
    """Enable or disable a node's out-of-band management (needed for power and console)."""


@obm.command("enable")
@click.argument("node")
@pass_client
def obm_enable(client: Client, node: str) -> None:
    """Enable the OBM of NODE."""
    client.node.enable_obm(node)


@obm.command("disable")
@click.argument("node")
@pass_client
def obm_disable(client: Client, node: str) -> None:
    """Disable the OBM of NODE."""
    client.node.disable_obm(node)


@node.group()
def power() -> None:
    """Power a node on, off or through a cycle; read its power state; send it an NMI."""


@power.command("on")
@click.argument("node")
@pass_client
def power_on(client: Client, node: str) -> None:
    """Power NODE on."""
    client.node.power_on(node)


@power.command("off")
@click.argument("node")
@pass_client
def power_off(client: Client, node: str) -> None:
    """Power NODE off."""
    client.node.power_off(node)


@power.command("cycle")
@click.argument("node")
@click.option("--force", is_flag=True, help="Reset at once instead of asking the OS to shut down.")
@pass_client
def power_cycle(client: Client, node: str, force: bool) -> None:
    """Reboot NODE."""
    client.node.power_cycle(node, force=force)


@power.command("status")
@click.argument("node")
@json_option
@pass_client
def power_status(client: Client, node: str, as_json: bool) -> None:
    """Show whether NODE is powered on."""
    emit(client.node.power_status(node), as_json, lambda data: str(data.get("power_status")))


@power.command("nmi")
@click.argument("node")
@pass_client
def power_nmi(client: Client, node: str) -> None:
    """Send NODE a diagnostic interrupt (NMI): a crash dump, or a kernel panic."""
    client.node.power_nmi(node)


@node.group()
def console() -> None:
    """The serial console of a node."""


@console.command("show")
@click.argument("node")
@pass_client
def console_show(client: Client, node: str) -> None:
    """Print NODE's serial console as it arrives, until interrupted (Ctrl-C)."""
    with contextlib.closing(client.node.show_console(node)) as chunks:
        for chunk in chunks:
            click.echo(chunk, nl=False)
