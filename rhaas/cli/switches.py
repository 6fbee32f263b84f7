"""``rhaas switch ...``: switches (admin)."""

from __future__ import annotations

import ast
import json
from typing import Any

import click

from rhaas.cli.common import emit, json_option, parse_assignment, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client

HIL_SWITCH_URL = "http://schema.massopencloud.org/haas/v0/switches/"

#: HIL's positional shortcuts: subtype → names of the fields its arguments fill, in order. rhaas's own
#: drivers (mock, ovs) are sent by short name; HIL-only ones by HIL's type URL, for a HIL server.
SHORTCUTS: dict[str, tuple[str, ...]] = {
    "mock": ("hostname", "username", "password"),
    "ovs": ("bridge",),
    "powerconnect55xx": ("hostname", "username", "password"),
    "nexus": ("hostname", "username", "password", "dummy_vlan"),
    "delln3000": ("hostname", "username", "password", "dummy_vlan"),
    "brocade": ("hostname", "username", "password", "interface_type"),
    "dellnos9": ("hostname", "username", "password", "interface_type"),
}
RHAAS_TYPES = ("mock", "ovs")


@click.group()
def switch() -> None:
    """Switches (admin)."""


@switch.command("list")
@json_option
@pass_client
def list_switches(client: Client, as_json: bool) -> None:
    """List all switches."""
    emit(client.switch.list(), as_json, lambda data: table(["switch"], [[s] for s in data]))


def render_switch(data: dict[str, Any]) -> str:
    ports = [p.get("label") if isinstance(p, dict) else p for p in data.get("ports", [])]
    head = fields([("name", data.get("name")), ("capabilities", data.get("capabilities"))])
    return head + "\n\n" + table(["port"], [[p] for p in ports], empty="(no ports)")


@switch.command()
@click.argument("switch")
@json_option
@pass_client
def show(client: Client, switch: str, as_json: bool) -> None:
    """Show SWITCH and its ports."""
    emit(client.switch.show(switch), as_json, render_switch)


@switch.command()
@click.argument("switch")
@pass_client
def delete(client: Client, switch: str) -> None:
    """Delete SWITCH (it must have no ports)."""
    client.switch.delete(switch)


def positional_fields(type_: str, args: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """HIL's forms: ``<subtype> <field args...>``, or ``<type URL> '<dict literal>'`` → (type, fields)."""
    if not args:
        return (type_, {})
    if type_ in SHORTCUTS:
        names = SHORTCUTS[type_]
        if len(args) != len(names):
            wanted = " ".join(names).upper()
            raise click.UsageError(f"switch type {type_} takes {len(names)} arguments: {wanted}")
        wire_type = type_ if type_ in RHAAS_TYPES else HIL_SWITCH_URL + type_
        return wire_type, dict(zip(names, args, strict=True))
    if len(args) != 1:
        raise click.UsageError(f"give a switch of type {type_} its fields as one dict, or with --field")
    try:
        parsed = json.loads(args[0])
    except ValueError:
        try:
            parsed = ast.literal_eval(args[0])
        except (ValueError, SyntaxError):
            parsed = None
    if not isinstance(parsed, dict):
        raise click.UsageError(f"{args[0]!r} is not a dict of fields (JSON or Python literal)")
    return type_, parsed


@switch.command()
@click.argument("switch")
@click.argument("type_", metavar="TYPE")
@click.argument("args", nargs=-1, metavar="[ARGS]...")
@click.option("--bridge", help="ovs: the bridge to manage.")
@click.option("--db", help="ovs: the OVSDB to talk to (e.g. unix:/run/openvswitch/db.sock).")
@click.option(
    "--field",
    "field_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A driver field (KEY:=JSON for a JSON value, e.g. delay:=0.5); repeatable.",
)
@pass_client
def register(
    client: Client,
    switch: str,
    type_: str,
    args: tuple[str, ...],
    bridge: str | None,
    db: str | None,
    field_args: tuple[str, ...],
) -> None:
    """Register SWITCH of TYPE (ovs, mock, or a HIL type URL).

    \b
    HIL's shortcut forms work too:
      rhaas switch register sw0 ovs BRIDGE
      rhaas switch register sw0 mock HOST USER PASSWORD
      rhaas switch register sw0 nexus HOST USER PASSWORD DUMMY_VLAN
      rhaas switch register sw0 TYPE_URL '{"field": "value"}'
    """
    wire_type, settings = positional_fields(type_, args)
    if bridge is not None:
        settings["bridge"] = bridge
    if db is not None:
        settings["db"] = db
    settings.update(parse_assignment(item, "--field") for item in field_args)
    if "type" in settings:
        raise click.UsageError("'type' is not a field; it is the TYPE argument")
    client.switch.register(switch, wire_type, **settings)
