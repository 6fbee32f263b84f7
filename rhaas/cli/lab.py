"""``rhaas lab ...``: virtual bare metal on this machine (root): a switch, QEMU nodes with IPMI BMCs,
headnodes, and a base rhaas instance that manages them. See docs/lab.md and `rhaas.lab.site`.

Unlike the other groups these commands do not talk to ``RHAAS_ENDPOINT``: they start the lab, and
the lab's base instance is registered through the client library inside `rhaas.lab.site`. The lab
itself loads only when a command runs: ``rhaas --help`` and the other groups never load it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rhaas.cli.table import table

if TYPE_CHECKING:
    from rhaas.lab.site import Lab

#: `rhaas.lab.site.DEFAULT_HEADNODE_IP`, for the option's help without loading the lab (a test keeps the
#: two equal).
DEFAULT_HEADNODE_IP = "10.0.0.1/24"
#: `rhaas.lab.qemu.PROFILES`, for the option's choices without loading the lab (a test keeps them equal).
NODE_PROFILES = ("virtio", "uefi-nvme", "bios-megasas")
#: What a lab node's BMC may speak (`rhaas.lab.site.Lab.up`).
BMC_PROTOCOLS = ("ipmi", "redfish")
#: `rhaas.lab.qemu.CPU_MODELS`, likewise.
CPU_MODELS = ("qemu64", "max")

workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The lab's directory (default: $RHAAS_LAB_DIR or ~/.cache/rhaas/lab).",
)


def _lab(workdir: Path | None) -> Lab:
    from rhaas.lab.site import Lab, default_workdir

    return Lab(workdir or default_workdir(), say=lambda line: click.echo(f"· {line}", err=True))


def _run(action: Callable[[], object]) -> None:
    """Turn a LabError into the CLI's one-line error."""
    from rhaas.lab.site import LabError

    try:
        action()
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def lab() -> None:
    """The lab: virtual bare metal on one machine (needs root)."""


@lab.command()
@click.option("--nodes", "count", type=click.IntRange(1, 50), default=2, show_default=True)
@click.option(
    "--memory", type=click.IntRange(256, 8192), default=1024, show_default=True, help="MB per node."
)
@click.option("--endpoint", help="Register the site in this rhaas instead of starting a base instance "
              "(credentials from RHAAS_USERNAME/RHAAS_PASSWORD).")  # fmt: skip
@click.option("--profile", "profiles", type=click.Choice(NODE_PROFILES), multiple=True,
              help="Node hardware; repeat for a mix, given to the nodes in turn (default: virtio). "
              "virtio: SeaBIOS, virtio NIC and disk; uefi-nvme: OVMF, e1000e, NVMe; "
              "bios-megasas: SeaBIOS, e1000, MegaRAID SAS.")  # fmt: skip
@click.option("--post", "post_seconds", type=click.FloatRange(0, 600), default=0.0, show_default=True,
              help="Seconds every firmware boot is held, as a server's power-on self test.")  # fmt: skip
@click.option(
    "--bmc",
    "bmcs",
    type=click.Choice(BMC_PROTOCOLS),
    multiple=True,
    help="What the nodes' BMCs speak; repeat for a mix, given to the nodes in turn (default: ipmi).",
)
@click.option("--cpu", type=click.Choice(CPU_MODELS), default="qemu64", show_default=True,
              help="The nodes' vCPU: qemu64 (QEMU's default) or max (AES-NI, AVX2: a server's).")  # fmt: skip
@workdir_option
def up(
    count: int,
    memory: int,
    endpoint: str | None,
    profiles: tuple[str, ...],
    post_seconds: float,
    bmcs: tuple[str, ...],
    cpu: str,
    workdir: Path | None,
) -> None:
    """Start the switch, COUNT powered-off nodes with their BMCs and a base instance; register them."""
    the_lab = _lab(workdir)
    _run(
        lambda: the_lab.up(
            count, memory, endpoint, profiles or ("virtio",), post_seconds, bmcs or ("ipmi",), cpu
        )
    )
    click.echo(the_lab.exports())


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@workdir_option
def status(as_json: bool, workdir: Path | None) -> None:
    """Per node: power, firmware boots, console log, BMC, switch port and MAC."""
    the_lab = _lab(workdir)
    result: dict[str, object] = {}
    _run(lambda: result.update(the_lab.status()))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    nodes = result["nodes"]
    assert isinstance(nodes, list)
    rows = [
        [n["node"], n["profile"], n["power"], n["firmware_boots"], n["bmc"], n["switch_port"], n["mac"],
         n["console"]]
        for n in nodes
    ]  # fmt: skip
    click.echo(f"endpoint: {result['endpoint']}   credentials: {result['credentials']}")
    click.echo(table(["node", "profile", "power", "boots", "bmc", "port", "mac", "console"], rows))
    heads = result["headnodes"]
    assert isinstance(heads, list)
    for head in heads:
        services = ", ".join(
            f"{k} {'running' if v['running'] else 'DEAD'} (pid {v['pid']})"
            for k, v in head["services"].items()
        )
        click.echo(f"headnode {head['headnode']}: {head['ip']} in {head['netns']}, port {head['switch_port']}"
                   f"{'; ' + services if services else ''}")  # fmt: skip


