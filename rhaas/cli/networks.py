"""``rhaas network ...`` and ``rhaas networking-action ...``: networks, their access lists, and the
actions that attach them to NICs."""

from __future__ import annotations

from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client, render_action, report_action, timeout_option
from rhaas.cli.table import fields, table
from rhaas.client import Client


@click.group()
def network() -> None:
    """Networks and who may use them."""


def render_networks(data: dict[str, Any]) -> str:
    rows = [
        [name, info.get("network_id"), "(public)" if info.get("projects") is None else info["projects"]]
        for name, info in sorted(data.items())
    ]
    return table(["network", "network_id", "projects"], rows)


@network.command("list")
@json_option
@pass_client
def list_networks(client: Client, as_json: bool) -> None:
    """List networks (all of them for an admin, the public ones for others)."""
    emit(client.network.list(), as_json, render_networks)


def render_network(data: dict[str, Any]) -> str:
    access = data.get("access")
    connected = data.get("connected-nodes") or {}
    return fields(
        [
            ("name", data.get("name")),
            ("owner", data.get("owner")),
            ("access", "(public)" if access is None else access),
            ("channels", data.get("channels")),
            ("connected-nodes", {node: ", ".join(nics) for node, nics in sorted(connected.items())}),
        ]
    )


@network.command()
@click.argument("network")
@json_option
@pass_client
def show(client: Client, network: str, as_json: bool) -> None:
    """Show NETWORK: owner, access, channels and the nodes on it."""
    emit(client.network.show(network), as_json, render_network)


@network.command()
@click.argument("network")
@click.argument("owner")
@click.option("--access", help="The project that may use it (default: OWNER; '' for a public network).")
@click.option("--public", is_flag=True, help="Anyone may use it (admin; same as --access '').")
@click.option("--net-id", default="", help="An explicit network id, e.g. a VLAN (admin; default: allocate).")
@pass_client
def create(client: Client, network: str, owner: str, access: str | None, public: bool, net_id: str) -> None:
    """Create NETWORK owned by OWNER (a project, or 'admin')."""
    if public and access:
        raise click.UsageError("--public and --access are exclusive.")
    client.network.create(network, owner, "" if public else owner if access is None else access, net_id)


@network.command()
@click.argument("network")
@pass_client
def delete(client: Client, network: str) -> None:
    """Delete NETWORK (nothing may be attached to it)."""
    client.network.delete(network)


@network.command("list-attachments")
@click.argument("network")
@click.option("--project", help="Only the nodes of this project.")
@json_option
@pass_client
def list_attachments(client: Client, network: str, project: str | None, as_json: bool) -> None:
    """List the NICs attached to NETWORK."""

    def render(data: dict[str, Any]) -> str:
        rows = [[n, a.get("nic"), a.get("channel"), a.get("project")] for n, a in sorted(data.items())]
        return table(["node", "nic", "channel", "project"], rows)

    emit(client.network.list_attachments(network, project), as_json, render)


@network.command("grant-access")
@click.argument("network")
@click.argument("project")
@pass_client
def grant_access(client: Client, network: str, project: str) -> None:
    """Let PROJECT use NETWORK."""
    client.network.grant_access(network, project)


@network.command("revoke-access")
@click.argument("network")
@click.argument("project")
@pass_client
def revoke_access(client: Client, network: str, project: str) -> None:
    """Stop PROJECT from using NETWORK (its nodes must be detached first)."""
    client.network.revoke_access(network, project)


@click.group("networking-action")
def networking_action() -> None:
    """The queued actions that attach and detach networks."""


@networking_action.command("show")
@click.argument("status_id")
@json_option
@pass_client
def action_show(client: Client, status_id: str, as_json: bool) -> None:
    """Show the status of the action STATUS_ID."""
    emit(client.node.show_networking_action(status_id), as_json, render_action)


@networking_action.command("wait")
@click.argument("status_id")
@timeout_option
@json_option
@pass_client
def action_wait(client: Client, status_id: str, timeout: float, as_json: bool) -> None:
    """Wait until the action STATUS_ID is DONE (exit status 1 if it fails) and show it."""
    report_action(client, {"status_id": status_id}, True, timeout, as_json)
