"""``rhaas pool ...``: the free pool of a recursive instance (admin)."""

from __future__ import annotations

from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client


@click.group()
def pool() -> None:
    """The free pool of a recursive instance: nodes it holds upstream (admin)."""


def _render_pool(data: dict[str, Any]) -> str:
    up = data.get("upstream")
    rows: list[tuple[str, Any]] = [
        ("upstream", f"{up['url']} (project {up['project']})" if up else "none (base instance)"),
        ("nodes", data["nodes"]),
        ("free", data["free"]),
    ]
    rows += [(f"policy.{k}", v) for k, v in data.get("policy", {}).items()]
    return fields(rows)


@pool.command("show")
@json_option
@pass_client
def show(client: Client, as_json: bool) -> None:
    """Show the upstream, the node counts and the pool policy."""
    emit(client.pool.show(), as_json, _render_pool)


@pool.command()
@click.argument("count", type=click.IntRange(min=1))
@json_option
@pass_client
def grow(client: Client, count: int, as_json: bool) -> None:
    """Claim up to COUNT nodes from the upstream."""
    emit(client.pool.grow(count), as_json, lambda names: table(["claimed"], [[n] for n in names]))


@pool.command()
@click.argument("count", type=click.IntRange(min=1))
@json_option
@pass_client
def shrink(client: Client, count: int, as_json: bool) -> None:
    """Give up to COUNT idle nodes back to the upstream."""
    emit(client.pool.shrink(count), as_json, lambda names: table(["released"], [[n] for n in names]))


@pool.command()
@click.option("--fix", is_flag=True, help="Repair the drift found.")
@json_option
@pass_client
def reconcile(client: Client, fix: bool, as_json: bool) -> None:
    """Compare this instance with its upstream and report (with --fix, repair) drift."""
    emit(client.pool.reconcile(fix), as_json, lambda d: fields(list(d.items())))
