"""``rhaas image ...``: OS images for provisioning (rhaas extension)."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client
from rhaas.client.images import DiskProgress


@click.group()
def image() -> None:
    """OS images: a kernel, an initrd, an optional disk image and a command line; or a whole disk."""


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


class _Progress:
    """Progress of a whole-disk upload on stderr: rewritten in place on a terminal, a line every few
    seconds otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.every = 0.25 if self.tty else 5.0
        self.last = 0.0
        self.latest: DiskProgress | None = None

    def __call__(self, p: DiskProgress) -> None:
        self.latest = p
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        self.show(p)

    def show(self, p: DiskProgress, end: bool = False) -> None:
        mib = 2**20
        rate = p.logical / max(p.seconds, 1e-6) / 1e6
        share = f" ({100 * p.file_read // p.file_size}%)" if p.file_size else ""
        text = (
            f"{self.label}: read {p.file_read / mib:.0f}/{p.file_size / mib:.0f} MiB{share}, "
            f"{p.logical / mib:.0f} MiB of content, uploaded {p.uploaded_bytes / mib:.0f} MiB "
            f"in {p.uploaded_chunks} chunks, {rate:.0f} MB/s"
        )
        if self.tty:
            click.echo(f"\r{text}\x1b[K", err=True, nl=end)
        else:
            click.echo(text, err=True)


def _register_disk(
    client: Client,
    name: str,
    disk: str,
    digests: dict[str, str | None],
    cmdline: str,
    project: str | None,
    as_json: bool,
) -> None:
    """Register a whole-disk image: its chunks the server lacks go up, then its manifest."""
    if disk.startswith("sha256:"):
        raise click.BadParameter(
            "a whole-disk image is read from its file (or URL), not named by a blob digest",
            param_hint="--disk",
        )
    with _local(disk) as path:
        progress = _Progress(disk)
        result = client.image.register_disk(
            name,
            path,
            project=project,
            kernel=digests["kernel"],
            initrd=digests["initrd"],
            cmdline=cmdline,
            progress=progress,
        )
    if progress.latest is not None:
        progress.show(progress.latest, end=True)  # where it ended
    mib = 2**20
    rate = result["virtual_size"] / max(result["seconds"], 1e-6) / 1e6
    emit(
        {**result, "mb_per_s": round(rate, 1)},
        as_json,
        lambda r: (
            f"image {name} is registered: {r['format']}, {r['virtual_size'] / mib:.0f} MiB, "
            f"{r['chunks']} chunks of data and {r['holes']} holes, {r['uploaded_chunks']} chunks "
            f"({r['uploaded_bytes'] / mib:.0f} MiB) uploaded in {r['seconds']:.1f} s ({r['mb_per_s']} MB/s)"
        ),
    )


@image.command("register")
@click.argument("name")
@click.option("--kernel", default=None, help="Kernel: a file, an http(s) URL, or sha256:<hex> in the store.")
@click.option("--initrd", default=None, help="Initrd: a file, a URL, or sha256:<hex>.")
@click.option(
    "--disk",
    default=None,
    help="Disk image: a file or a URL. Without --kernel and --initrd, a whole-disk image (raw, qcow2, or "
    "raw compressed with gzip, xz or zstd); with them, a raw blob written to the node's disk (or "
    "sha256:<hex>).",
)
@click.option(
    "--whole-disk",
    is_flag=True,
    help="Store --disk as a whole-disk image even with --kernel and --initrd (kept for later).",
)
@click.option("--cmdline", default="", help="Kernel command line of the image.")
@click.option(
    "--project", default=None, help="Owning project (private image); omit for a public image (admin)."
)
@json_option
@pass_client
def register(
    client: Client,
    name: str,
    kernel: str | None,
    initrd: str | None,
    disk: str | None,
    whole_disk: bool,
    cmdline: str,
    project: str | None,
    as_json: bool,
) -> None:
    """Upload an image's files and register it as NAME.

    A kernel and an initrd (and optionally a raw disk blob), or a whole-disk image: --disk alone, its
    format detected. A whole-disk image is read once; its holes are neither stored nor sent, and only the
    chunks the server lacks are uploaded, with progress on stderr."""
    if (kernel is None) != (initrd is None):
        raise click.UsageError("give both --kernel and --initrd, or neither")
    if kernel is None and disk is None:
        raise click.UsageError("give --kernel and --initrd, or a whole-disk image with --disk")
    if disk is not None and (whole_disk or kernel is None):
        digests = _blobs(client, {"kernel": kernel, "initrd": initrd})
        _register_disk(client, name, disk, digests, cmdline, project, as_json)
        return
    digests = _blobs(client, {"kernel": kernel, "initrd": initrd, "disk": disk})
    client.image.register(
        name,
        project=project,
        kernel=digests["kernel"] or "",
        initrd=digests["initrd"] or "",
        disk=digests["disk"],
        cmdline=cmdline,
    )
    if as_json:
        emit({"name": name}, True, str)
    else:
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

    disk = data["disk"]
    rows = [
        ("name", data["name"]),
        ("project", data["project"] or "(public)"),
        ("kernel", blob(data["kernel"])),
        ("initrd", blob(data["initrd"])),
    ]
    if disk is not None and "logical_sha256" in disk:  # a whole-disk image
        rows += [
            ("disk", f"whole-disk image, uploaded as {disk['format']}"),
            ("virtual size", f"{disk['virtual_size']} bytes"),
            ("content", f"sha256:{disk['logical_sha256']}"),
            ("stored", f"{disk['stored_bytes']} bytes in {disk['chunks']} chunks of {disk['chunk_size']}"),
        ]
    else:
        rows.append(("disk", blob(disk)))
    rows.append(("cmdline", data["cmdline"]))
    return fields(rows)


@image.command("show")
@click.argument("name")
@json_option
@pass_client
def show(client: Client, name: str, as_json: bool) -> None:
    """Show an image's files and command line."""
    emit(client.image.show(name), as_json, _render)


@image.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@json_option
@pass_client
def export(client: Client, name: str, file: str, as_json: bool) -> None:
    """Write whole-disk image NAME to FILE as a sparse raw file, checked against its content digest."""
    result = client.image.export_disk(name, file)
    emit(result, as_json, lambda r: f"{file}: {r['virtual_size']} bytes, sha256:{r['logical_sha256']}")


@image.command("delete")
@click.argument("name")
@pass_client
def delete(client: Client, name: str) -> None:
    """Delete an image. A whole-disk image's chunks no other image holds go with it; blobs stay in the
    store until an admin deletes unused ones."""
    client.image.delete(name)


@image.command("prune-chunks")
@click.option(
    "--min-age",
    type=click.IntRange(min=0),
    default=86400,
    show_default=True,
    help="Keep chunks uploaded less than this many seconds ago (an image may be on its way).",
)
@json_option
@pass_client
def prune_chunks(client: Client, min_age: int, as_json: bool) -> None:
    """Delete uploaded chunks that no image holds (admins): uploads never registered as an image."""
    result = client.image.prune_chunks(min_age)
    emit(result, as_json, lambda r: f"{r['chunks']} chunks ({r['bytes']} bytes) deleted")