@lab.command()
@workdir_option
def down(workdir: Path | None) -> None:
    """Stop everything the lab started and remove its devices and files (also after a crash)."""
    _run(_lab(workdir).down)


@lab.command()
@click.argument("name")
@click.option("--ip", default=DEFAULT_HEADNODE_IP, show_default=True, help="Address in the namespace (CIDR).")
@click.option(
    "--boot", is_flag=True, help="Serve the network boot of the test OS (DHCP + HTTP) to the nodes."
)
@workdir_option
def headnode(name: str, ip: str, boot: bool, workdir: Path | None) -> None:
    """A network namespace on a switch port, registered as node NAME, like a head node."""
    the_lab = _lab(workdir)
    _run(lambda: the_lab.headnode(name, ip, boot=boot))
    click.echo(f"headnode {name} is up; run commands in it with: rhaas lab exec {name} -- COMMAND")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--detach", is_flag=True, help="Run as a service of the headnode: 'lab down' stops it.")
@workdir_option
def exec_(name: str, argv: tuple[str, ...], detach: bool, workdir: Path | None) -> None:
    """Run a command in headnode NAME's network namespace."""
    the_lab = _lab(workdir)
    result: list[int] = []
    _run(lambda: result.append(the_lab.exec(name, list(argv), detach=detach)))
    if detach:
        click.echo(f"started pid {result[0]}")
        return
    if result[0] != 0:
        raise SystemExit(result[0])


#: `rhaas.lab.distro.FLAVOURS`, for the option's choices without loading the lab (a test keeps them equal).
DISTRO_FLAVOURS = ("bookworm", "trixie")


def _progress(line: str) -> None:
    click.echo(f"· {line}", err=True)


@lab.group()
def image() -> None:
    """Images for the lab's nodes, built from Debian packages."""


@image.command("build")
@click.argument("distribution", type=click.Choice(["debian"]))
@click.option("--flavour", type=click.Choice(DISTRO_FLAVOURS), default=DISTRO_FLAVOURS[0], show_default=True,
              help="Debian 12 or Debian 13.")  # fmt: skip
@click.option("--kernel", type=click.Choice(["cloud", "generic"]), default="cloud", show_default=True,
              help="Debian's cloud kernel (virtio, NVMe) or its generic one (every NIC and disk driver: "
              "for nodes that look like servers).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the raw disk image (sparse).")  # fmt: skip
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache directory (default: $RHAAS_CACHE or ~/.cache/rhaas).")  # fmt: skip
@click.option("--refresh", is_flag=True, help="Fetch the release's package lists first (a new kernel "
              "or security update then makes a new image).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def image_build(
    distribution: str, flavour: str, kernel: str, out: Path, cache: Path | None, refresh: bool, as_json: bool
) -> None:
    """Build (or take from the cache) a whole-disk DISTRIBUTION image and copy it to --out.

    GPT, GRUB for BIOS and for UEFI, ext4 root, systemd, cloud-init (NoCloud), openssh-server; the
    default user is 'debian'. Needs root, mmdebstrap, grub-pc-bin and grub-efi-amd64-bin. Progress goes
    to stderr.
    """
    import subprocess

    from rhaas.imaging import ImageBuildError
    from rhaas.lab.distro import build_debian

    try:
        built = build_debian(flavour, cache, kernel=kernel, refresh=refresh, say=_progress)
    except (ImageBuildError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    # A sparse copy (a reflink where the file system has them): the image is mostly holes.
    done = subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(built.disk), str(out)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise click.ClickException(f"cannot write {out}: {done.stderr.strip()}")
    result = {**built.as_dict(), "out": str(out)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{out}: {built.boot_entry['title']}, kernel {built.kernel_release}, "
               f"{built.data_bytes / 2**20:.0f} MiB of data in {built.virtual_bytes / 2**30:.0f} GiB"
               f"{' (cached)' if built.cached else f', built in {built.build_seconds:.0f} s'}")  # fmt: skip
    click.echo(f"root UUID {built.root_uuid}; manifest {built.manifest}")
    click.echo(f"kernel {built.kernel}, initrd {built.initrd}, command line: {built.boot_entry['cmdline']}")
