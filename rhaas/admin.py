"""``rhaas-admin``: run and administer a server (database, users, the networking worker)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rhaas.config import ProvisioningSettings, Settings, load_settings, split_listen

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from starlette.types import ASGIApp

    from rhaas.client import Client
from rhaas.db.session import make_engine, make_sessionmaker, upgrade


def _settings(config: str | None, database: str | None, **overrides: object) -> Settings:
    return load_settings(config, database__url=database, **overrides)


config_option = click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file."
)
database_option = click.option(
    "--database", envvar="RHAAS_DATABASE", help="Database URL (default: sqlite:///rhaas.sqlite3)."
)


@click.group()
def main() -> None:
    """Administer an rhaas server."""
    logging.basicConfig(
        level=getattr(logging, os.environ.get("RHAAS_LOG_LEVEL", "INFO")),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@config_option
@database_option
def db_upgrade(config: str | None, database: str | None) -> None:
    """Create the schema, or migrate it to the newest version."""
    settings = _settings(config, database)
    upgrade(settings.database.url)
    click.echo("database is up to date")


@main.command("create-admin-user")
@click.argument("user")
@click.argument("password")
@config_option
@database_option
def create_admin_user(user: str, password: str, config: str | None, database: str | None) -> None:
    """Create (or reset) an administrator account."""
    from rhaas.core.users import bootstrap_admin

    settings = _settings(config, database)
    upgrade(settings.database.url)
    sessions = make_sessionmaker(make_engine(settings.database.url))
    with sessions() as session:
        bootstrap_admin(session, user, password)
        session.commit()
    click.echo(f"admin user {user} is ready")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option(
    "--auth", type=click.Choice(["database", "null"]), default=None, help="null: everyone is admin."
)
@click.option("--vlans", default=None, help='VLAN pool, e.g. "100-999".')
@click.option("--no-worker", is_flag=True, help="Do not apply networking actions in this process.")
@click.option(
    "--upstream", envvar="RHAAS_UPSTREAM", help="Upstream HIL/rhaas URL: run as a recursive instance."
)
@click.option("--upstream-project", envvar="RHAAS_UPSTREAM_PROJECT", help="This instance's project upstream.")
@click.option("--upstream-user", envvar="RHAAS_UPSTREAM_USER", help="User name at the upstream.")
@click.option(
    "--upstream-password",
    envvar="RHAAS_UPSTREAM_PASSWORD",
    help="Password at the upstream. Prefer the RHAAS_UPSTREAM_PASSWORD variable: flags are visible in ps.",
)
@click.option("--max-nodes", type=int, default=None, help="Pool policy: most nodes to hold upstream.")
@click.option(
    "--node-filter", default=None, help="Pool policy: claim only upstream nodes matching this regex."
)
@click.option(
    "--image-store", default=None, help="Directory of the image store (default: rhaas-images, here)."
)
@click.option(
    "--agent-listen",
    default=None,
    callback=lambda _ctx, _param, value: _check_listen(value),
    help="HOST:PORT of the FPBL agents' TLS listener ([provisioning] agent_listen): an address on the "
    "provisioning network only.",
)
@click.option(
    "--agent-tls-key",
    default=None,
    help="PEM file of the agents' listener's key and certificate, made if missing ([provisioning] "
    "agent_tls_key, default rhaas-agent-tls.pem here).",
)
@click.option(
    "--boot-listen",
    default=None,
    callback=lambda _ctx, _param, value: _check_listen(value, "boot_listen"),
    help="HOST:PORT of the network boot's plain-HTTP listener ([provisioning] boot_listen).",
)
@config_option
@database_option
def serve(
    host: str,
    port: int,
    auth: str | None,
    vlans: str | None,
    no_worker: bool,
    upstream: str | None,
    upstream_project: str | None,
    upstream_user: str | None,
    upstream_password: str | None,
    max_nodes: int | None,
    node_filter: str | None,
    image_store: str | None,
    agent_listen: str | None,
    agent_tls_key: str | None,
    boot_listen: str | None,
    config: str | None,
    database: str | None,
) -> None:
    """Run the API server (and, unless --no-worker, the networking worker in-process).

    With --upstream it is a recursive instance: its nodes are those its project holds upstream. With fast
    provisioning on, the FPBL agents' routes are served on a second listener (--agent-listen, TLS with the
    key agents pin) and the network boot's on a third (--boot-listen, plain HTTP), never on the API's.
    """
    from rhaas.api.app import create_apps
    from rhaas.api.state import AppState

    overrides: dict[str, object] = {
        "auth__mode": auth,
        "networks__vlans": vlans,
        "upstream__url": upstream,
        "upstream__project": upstream_project,
        "upstream__user": upstream_user,
        "upstream__password": upstream_password,
        "pool__max_nodes": max_nodes,
        "pool__node_filter": node_filter,
        "images__store": image_store,
        "provisioning__agent_listen": agent_listen,
        "provisioning__boot_listen": boot_listen,
        "provisioning__agent_tls_key": agent_tls_key,
    }
    if no_worker:
        overrides["worker__in_process"] = False
    settings = _settings(config, database, **overrides)
    if settings.upstream.url and not settings.upstream.project:
        raise click.UsageError("--upstream needs --upstream-project (this instance's project upstream).")
    prov = settings.provisioning
    listeners: list[tuple[str, str | None]] = []  # (HOST:PORT, TLS key file or None) beside the API's
    if prov.enabled:
        listeners = _provisioning_listeners(prov)
    upgrade(settings.database.url)
    if settings.auth.mode == "null":
        click.echo("WARNING: --auth null: every caller is an administrator (development only).", err=True)
    app, agent_app = create_apps(settings)
    boot_app = AppState.of(app).boot_app
    assert boot_app is not None
    served: list[tuple[ASGIApp, socket.socket, str | None]] = [(app, _listen(host, port), None)]
    for other, (where, key) in zip((agent_app, boot_app), listeners, strict=False):
        served.append((other, _listen(*split_listen(where)), key))
    _serve(served)


def _provisioning_listeners(prov: ProvisioningSettings) -> list[tuple[str, str | None]]:
    """The agents' TLS listener and, with a boot URL, the network boot's: (HOST:PORT, key file or None).
    Makes the agents' key on the first start. Raises UsageError for settings that cannot work."""
    from rhaas.provisioning.agenttls import AgentKeyError, ensure_key

    if prov.agent_listen is None:
        # Secure by default: the agents' routes hand out agent secrets, so they are never served on the
        # customer API's listener, and there is no default address to put them on.
        raise click.UsageError(
            "[provisioning] enabled needs [provisioning] agent_listen (or --agent-listen): HOST:PORT of the "
            "listener for FPBL agents, on the provisioning network only."
        )
    if prov.agent_url is not None and not prov.agent_url.startswith("https://"):
        raise click.UsageError(
            f"[provisioning] agent_url = {prov.agent_url!r}: agents reach the agents' listener over TLS,"
            " so it is an https:// URL."
        )
    if prov.boot_url is not None and prov.boot_listen is None:
        raise click.UsageError(
            "[provisioning] boot_url needs [provisioning] boot_listen (or --boot-listen): HOST:PORT of the"
            " network boot's plain-HTTP listener, where boot_url (or the boot service's relay) leads."
        )
    try:
        pin = ensure_key(prov.agent_tls_key)
    except AgentKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"agents' listener on {prov.agent_listen} (TLS), certificate SHA-256 {pin}", err=True)
    listeners: list[tuple[str, str | None]] = [(prov.agent_listen, prov.agent_tls_key)]
    if prov.boot_listen is not None:
        listeners.append((prov.boot_listen, None))
    return listeners


