"""``rhaas demo``: the story of rhaas, played live with real servers, each claim checked.

As root, on the lab (`rhaas.demo_lab`): real Open vSwitch, IPMI and QEMU nodes; a base instance, a
reseller's recursive instance with fast provisioning, customers A and B, a third level. With ``--mock``
(or without root), the same story without fast provisioning on rhaas's mock switch and mock BMCs
(shipped drivers with the same interfaces as the OVS and IPMI ones), so it runs anywhere in seconds:
a base instance manages a small site; a reseller runs a recursive instance on a project of the base and
resells its nodes; customer A gets two nodes on a private network, returns them; customer B gets them;
a third-level instance on top of the reseller gets a node too. Every step goes through the HIL API with
rhaas's client, and each claim is checked against the base's switch.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rhaas.cli.lab import BMC_PROTOCOLS, NODE_PROFILES
from rhaas.client import Client
from rhaas.procs import cleanup_on_signals

if TYPE_CHECKING:
    from rhaas.lab.servers import Server

T = TypeVar("T")
#: The lab's nodes by default look like cloud VMs (virtio) behind IPMI BMCs; ``--profile uefi-nvme
#: --profile bios-megasas --bmc redfish --bmc ipmi`` makes them look like a data centre's servers.
LAB_PROFILES = ("virtio",)
LAB_BMCS = ("ipmi",)


@dataclass
class Story:
    """Prints the story as it goes, times each step, and keeps the checked claims."""

    timings: list[tuple[str, float]] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)
    #: Steps print as they go (progress lines), so each step's time gets a line of its own.
    live: bool = False

    def step(self, title: str, action: Callable[[], T]) -> T:
        click.echo(click.style("▶ ", fg="cyan") + title, nl=self.live)
        start = time.perf_counter()
        result = action()
        elapsed = time.perf_counter() - start
        self.timings.append((title, elapsed))
        took = f"{elapsed:.1f} s" if self.live else f"{elapsed * 1000:.0f} ms"
        click.echo(click.style(f"  ({took})", dim=True))
        return result

    def check(self, claim: str, evidence: str, ok: bool) -> None:
        mark = click.style("✔", fg="green") if ok else click.style("✘", fg="red")
        click.echo(f"  {mark} {claim}: {evidence}")
        self.checks.append((claim, evidence))
        if not ok:
            raise click.ClickException(f"demo check failed: {claim} ({evidence})")


class Instance:
    """A running rhaas server and an admin client for it."""

    def __init__(self, name: str, server: Server, admin_password: str) -> None:
        self.name, self.server = name, server
        self.admin = Client(server.url, "admin", admin_password)

    def user(self, name: str, project: str) -> tuple[Client, str]:
        password = secrets.token_urlsafe(12)
        self.admin.user.create(name, password)
        self.admin.user.add_project(name, project)
        return Client(self.server.url, name, password), password


@contextmanager
def _instances(workdir: Path, keep: bool) -> Iterator[list[Instance]]:
    started: list[Instance] = []
    try:
        yield started
    finally:
        if not keep:
            for inst in reversed(started):
                inst.admin.close()
                inst.server.stop()


def _start(workdir: Path, name: str, upstream: tuple[Instance, str, str, str] | None) -> Instance:
    from rhaas.lab.servers import Server  # the lab's way to run a server: loaded when the demo plays

    password = secrets.token_urlsafe(12)
    args: list[str] = []
    env: dict[str, str] = {}
    if upstream is not None:
        up, project, user, user_password = upstream
        args = ["--upstream", up.server.url, "--upstream-project", project, "--upstream-user", user]
        env["RHAAS_UPSTREAM_PASSWORD"] = user_password
    server = Server(
        f"sqlite:///{workdir / (name + '.sqlite3')}",
        workdir / f"{name}.log",
        *args,
        admin=("admin", password),
        env=env,
    ).start()
    return Instance(name, server, password)


def _switch_vlans(base: Instance, ports: dict[str, str], nodes: list[str]) -> dict[str, Any]:
    return {node: base.admin.port.state("sw0", ports[node]) for node in nodes}


@click.command()
@click.option("--mock", is_flag=True, help="Mock switch and BMCs, no fast provisioning: no root, seconds.")
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(4, 16),
              help="Nodes of the mock site.")  # fmt: skip
@click.option("--memory", default=1536, show_default=True, type=click.IntRange(1024, 4096),
              help="MB of memory per lab node.")  # fmt: skip
@click.option("--profile", "profiles", type=click.Choice(NODE_PROFILES), multiple=True,
              help="The lab nodes' hardware, node i taking the i-th given (round the list; repeat to mix): "
              "virtio (a cloud VM's), uefi-nvme (OVMF, e1000e, NVMe), bios-megasas (SeaBIOS, e1000, "
              f"MegaRAID). Default: {' '.join(LAB_PROFILES)}.")  # fmt: skip
@click.option(
    "--bmc",
    "bmcs",
    type=click.Choice(BMC_PROTOCOLS),
    multiple=True,
    help=f"The protocol each lab node's BMC speaks, the same way round. Default: {' '.join(LAB_BMCS)}.",
)
@click.option("--keep", is_flag=True, help="Leave the instances running and print how to reach them.")
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where logs and databases go."
)
def demo(
    mock: bool,
    nodes: int,
    memory: int,
    profiles: tuple[str, ...],
    bmcs: tuple[str, ...],
    keep: bool,
    workdir: Path | None,
) -> None:
    """Play the rhaas story: a base site, a reseller on it, customers A and B, and a third level.

    As root, on the lab: three QEMU nodes behind Open vSwitch and their BMCs (virtio and IPMI, or the
    server hardware --profile and --bmc give); the reseller provisions
    customer A's Debian 12 whole-disk image on two nodes by kexec (A logs in over SSH), takes them back
    through an NMI and wipes them, provisions customer B's Debian 13, with no firmware boot; then B
    reboots one node, which comes back and returns by the reboot path beside the other's fast return.
    With --mock (or without root) the story runs on mock hardware, without fast provisioning."""
    with cleanup_on_signals():  # a kill, or a closed terminal, stops what the demo started
        from rhaas.lab.site import missing

        why = None if mock else missing()
        if why:
            click.echo(f"demo: the lab {why}; playing the story on mock hardware (see --help)", err=True)
        workdir = (workdir or Path(tempfile.mkdtemp(prefix="rhaas-demo-"))).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        story = Story(live=not (mock or why))
        click.echo(click.style("rhaas demo", bold=True) + f" (logs and databases in {workdir})\n")
        rows: list[tuple[str, str, str, str]] = []
        if mock or why:
            reach = _mock_story(story, workdir, nodes, keep)
        else:
            from rhaas import demo_lab

            rows, reach = demo_lab.play(
                workdir, story.step, story.check, keep, memory, profiles or LAB_PROFILES, bmcs or LAB_BMCS
            )
        click.echo("\n" + click.style("step timings", bold=True))
        for title, seconds in story.timings:
            click.echo(f"  {seconds:8.1f} s  {title}")
        if rows:
            click.echo(
                "\n" + click.style("fast path against reboot path (medians over the nodes)", bold=True)
            )
            header = ("", "fast path", "reboot path", "firmware boots fast / reboot")
            width = max(len(r[0]) for r in [header, *rows])
            for what, fast, slow, boots in [header, *rows]:
                click.echo(f"  {what:<{width}}  {fast:>9}  {slow:>11}  {boots}")
            click.echo("  * the reboot path's provision: the network boot to the FPBL, then the same deploy")
            click.echo("  the reboot path's return: the node B rebooted during its lease (see the checks)")
        seed = [(claim, evidence) for claim, evidence in story.checks if claim.startswith("seed ")]
        if seed:
            click.echo("\n" + click.style("the seed's acceptance criteria", bold=True))
            for claim, evidence in seed:
                click.echo(f"  {click.style('✔', fg='green')} {claim.split(': ', 1)[1]}\n      {evidence}")
        click.echo(click.style(f"\nall {len(story.checks)} checks passed", fg="green"))
        if keep:
            click.echo("The instances keep running. Talk to them with the CLI:")
            for line in reach:
                click.echo(line)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            click.echo("everything was stopped and removed")


def _mock_story(story: Story, workdir: Path, nodes: int, keep: bool) -> list[str]:
    """The story on the mock site; with ``keep``, the lines that tell how to reach each instance."""
    with _instances(workdir, keep) as running:
        base = story.step("start the base instance", lambda: _start(workdir, "base", None))
        running.append(base)
        ports = _mock_site(story, base, nodes)
        _bot, bot_pw = base.user("reseller-bot", "reseller")
        reseller = story.step(
            "start the reseller's recursive instance on project 'reseller'",
            lambda: _start(workdir, "reseller", (base, "reseller", "reseller-bot", bot_pw)),
        )
        running.append(reseller)
        pool = story.step("the reseller takes 3 nodes from the base", lambda: reseller.admin.pool.grow(3))
        story.check("nodes are the reseller's at the base", ", ".join(pool),
                    sorted(base.admin.project.nodes_in("reseller")) == sorted(pool))  # fmt: skip

        for project in ("customer-a", "customer-b", "level3"):
            reseller.admin.project.create(project)
        a_nodes = _mock_customer_a(story, base, reseller, ports)
        _mock_customer_b(story, base, reseller, a_nodes)
        _mock_level3(story, workdir, base, reseller, running)

        reach: list[str] = []
        if keep:
            for inst in running:
                password = inst.server.admin[1]
                reach.append(f"  {inst.name}: export RHAAS_ENDPOINT={inst.server.url} RHAAS_USERNAME=admin "
                             f"RHAAS_PASSWORD={password}")  # fmt: skip
            pids = " ".join(str(i.server.proc.pid) for i in running if i.server.proc)
            reach.append(f"Stop them with: kill {pids}")
    return reach


def _mock_site(story: Story, base: Instance, nodes: int) -> dict[str, str]:
    """Register a mock switch and ``nodes`` nodes with mock BMCs at the base; each node's port."""
    names = [f"node{i:02d}" for i in range(1, nodes + 1)]
    ports = {name: f"gi1/0/{i}" for i, name in enumerate(names, 1)}

    def build_site() -> None:
        base.admin.switch.register("sw0", "mock")
        for i, name in enumerate(names, 1):
            base.admin.node.register(name, "mock", f"bmc-{name}", "admin", secrets.token_hex(8))
            base.admin.node.add_nic(name, "eth0", f"52:54:00:12:34:{i:02x}")
            base.admin.port.register("sw0", ports[name])
            base.admin.port.connect_nic("sw0", ports[name], name, "eth0")
        base.admin.project.create("reseller")

    story.step(f"register the site: a switch and {nodes} nodes with BMCs", build_site)
    return ports


