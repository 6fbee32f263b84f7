"""What every command module shares: the lazily made client, ``--json`` output, waiting for actions."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rhaas.cli.table import fields
from rhaas.client import Client, action_failed, describe_action

R = TypeVar("R")

#: Default seconds to wait for a networking action (``--timeout``, RHAAS_TIMEOUT, HIL_TIMEOUT).
DEFAULT_WAIT = 60.0


class CliState:
    """The ``ctx.obj`` of every command: makes the client on first use, from the environment by default.

    Tests (and embedders) pass ``obj=CliState(factory=...)`` to run the commands against any client."""

    def __init__(self, factory: Callable[[], Client] | None = None) -> None:
        self.factory = factory or Client.from_env
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def pass_client(f: Callable[..., R]) -> Callable[..., R]:
    """Give the command the client as its first argument (put it below the click decorators)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        state = click.get_current_context().ensure_object(CliState)
        return f(state.client, *args, **kwargs)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
wait_option = click.option("--wait", is_flag=True, help="Wait until the action is DONE and show it.")
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT,
    show_default=True,
    envvar=["RHAAS_TIMEOUT", "HIL_TIMEOUT"],
    help="Seconds to wait for networking actions (env RHAAS_TIMEOUT, HIL_TIMEOUT).",
)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON or through ``render``."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render(data))


def render_action(action: dict[str, Any]) -> str:
    keys = ("status", "type", "node", "nic", "new_network", "channel", "error")
    return fields([("action", describe_action(action))] + [(k, action[k]) for k in keys if k in action])


def report_action(client: Client, answer: dict[str, Any], wait: bool, timeout: float, as_json: bool) -> None:
    """After a call that queued a networking action: print its id, or wait for it and print its end.

    An action that ends in ERROR is printed and then raised (exit status 1)."""
    if not wait:
        emit(answer, as_json, lambda a: f"status_id: {a['status_id']}")
        return
    status_id = answer["status_id"]
    action = client.wait_networking_action(status_id, timeout, raise_on_error=False)
    emit(action, as_json, render_action)
    if action.get("status") == "ERROR":
        raise action_failed(status_id, action)


def parse_assignment(text: str, option: str) -> tuple[str, Any]:
    """``key=value`` (a string) or ``key:=json`` (any JSON value) → (key, value); UsageError if neither."""
    key, sep, value = text.partition("=")
    if not sep or not key or key == ":":
        raise click.BadParameter(f"expected KEY=VALUE or KEY:=JSON, got {text!r}", param_hint=option)
    if not key.endswith(":"):
        return key, value
    try:
        return key[:-1], json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{key[:-1]}: {value!r} is not JSON ({exc})", param_hint=option) from exc