def _check_listen(value: str | None, setting: str = "agent_listen") -> str | None:
    try:
        return None if value is None else (split_listen(value, setting) and value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``. Both listeners are bound before either serves, so that
    the agents' one exists once the API answers, and an address in use stops the start of both."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(2048)
    return sock


# TLS 1.2 suites the agents' listener offers (TLS 1.3's are all sound): forward secrecy and AEAD only, the
# ChaCha20 one for agents on CPUs without AES instructions (rhaas.agent.wire). uvicorn's default ("TLSv1")
# would offer CBC with SHA-1.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _serve(listeners: Sequence[tuple[ASGIApp, socket.socket, str | None]]) -> None:
    """Serve each (app, socket, TLS key file or None) with uvicorn on one event loop until SIGINT or
    SIGTERM. Only the first app's lifespan runs (the background threads); a listener that stops stops
    them all."""
    import asyncio

    import uvicorn

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # _serve handles signals, for every server at once

    servers = [
        Quiet(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="auto" if i == 0 else "off",
                ssl_certfile=key,
                ssl_keyfile=key,
                ssl_ciphers=SERVER_CIPHERS,
            )  # fmt: skip
        )
        for i, (app, _, key) in enumerate(listeners)
    ]
    received: list[int] = []

    def stop(sig: int, _frame: object) -> None:
        received.append(sig)
        for server in servers:
            server.force_exit = server.should_exit and sig == signal.SIGINT
            server.should_exit = True

    async def run() -> None:
        tasks = [
            asyncio.create_task(s.serve(sockets=[sock]))
            for s, (_, sock, _) in zip(servers, listeners, strict=True)
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT.value, signal.SIGTERM.value)}
    try:
        asyncio.run(run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in reversed(received):  # as uvicorn.run does: end as the signal would have ended us
        signal.raise_signal(sig)


def _client() -> Client:
    from rhaas.client import Client

    return Client.from_env()


@main.group()
def pool() -> None:
    """The free pool of a recursive instance, through its API (RHAAS_ENDPOINT, RHAAS_USERNAME, …)."""


@pool.command("grow")
@click.argument("count", type=click.IntRange(min=1))
def pool_grow(count: int) -> None:
    """Claim up to COUNT nodes from the upstream."""
    for name in _client().pool.grow(count):
        click.echo(name)


@pool.command("shrink")
@click.argument("count", type=click.IntRange(min=1))
def pool_shrink(count: int) -> None:
    """Give up to COUNT idle nodes back to the upstream."""
    for name in _client().pool.shrink(count):
        click.echo(name)


@main.command()
@click.option("--fix", is_flag=True, help="Repair the drift found.")
def reconcile(fix: bool) -> None:
    """Compare a recursive instance with its upstream; report (and with --fix, repair) drift."""
    import json

    drift = _client().pool.reconcile(fix)
    click.echo(json.dumps(drift, indent=2))
    if not fix and any(drift[k] for k in drift if k != "fixed"):
        sys.exit(3)


@main.command("serve-networks")
@config_option
@database_option
def serve_networks(config: str | None, database: str | None) -> None:
    """Run a networking worker on its own (several may share one PostgreSQL database); on a recursive
    instance, also the background reconciler ([upstream] reconcile_interval)."""
    from rhaas.backends import make_backend
    from rhaas.worker.networking import NetworkWorker
    from rhaas.worker.reconcile import Reconciler

    settings = _settings(config, database)
    upgrade(settings.database.url)
    sessions = make_sessionmaker(make_engine(settings.database.url))
    backend = make_backend(settings)
    worker = NetworkWorker(sessions, backend, settings.worker)
    reconciler = Reconciler.of(sessions, backend, settings.upstream.reconcile_interval)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    if reconciler is not None:
        reconciler.start()
    click.echo(f"networking worker {worker.worker_id} running", err=True)
    stop.wait()
    if reconciler is not None:
        reconciler.stop()
    worker.stop()
    sys.exit(0)


@main.command("boot-service")
@click.option("--address", required=True, help="Our address on the provisioning network (10.0.0.1/24).")
@click.option("--port", default=8080, show_default=True, type=int, help="The boot URL's (and relay's) port.")
@click.option("--api", default=None, help="Relay PORT to the instance's boot listener, [provisioning] "
              "boot_listen (http://127.0.0.1:8081); omit if it listens on ADDRESS:PORT itself.")  # fmt: skip
@click.option("--agent-port", default=8443, show_default=True, type=int, help="The agent URL's port, relayed "
              "to --agent-api.")  # fmt: skip
@click.option("--agent-api", default=None, help="Relay AGENT-PORT to the instance's agents' TLS listener, "
              "[provisioning] agent_listen (https://127.0.0.1:5001).")  # fmt: skip
@click.option("--netns", default=None, help="Serve inside this network namespace (the relay's far end "
              "stays here).")  # fmt: skip
@click.option("--interface", default="eth0", show_default=True, help="The provisioning network's interface.")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="dnsmasq's files.")
@click.option("--ipxe-dir", default="/usr/lib/ipxe", show_default=True, type=click.Path(file_okay=False),
              help="iPXE for plain PXE ROMs (undionly.kpxe, snponly.efi), served over TFTP.")  # fmt: skip
