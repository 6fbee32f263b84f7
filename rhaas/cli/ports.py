"""``rhaas port ...``: switch ports and the NICs cabled to them (admin)."""

from __future__ import annotations

from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client, report_action, timeout_option, wait_option
from rhaas.cli.table import fields
from rhaas.client import Client


@click.group()
def port() -> None:
    """Switch ports and the NICs cabled to them (admin)."""


@port.command()
@click.argument("switch")
@click.argument("port")
@pass_client
def register(client: Client, switch: str, port: str) -> None:
    """Register PORT (e.g. gi1/0/1) on SWITCH."""
    client.port.register(switch, port)


@port.command()
@click.argument("switch")
@click.argument("port")
@pass_client
def delete(client: Client, switch: str, port: str) -> None:
    """Delete PORT of SWITCH (no NIC may be cabled to it)."""
    client.port.delete(switch, port)


def render_port(data: dict[str, Any]) -> str:
    if not data:
        return "(no nic is connected to this port)"
    return fields([("node", data.get("node")), ("nic", data.get("nic")), ("networks", data.get("networks"))])


@port.command()
@click.argument("switch")
@click.argument("port")
@json_option
@pass_client
def show(client: Client, switch: str, port: str, as_json: bool) -> None:
    """Show the NIC cabled to PORT of SWITCH and the networks on it."""
    emit(client.port.show(switch, port), as_json, render_port)


@port.command()
@click.argument("switch")
@click.argument("port")
@json_option
@pass_client
def state(client: Client, switch: str, port: str, as_json: bool) -> None:
    """Read back from the switch what PORT carries (native and tagged VLANs)."""

    def render(data: dict[str, Any]) -> str:
        return fields([("native", data.get("native")), ("tagged", data.get("tagged"))])

    emit(client.port.state(switch, port), as_json, render)


@port.command()
@click.argument("switch")
@click.argument("port")
@wait_option
@timeout_option
@json_option
@pass_client
def revert(client: Client, switch: str, port: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Remove every network from PORT of SWITCH."""
    report_action(client, client.port.revert(switch, port), wait, timeout, as_json)


@port.group()
def nic() -> None:
    """Record which NIC is cabled to a port."""


@nic.command("add")
@click.argument("switch")
@click.argument("port")
@click.argument("node")
@click.argument("nic")
@pass_client
def nic_add(client: Client, switch: str, port: str, node: str, nic: str) -> None:
    """Record that NIC of NODE is cabled to PORT of SWITCH."""
    client.port.connect_nic(switch, port, node, nic)


@nic.command("remove")
@click.argument("switch")
@click.argument("port")
@pass_client
def nic_remove(client: Client, switch: str, port: str) -> None:
    """Forget the NIC cabled to PORT of SWITCH."""
    client.port.detach_nic(switch, port)
