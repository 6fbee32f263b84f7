"""``rhaas demo`` as root: the whole story on the lab — real Open vSwitch, real IPMI, real QEMU nodes.

The lab's base instance drives the switch and the BMCs. A reseller runs a recursive instance on a project
of the base, with fast provisioning: its boot service sits in a headnode on its provisioning network, and
the nodes it takes network-boot into the FPBL once. Customer A gets two nodes with A's OS and data on
A's private network (progress per node and phase); A returns them and they come back through an NMI,
wiped, with no firmware boot; customer B gets them with B's OS and finds none of A's data. B returns them
by the reboot path, to compare. A third-level instance on the reseller gets the lab's third node for its
own customer, down through both levels. The story ends with a table, fast path against reboot path, and
the seed's four acceptance criteria as checked statements.

Everything goes through the HIL API with rhaas's client; the switch's state is read back from OVS.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click

from rhaas.cli.provisioning import wait_jobs
from rhaas.client import Client
from rhaas.lab import images
from rhaas.lab.reseller import Reseller, start_reseller
from rhaas.lab.servers import Server
from rhaas.lab.site import SWITCH, Lab
from rhaas.provisioning.phases import phase_durations

TIMEOUT = 420.0  # TCG on a busy 2-core machine: iPXE, the FPBL over HTTP, two nodes at once
HEADNODE, HEAD_IP = "head", "10.0.0.1/24"
POLL = 0.3


def wait_each(
    what: str, names: list[str], ok: Callable[[str], bool], timeout: float, since: float | None = None
) -> dict[str, float]:
    """Poll ``ok(name)`` for every name until each has held once; seconds from ``since`` (a monotonic
    time; default now) until each did."""
    start = time.monotonic() if since is None else since
    took: dict[str, float] = {}
    while len(took) < len(names):
        for name in names:
            if name not in took and ok(name):
                took[name] = time.monotonic() - start
        if len(took) == len(names):
            break
        if time.monotonic() - start > timeout:
            late = ", ".join(n for n in names if n not in took)
            raise click.ClickException(f"timed out after {timeout:g} s: {what} ({late})")
        time.sleep(POLL)
    return took


class Consoles:
    """The lab nodes' serial consoles, read from an offset taken before each chapter."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.paths = {n["node"]: Path(n["console"]) for n in status["nodes"]}
        self.marks = {n: 0 for n in self.paths}

    def mark(self) -> None:
        self.marks = {n: len(p.read_bytes()) if p.exists() else 0 for n, p in self.paths.items()}

    def since(self, node: str) -> str:
        path = self.paths[node]
        return path.read_bytes()[self.marks[node] :].decode(errors="replace") if path.exists() else ""


def _user(admin: Client, name: str, project: str) -> str:
    """Make user ``name``, a member of ``project``; its password."""
    password = secrets.token_urlsafe(12)
    admin.user.create(name, password)
    admin.user.add_project(name, project)
    return password


def _upload(c: Client, name: str, project: str, os_: images.TestOS, disk: Path | None) -> None:
    files = {"kernel": os_.kernel, "initrd": os_.initrd, **({"disk": disk} if disk else {})}
    digests = {role: c.image.upload(path)["sha256"] for role, path in files.items()}
    c.image.register(name, project=project, cmdline=os_.cmdline, **digests)


@contextmanager
def _teardown(lab: Lab, keep: bool) -> Iterator[ExitStack]:
    with ExitStack() as stack:
        try:
            yield stack
        except BaseException:
            click.echo("the demo failed: stopping everything it started", err=True)
            stack.close()
            lab.down()
            raise
        if not keep:
            stack.close()
            lab.down()
        else:
            stack.pop_all()