def boot_service(
    address: str, port: int, api: str | None, agent_port: int, agent_api: str | None, netns: str | None,
    interface: str, directory: str, ipxe_dir: str,
) -> None:  # fmt: skip
    """Run the DHCP boot service of the provisioning network (dnsmasq, started and stopped here), with
    relays to the instance's listeners. Set [provisioning] boot_url to http://ADDRESS:PORT and, with
    --agent-api, agent_url to https://ADDRESS:AGENT-PORT."""
    from rhaas.procs import find_binary
    from rhaas.provisioning.bootservice import BootServiceError, serve

    dnsmasq = find_binary("dnsmasq")
    if dnsmasq is None:
        raise click.ClickException("dnsmasq is not installed (Debian: dnsmasq-base)")
    try:
        code = serve(Path(directory), address, port, api, netns, interface, dnsmasq,
                     ready=lambda line: click.echo(line, err=True), ipxe_dir=Path(ipxe_dir),
                     agent_relay=(agent_port, agent_api) if agent_api else None)  # fmt: skip
    except (BootServiceError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.group()
def fpbl() -> None:
    """The fast provisioning boot loader (FPBL) that enrolled nodes boot."""


@fpbl.command("build")
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    default=None,
    help="Cache directory (default: ~/.cache/rhaas).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Also copy vmlinuz, initrd and fpbl.json there: the directory [provisioning] fpbl_dir names.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the paths, sizes and package versions as JSON.")
