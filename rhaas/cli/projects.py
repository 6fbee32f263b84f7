"""``rhaas project ...``: projects, their networks and their nodes."""

from __future__ import annotations

from collections.abc import Callable

import click

from rhaas.cli.common import emit, json_option, pass_client, timeout_option
from rhaas.cli.table import table
from rhaas.client import Client

NATIVE = "vlan/native"


def names(header: str) -> Callable[[list[str]], str]:
    """A renderer for a list of names: one column."""
    return lambda data: table([header], [[name] for name in data])


@click.group()
def project() -> None:
    """Projects, their networks and their nodes."""


@project.command("list")
@json_option
@pass_client
def list_projects(client: Client, as_json: bool) -> None:
    """List all projects."""
    emit(client.project.list(), as_json, names("project"))


@project.command()
@click.argument("project")
@pass_client
def create(client: Client, project: str) -> None:
    """Create PROJECT."""
    client.project.create(project)


@project.command()
@click.argument("project")
@pass_client
def delete(client: Client, project: str) -> None:
    """Delete PROJECT (it must hold no nodes, networks or network access)."""
    client.project.delete(project)


@project.command("list-networks")
@click.argument("project")
@json_option
@pass_client
def list_networks(client: Client, project: str, as_json: bool) -> None:
    """List the networks PROJECT has access to."""
    emit(client.project.networks_in(project), as_json, names("network"))


@project.group("node")
def node() -> None:
    """The nodes of a project."""


@node.command("list")
@click.argument("project")
@json_option
@pass_client
def list_nodes(client: Client, project: str, as_json: bool) -> None:
    """List the nodes of PROJECT."""
    emit(client.project.nodes_in(project), as_json, names("node"))


@node.command("add")
@click.argument("project")
@click.argument("node")
@pass_client
def add_node(client: Client, project: str, node: str) -> None:
    """Claim the free NODE for PROJECT."""
    client.project.connect(project, node)


@node.command("claim")
@click.argument("project")
@click.argument("count", type=click.IntRange(min=1, max=1000))
@json_option
@pass_client
def claim_nodes(client: Client, project: str, count: int, as_json: bool) -> None:
    """Claim any COUNT free nodes for PROJECT (a recursive instance grows its pool if it must)."""
    emit(client.project.connect_nodes(project, count), as_json, names("node"))


@node.command("remove")
@click.argument("project")
@click.argument("node")
@click.option(
    "--force",
    is_flag=True,
    help="First detach every network from the node's NICs (waiting for each) and disable its OBM.",
)
@timeout_option
@pass_client
def remove_node(client: Client, project: str, node: str, force: bool, timeout: float) -> None:
    """Give NODE of PROJECT back to the free pool."""
    if force:
        clean_node(client, project, node, timeout)
    client.project.detach(project, node)


def clean_node(client: Client, project: str, node: str, timeout: float) -> None:
    """Make NODE detachable: no networks on any NIC, OBM disabled.

    An admin sees each NIC's switch port and reverts it (one action per NIC); a project member does not,
    and detaches each network instead, tagged channels before the native one (some switches insist)."""
    shown = client.node.show(node)
    if shown.get("project") != project:
        return  # detaching will say what is wrong; touch nothing of a node outside the project
    for nic in shown.get("nics", []):
        networks: dict[str, str] = nic.get("networks") or {}
        if not networks:
            continue
        if nic.get("switch") and nic.get("port"):
            answer = client.port.revert(nic["switch"], nic["port"])
            client.wait_networking_action(answer["status_id"], timeout)
            continue
        for _channel, network in sorted(networks.items(), key=lambda item: item[0] == NATIVE):
            answer = client.node.detach_network(node, nic["label"], network)
            client.wait_networking_action(answer["status_id"], timeout)
    client.node.disable_obm(node)
