"""``rhaas user ...``: database-auth users and their projects (admin)."""

from __future__ import annotations

from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import table
from rhaas.client import Client

ROLE = click.Choice(["admin", "regular"])


@click.group()
def user() -> None:
    """Users and their projects (admin)."""


@user.command("list")
@json_option
@pass_client
def list_users(client: Client, as_json: bool) -> None:
    """List users, whether they are admins, and their projects."""

    def render(data: dict[str, Any]) -> str:
        rows = [[name, info.get("is_admin"), info.get("projects")] for name, info in sorted(data.items())]
        return table(["user", "admin", "projects"], rows)

    emit(client.user.list(), as_json, render)


@user.command()
@click.argument("user")
@click.argument("password")
@click.argument("role", type=ROLE, default="regular", required=False)
@pass_client
def create(client: Client, user: str, password: str, role: str) -> None:
    """Create USER with PASSWORD, an admin or a regular user (default)."""
    client.user.create(user, password, is_admin=role == "admin")


@user.command()
@click.argument("user")
@pass_client
def delete(client: Client, user: str) -> None:
    """Delete USER."""
    client.user.delete(user)


@user.command("set-admin")
@click.argument("user")
@click.argument("role", type=ROLE)
@pass_client
def set_admin(client: Client, user: str, role: str) -> None:
    """Make USER an admin or a regular user."""
    client.user.set_admin(user, role == "admin")


@user.group()
def project() -> None:
    """The projects of a user."""


@project.command("add")
@click.argument("user")
@click.argument("project")
@pass_client
def project_add(client: Client, user: str, project: str) -> None:
    """Give USER access to PROJECT."""
    client.user.add_project(user, project)


@project.command("remove")
@click.argument("user")
@click.argument("project")
@pass_client
def project_remove(client: Client, user: str, project: str) -> None:
    """Take PROJECT away from USER."""
    client.user.remove_project(user, project)