class _Story:
    """The story on the lab, chapter by chapter: what each chapter made, the next one uses."""

    def __init__(
        self, workdir: Path, lab: Lab, stack: ExitStack, step: Callable[..., Any],
        check: Callable[[str, str, bool], None],
    ) -> None:  # fmt: skip
        self.workdir, self.lab, self.stack, self.step, self.check = workdir, lab, stack, step, check

    def bring_up(self, memory_mb: int) -> None:
        self.step(
            "bring up the lab: Open vSwitch, 3 QEMU nodes with IPMI BMCs, the base instance",
            lambda: self.lab.up(3, memory_mb),
        )
        self.base = self.stack.enter_context(self.lab.client())
        self.step(
            "plug a headnode into the switch for the reseller's boot service",
            lambda: self.lab.headnode(HEADNODE, HEAD_IP),
        )
        status = self.lab.status()
        self.ports = {n["node"]: n["switch_port"] for n in status["nodes"]}
        self.consoles = Consoles(status)

    def boots(self) -> dict[str, int]:
        return {n["node"]: n["firmware_boots"] for n in self.lab.status()["nodes"]}

    def state(self, node: str) -> str:
        return str(self.admin.node.provisioning(node)["state"])

    def take_nodes(self) -> None:
        """The reseller starts on the base and takes two nodes, and enrols them in fast provisioning."""
        self.reseller: Reseller = self.step(
            "start the reseller's recursive instance on project 'reseller', fast provisioning on",
            lambda: start_reseller(self.lab, HEADNODE, self.workdir / "fpbl"),
        )
        self.stack.callback(self.reseller.stop)
        self.admin = self.reseller.admin
        self.pool = self.step("the reseller takes 2 nodes from the base", lambda: self.admin.pool.grow(2))
        held = sorted(self.base.project.nodes_in("reseller"))
        holds = ", ".join(held)
        self.check(
            "the nodes are the reseller's at the base",
            f"{', '.join(self.pool)}; the base's project 'reseller' holds {holds} (with the headnode)",
            set(self.pool) <= set(held) and len(self.pool) == 2,
        )

        def enroll() -> dict[str, float]:
            for node in self.pool:
                self.admin.node.enroll_fpbl(node)
            return wait_each("FPBL ready", self.pool, lambda n: self.state(n) == "ready", TIMEOUT)

        self.enrolled = self.step(
            "enrol both: set to boot from the network, power cycle once, FPBL checks in", enroll
        )
        prov = self.reseller.provisioning_vlan
        on_prov = {n: self.base.port.state(SWITCH, self.ports[n]) for n in self.pool}
        self.check(
            "their NICs are on the provisioning network (read from OVS)",
            f"VLAN {prov}: {on_prov}",
            all(v == {"native": prov, "tagged": []} for v in on_prov.values()),
        )
        self.first_ready = self.boots()

    def customers(self, a_os: images.TestOS, b_os: images.TestOS, disk: Path) -> tuple[Client, Client]:
        """Customers A and B, their images, and A's private network."""
        for project in ("customer-a", "customer-b", "level3"):
            self.admin.project.create(project)
        url = self.reseller.server.url
        alice = self.stack.enter_context(Client(url, "alice", _user(self.admin, "alice", "customer-a")))
        bob = self.stack.enter_context(Client(url, "bob", _user(self.admin, "bob", "customer-b")))
        _upload(alice, "a-os", "customer-a", a_os, disk)
        _upload(bob, "b-os", "customer-b", b_os, None)
        alice.network.create("a-net", "customer-a", "customer-a", "")
        return alice, bob

    def provision(
        self, c: Client, project: str, image: str, os_: images.TestOS, net: str | None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        """Claim the pool for ``project``, deploy ``image`` on it; the final jobs and when each OS was up."""
        self.consoles.mark()
        for node in self.pool:
            c.project.connect(project, node)
            if net:
                c.wait_networking_action(c.node.connect_network(node, "eth0", net)["status_id"])
        start = time.monotonic()
        jobs = {node: c.node.provision(node, image) for node in self.pool}
        final = wait_jobs(c, jobs, TIMEOUT, as_json=False)
        up = wait_each(
            "the OS is up",
            self.pool,
            lambda n: f"{os_.marker} UP" in self.consoles.since(n),
            TIMEOUT,
            since=start,
        )
        return final, up

    def give_back(self, c: Client, project: str, net: str | None) -> dict[str, float]:
        for node in self.pool:
            if net:
                c.wait_networking_action(c.node.detach_network(node, "eth0", net)["status_id"])
            c.project.detach(project, node)
        return wait_each("wiped and ready", self.pool, lambda n: self.state(n) == "ready", TIMEOUT)

    def customer_a(self, alice: Client, a_os: images.TestOS, nonce: str) -> None:
        """A's OS and data on both nodes, on A's network; then A returns them by the fast path."""
        a_vlan = alice.network.show("a-net")["channels"][1].split("/")[1]
        self.a_jobs, self.a_up = self.step(
            "customer A claims both, puts them on network a-net, provisions A's OS",
            lambda: self.provision(alice, "customer-a", "a-os", a_os, "a-net"),
        )
        data = {n: f"customer-a-data {nonce}" in self.consoles.since(n) for n in self.pool}
        self.check(
            "seed 1/4: A's OS runs on both nodes, A's data on their disks",
            f"consoles of {', '.join(self.pool)} show '{a_os.marker} UP' and 'RHAAS-DISK customer-a-data "
            f"{nonce}'",
            all(data.values()),
        )
        on_a = {n: self.base.port.state(SWITCH, self.ports[n]) for n in self.pool}
        self.check(
            "their NICs moved to A's network when the OS came up",
            f"VLAN {a_vlan}: {on_a}",
            all(v == {"native": a_vlan, "tagged": []} for v in on_a.values()),
        )
        self.a_back = self.step(
            "customer A returns both: NMI, wipe, verify, ready",
            lambda: self.give_back(alice, "customer-a", "a-net"),
        )
        self.a_returns = {n: self.admin.node.provisioning(n)["jobs"][-1] for n in self.pool}
        verified = {
            n: (
                j["path"],
                j["status"],
                any(p["phase"] == "verify-wipe" and p["state"] == "done" for p in j["phases"]),
            )
            for n, j in self.a_returns.items()
        }
        free = self.admin.node.list("free")
        self.check(
            "seed 2/4: they were wiped without a reboot and are back in the pool",
            f"{verified}; free: {', '.join(sorted(free))}",
            all(v == ("fast", "DONE", True) for v in verified.values()) and set(self.pool) <= set(free),
        )

    def customer_b(self, bob: Client, b_os: images.TestOS, nonce: str) -> None:
        self.b_jobs, self.b_up = self.step(
            "customer B claims the same nodes and provisions B's OS",
            lambda: self.provision(bob, "customer-b", "b-os", b_os, None),
        )
        clean = {
            n: nonce not in self.consoles.since(n) and f"{b_os.marker} UP" in self.consoles.since(n)
            for n in self.pool
        }
        self.check(
            "seed 3/4: B's OS runs on them and finds none of A's data",
            f"consoles show '{b_os.marker} UP', no '{nonce}'",
            all(clean.values()),
        )

    def level3(self) -> Server:
        """An instance on the reseller, whose customer needs a node the reseller lacks."""
        bot_password = _user(self.admin, "level3-bot", "level3")
        level3 = Server(
            f"sqlite:///{self.lab.workdir / 'level3.sqlite3'}",
            self.lab.workdir / "level3.log",
            "--upstream",
            self.reseller.server.url,
            "--upstream-project",
            "level3",
            "--upstream-user",
            "level3-bot",
            admin=("admin", secrets.token_urlsafe(12)),
            env={"RHAAS_UPSTREAM_PASSWORD": bot_password},
        )
        self.step("start a third-level instance on the reseller's project 'level3'", level3.start)
        self.stack.callback(level3.stop)
        l3 = self.stack.enter_context(Client(level3.url, *level3.admin))
        l3.project.create("carol-co")
        carol = self.stack.enter_context(Client(level3.url, "carol", _user(l3, "carol", "carol-co")))
        got = self.step(
            "a level-3 customer claims a node (the reseller has none free: B holds them)",
            lambda: carol.project.connect_nodes("carol-co", 1),
        )
        carol.network.create("c-net", "carol-co", "carol-co", "")
        c_vlan = carol.network.show("c-net")["channels"][1].split("/")[1]
        carol.wait_networking_action(carol.node.connect_network(got[0], "eth0", "c-net")["status_id"])
        seen = self.base.port.state(SWITCH, self.ports[got[0]])
        self.check(
            "the request walked down to the base, and the level-3 network reached the switch",
            f"{got[0]}: base project reseller holds {sorted(self.base.project.nodes_in('reseller'))}; "
            f"port {self.ports[got[0]]} {seen}, level-3 VLAN {c_vlan}",
            got[0] not in self.pool and seen == {"native": c_vlan, "tagged": []},
        )
        return level3

    def reboot_path(self, bob: Client) -> None:
        """No firmware boot so far; then B returns the nodes by the reboot path, to compare."""
        after_b = self.boots()
        self.check(
            "seed 4/4: no firmware boot from the first 'ready' to the end",
            f"BMC boot counts at first ready {self.first_ready}, now {after_b}",
            after_b == self.first_ready,
        )
        self.step(
            "the reseller switches to the reboot path, to compare (restart, same database)",
            lambda: self.reseller.restart(return_path="reboot"),
        )
        self.b_back = self.step(
            "customer B returns both by the reboot path: power cycle, FPBL, wipe, ready",
            lambda: self.give_back(bob, "customer-b", None),
        )
        self.b_returns = {n: self.admin.node.provisioning(n)["jobs"][-1] for n in self.pool}
        after_reboot = self.boots()
        self.rebooted = {n: after_reboot[n] - after_b[n] for n in self.pool}
        self.check(
            "the reboot path booted each node's firmware once",
            f"{self.rebooted}; paths { {n: j['path'] for n, j in self.b_returns.items()} }",
            set(self.rebooted.values()) == {1},
        )

    def table(self) -> list[tuple[str, str, str, str]]:
        return _table(
            self.enrolled, self.a_up, self.b_up, self.a_back, self.b_back, self.a_jobs, self.b_jobs,
            self.a_returns, self.b_returns, self.rebooted,
        )  # fmt: skip

    def reach(self, level3: Server) -> list[str]:
        """How to reach each instance that keeps running."""
        return [
            f"  base:     {self.lab.exports()}",
            f"  reseller: export RHAAS_ENDPOINT={self.reseller.server.url} RHAAS_USERNAME=admin "
            f"RHAAS_PASSWORD={self.reseller.server.admin[1]}",
            f"  level 3:  export RHAAS_ENDPOINT={level3.url} RHAAS_USERNAME=admin "
            f"RHAAS_PASSWORD={level3.admin[1]}",
            f"Stop everything with: rhaas lab down --workdir {self.lab.workdir}",
        ]


def play(
    workdir: Path,
    step: Callable[..., Any],
    check: Callable[[str, str, bool], None],
    keep: bool,
    memory_mb: int = 1024,
) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """Play the story; returns the closing table's rows (what, fast, reboot, firmware boots) and, with
    ``keep``, the lines that tell how to reach each instance."""
    from rhaas.provisioning.fpbl import build_fpbl, export

    lab = Lab(workdir / "lab", say=lambda line: click.echo(click.style(f"    {line}", dim=True)))
    fpbl = step("build the FPBL from Debian packages (cached by package versions)", build_fpbl)
    export(fpbl, workdir / "fpbl")
    a_os = images.build_test_os("demo-a", "RHAAS-TESTOS customer-a-os")
    b_os = images.build_test_os("demo-b", "RHAAS-TESTOS customer-b-os")
    nonce = secrets.token_hex(6)
    disk = workdir / "a-data.img"
    line = f"RHAAS-DISK customer-a-data {nonce}\n".encode()
    disk.write_bytes(line + bytes(16 * 2**20 - len(line)))

    with _teardown(lab, keep) as stack:
        story = _Story(workdir, lab, stack, step, check)
        story.bring_up(memory_mb)
        story.take_nodes()
        alice, bob = story.customers(a_os, b_os, disk)
        story.customer_a(alice, a_os, nonce)
        story.customer_b(bob, b_os, nonce)
        level3 = story.level3()
        story.reboot_path(bob)
        rows = story.table()
        reach = story.reach(level3) if keep else []
    return rows, reach


def _median(values: Any) -> float:
    return float(statistics.median(list(values)))


def _table(
    enrolled: dict[str, float],
    a_up: dict[str, float],
    b_up: dict[str, float],
    a_back: dict[str, float],
    b_back: dict[str, float],
    a_jobs: dict[str, Any],
    b_jobs: dict[str, Any],
    a_returns: dict[str, Any],
    b_returns: dict[str, Any],
    rebooted: dict[str, int],
) -> list[tuple[str, str, str, str]]:
    """Rows of (what, fast path, reboot path, firmware boots fast/reboot); medians over the nodes. A phase
    lasts from the end of the one before it (`rhaas.provisioning.phases`, as in bench/provision.py)."""
    boots = _median(rebooted.values())
    provision = _median([*a_up.values(), *b_up.values()])
    network_boot = _median(enrolled.values())
    rows = [
        (
            "provision: request -> customer OS up",
            f"{provision:.1f} s",
            f"{network_boot + provision:.1f} s *",
            f"0 / {boots:.0f}",
        ),
        (
            "return: request -> wiped, ready",
            f"{_median(a_back.values()):.1f} s",
            f"{_median(b_back.values()):.1f} s",
            f"0 / {boots:.0f}",
        ),
        ("power cycle -> network boot -> FPBL ready", "-", f"{network_boot:.1f} s", "- / 1"),
    ]
    deploys: dict[str, list[float]] = {}
    for job in [*a_jobs.values(), *b_jobs.values()]:
        for phase, seconds in phase_durations(job).items():
            deploys.setdefault(phase, []).append(seconds)
    for phase, values in deploys.items():
        rows.append((f"  deploy phase {phase}", f"{_median(values):.1f} s", "", ""))
    fast: dict[str, list[float]] = {}
    slow: dict[str, list[float]] = {}
    for jobs, into in ((a_returns, fast), (b_returns, slow)):
        for job in jobs.values():
            for phase, seconds in phase_durations(job).items():
                into.setdefault(phase, []).append(seconds)
    for phase in dict.fromkeys([*fast, *slow]):
        f = f"{_median(fast[phase]):.1f} s" if phase in fast else "-"
        s = f"{_median(slow[phase]):.1f} s" if phase in slow else "-"
        rows.append((f"  return phase {phase}", f, s, ""))
    return rows
