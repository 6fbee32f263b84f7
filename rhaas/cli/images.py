"""``rhaas image ...``: OS images for provisioning (rhaas extension)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client


@click.group()
def image() -> None:
    """OS images: a kernel, an initrd, an optional disk image and a command line."""


@contextmanager
def _local(source: str) -> Iterator[Path]:
    """A local file for ``source``: the path itself, or an http(s) URL downloaded to a temporary file."""
    if not source.startswith(("http://", "https://")):
        path = Path(source)
        if not path.is_file():
            raise click.BadParameter(f"{source}: no such file", param_hint="image file")
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="rhaas-image-") as tmp:
        try:
            with httpx.stream("GET", source, follow_redirects=True, timeout=30) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    tmp.write(chunk)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot download {source}: {exc}") from exc
        tmp.flush()
        yield Path(tmp.name)


def _blobs(client: Client, sources: dict[str, str | None]) -> dict[str, str | None]:
    """The sha256 of each source in the server's store: ``sha256:<hex>`` as given, else uploaded.

    Every file is found and every URL downloaded before anything is uploaded: a source that cannot be had
    leaves nothing behind in the store."""
    with ExitStack() as stack:
        files = {
            role: stack.enter_context(_local(source))
            for role, source in sources.items()
            if source is not None and not source.startswith("sha256:")
        }
        digests = dict(sources)
        for role, path in files.items():
            click.echo(f"uploading {role} {sources[role]} ({path.stat().st_size} bytes)", err=True)
            digests[role] = str(client.image.upload(path)["sha256"])
        return digests


@image.command("register")
@click.argument("name")
@click.option(
    "--kernel", required=True, help="Kernel: a file, an http(s) URL, or sha256:<hex> already stored."
)
@click.option("--initrd", required=True, help="Initrd: a file, a URL, or sha256:<hex>.")
@click.option(
    "--disk", default=None, help="Disk image written to the node's disk: a file, a URL, or sha256:<hex>."
)
@click.option("--cmdline", default="", help="Kernel command line of the image.")
@click.option(
    "--project", default=None, help="Owning project (private image); omit for a public image (admin)."
)
@pass_client
def register(
    client: Client, name: str, kernel: str, initrd: str, disk: str | None, cmdline: str, project: str | None
) -> None:
    """Upload an image's files and register it as NAME."""
    digests = _blobs(client, {"kernel": kernel, "initrd": initrd, "disk": disk})
    client.image.register(
        name,
        project=project,
        kernel=digests["kernel"] or "",
        initrd=digests["initrd"] or "",
        disk=digests["disk"],
        cmdline=cmdline,
    )
    click.echo(f"image {name} is registered")


@image.command("list")
@json_option
@pass_client
def list_(client: Client, as_json: bool) -> None:
    """Images you may use: public ones and your projects' own."""
    emit(client.image.list(), as_json, lambda names: table(["image"], [[n] for n in names]))


def _render(data: dict[str, Any]) -> str:
    def blob(b: dict[str, Any] | None) -> str:
        return "-" if b is None else f"sha256:{b['sha256']} ({b['size']} bytes)"

    rows = [
        ("name", data["name"]),
        ("project", data["project"] or "(public)"),
        ("kernel", blob(data["kernel"])),
        ("initrd", blob(data["initrd"])),
        ("disk", blob(data["disk"])),
        ("cmdline", data["cmdline"]),
    ]
    return fields(rows)


@image.command("show")
@click.argument("name")
@json_option
@pass_client
def show(client: Client, name: str, as_json: bool) -> None:
    """Show an image's files and command line."""
    emit(client.image.show(name), as_json, _render)


@image.command("delete")
@click.argument("name")
@pass_client
def delete(client: Client, name: str) -> None:
    """Delete an image (its files stay in the store until an admin deletes unused blobs)."""
    client.image.delete(name)