def _mock_customer_a(story: Story, base: Instance, reseller: Instance, ports: dict[str, str]) -> list[str]:
    """Customer A claims two nodes on a private network, then returns them; the nodes."""
    alice, _ = reseller.user("alice", "customer-a")
    a_nodes = story.step("customer A claims 2 nodes", lambda: alice.project.connect_nodes("customer-a", 2))
    alice.network.create("a-net", "customer-a", "customer-a", "")
    vlan = alice.network.show("a-net")["channels"][1].split("/")[1]

    def connect_a() -> None:
        for node in a_nodes:
            alice.wait_networking_action(alice.node.connect_network(node, "eth0", "a-net")["status_id"])

    story.step("customer A puts both nodes on its private network", connect_a)
    vlans = _switch_vlans(base, ports, a_nodes)
    story.check("the base switch isolates A's nodes on one VLAN", f"{vlans}",
                all(v == {"native": vlan, "tagged": []} for v in vlans.values()))  # fmt: skip

    def return_a() -> None:
        for node in a_nodes:
            alice.wait_networking_action(alice.node.detach_network(node, "eth0", "a-net")["status_id"])
            alice.project.detach("customer-a", node)

    story.step("customer A returns its nodes", return_a)
    vlans = _switch_vlans(base, ports, a_nodes)
    story.check("their ports carry nothing any more", f"{vlans}",
                all(v == {"native": None, "tagged": []} for v in vlans.values()))  # fmt: skip
    return list(a_nodes)