@click.option(
    "--flavour",
    type=click.Choice(["cloud", "generic"]),
    default="cloud",
    show_default=True,
    help="cloud: Debian's cloud kernel, virtio only; generic: Debian's generic kernel with the NIC and "
    "storage drivers of servers, loaded by their devices' modaliases.",
)
@click.option(
    "--extra-module",
    "extra_modules",
    multiple=True,
    metavar="NAME",
    help="Generic flavour: also carry this kernel module (or every module under this directory of the "
    "kernel's modules, ending in /). Repeatable.",
)
@click.option(
    "--firmware-dir",
    type=click.Path(file_okay=False),  # a missing one is the builder's clear error
    default=None,
    help="Generic flavour: carry every file under this directory as /lib/firmware/... (non-free firmware).",
)
def fpbl_build(
    cache: str | None,
    out: str | None,
    as_json: bool,
    flavour: str,
    extra_modules: tuple[str, ...],
    firmware_dir: str | None,
) -> None:
    """Build the FPBL from Debian packages (or find it in the cache) and print where its files are."""
    from rhaas.provisioning.fpbl import main as build_main

    argv = ["build", *(["--cache", cache] if cache else []), *(["--out", out] if out else [])]
    argv += ["--flavour", flavour, *(f"--extra-module={m}" for m in extra_modules)]
    argv += ["--firmware-dir", firmware_dir] if firmware_dir else []
    sys.exit(build_main([*argv, *(["--json"] if as_json else [])]))


if __name__ == "__main__":
    main()