def _mock_customer_b(story: Story, base: Instance, reseller: Instance, a_nodes: list[str]) -> None:
    """Customer B gets the nodes A returned and powers one on, through the reseller to the base's BMC."""
    bob, _ = reseller.user("bob", "customer-b")
    b_nodes = story.step("customer B claims 2 nodes", lambda: bob.project.connect_nodes("customer-b", 2))
    story.check("B got the nodes A returned", ", ".join(b_nodes), sorted(b_nodes) == sorted(a_nodes))
    bob.node.enable_obm(b_nodes[0])
    story.step("customer B powers a node on", lambda: bob.node.power_on(b_nodes[0]))
    seen_by_b = bob.node.power_status(b_nodes[0])["power_status"]
    base.admin.node.enable_obm(b_nodes[0])  # the base operator looks at the BMC directly
    at_base = base.admin.node.power_status(b_nodes[0])["power_status"]
    story.check("power reached the base's BMC", f"B sees {seen_by_b}, the base sees {at_base}",
                seen_by_b == at_base == "on")  # fmt: skip


def _mock_level3(
    story: Story, workdir: Path, base: Instance, reseller: Instance, running: list[Instance]
) -> None:
    """A third-level instance on the reseller, whose customer's claim walks down to the base."""
    _l3bot, l3_pw = reseller.user("level3-bot", "level3")
    level3 = story.step(
        "start a third-level instance on the reseller",
        lambda: _start(workdir, "level3", (reseller, "level3", "level3-bot", l3_pw)),
    )
    running.append(level3)
    level3.admin.project.create("carol-co")
    carol, _ = level3.user("carol", "carol-co")
    c_nodes = story.step(
        "a level-3 customer claims 2 nodes (more than the reseller has free)",
        lambda: carol.project.connect_nodes("carol-co", 2),
    )
    at_base = base.admin.project.nodes_in("reseller")
    story.check(
        "the request walked down to the base",
        f"{', '.join(c_nodes)}; the reseller now holds {len(at_base)} nodes of the base",
        set(c_nodes) <= set(at_base) and len(at_base) == 4,
    )
