"""``rhaas demo`` as root: the whole story on the lab — real Open vSwitch, real IPMI, real QEMU nodes.

The lab's base instance drives the switch and the BMCs. A reseller runs a recursive instance on a project
of the base, with fast provisioning: its boot service sits in a headnode on its provisioning network, and
the nodes it takes network-boot into the FPBL once. Customer A brings a real distribution's whole-disk
image (Debian 12, built from Debian packages) and gets it on two nodes with A's SSH key, on A's private
network, where A's own machine (another headnode: DHCP, SSH) logs in and leaves data all over the disks;
A returns them and they come back through an NMI, wiped, with no firmware boot; customer B gets them with
Debian 13 and B's key, scans every byte of the disks and finds none of A's data, and A's key is refused.
A third-level instance on the reseller gets the lab's third node for its own customer, down through both
levels. Then B reboots one node from inside: B's OS comes back from its own disk, and when B gives both
back that node takes the reboot path (the reboot unloaded the crash kernel; its history says so) while
the other returns fast: the two paths side by side. The story ends with a table, fast path against
reboot path, and the seed's four acceptance criteria as checked statements.

Everything goes through the HIL API with rhaas's client; the switch's state is read back from OVS.
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click

from rhaas.cli.provisioning import wait_jobs
from rhaas.client import Client
from rhaas.lab import distro
from rhaas.lab.desk import Desk, keypair, put_on
from rhaas.lab.polling import in_parallel
from rhaas.lab.qemu import PROFILES
from rhaas.lab.reseller import Reseller, start_reseller
from rhaas.lab.servers import Server
from rhaas.lab.site import SWITCH, Lab, node_hardware
from rhaas.provisioning.phases import phase_durations

TIMEOUT = 420.0  # TCG on a busy 2-core machine: iPXE, the FPBL over HTTP, two nodes at once
#: Request → SSH answers for a Debian first boot on two TCG nodes at once (the image is written first).
OS_TIMEOUT = 1200.0
HEADNODE, HEAD_IP = "head", "10.0.0.1/24"
#: The customers' own machine on their VLAN, and the addresses its DHCP server gives their nodes.
DESK, DESK_IP, NODE_NET = "desk", "10.0.1.1/24", "10.0.1"
POLL = 0.3
MIB = 1 << 20
#: The reseller's fleet deploys send the image once, to a multicast group, at this rate (Mbit/s): the lab's
#: links are not shaped, and its nodes' agents run under TCG, so this is what they can take, not a link's
#: (asked for 160, the sending agent reached 63, CPU-bound, and the other lost 11 % of the pieces).
MULTICAST_MBIT = 64
#: Where A writes data past the 2 GiB image, on the 4 GiB disk (MiB offsets): none of it is the image's.
RAW_MIB = (2100, 2600, 3100, 3600)
#: In a customer's OS: the disk the root file system is on (``/dev/vda``, ``/dev/nvme0n1``, ``/dev/sda``...
#: by the node's hardware), and the driver of its NIC.
ROOT_DISK = 'disk=/dev/$(lsblk -no pkname "$(findmnt -no source /)")'
NIC_DRIVER = "basename $(readlink /sys/class/net/*/device/driver)"


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


def _user(admin: Client, name: str, project: str) -> str:
    """Make user ``name``, a member of ``project``; its password."""
    password = secrets.token_urlsafe(12)
    admin.user.create(name, password)
    admin.user.add_project(name, project)
    return password


@contextmanager
def _teardown(lab: Lab, keep: bool) -> Iterator[ExitStack]:
    with ExitStack() as stack:
        try:
            yield stack
        except BaseException as exc:
            why = "was stopped" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            click.echo(f"the demo {why}: stopping everything it started", err=True)
            click.echo(f"(if this is cut short: rhaas lab down --workdir {lab.workdir})", err=True)
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

    def bring_up(self, memory_mb: int, profiles: Sequence[str], bmcs: Sequence[str]) -> None:
        nodes = 3  # two for the reseller, one the base keeps
        hardware = ", ".join(f"{p} through {b.upper() if b == 'ipmi' else 'Redfish'}"
                             for p, b in node_hardware(profiles, bmcs, nodes))  # fmt: skip
        self.step(
            f"bring up the lab: Open vSwitch, {nodes} QEMU nodes with their BMCs ({hardware}), the base "
            "instance",
            lambda: self.lab.up(nodes, memory_mb, profiles=profiles, bmcs=bmcs),
        )
        self.base = self.stack.enter_context(self.lab.client())
        self.step(
            "plug a headnode into the switch for the reseller's boot service",
            lambda: self.lab.headnode(HEADNODE, HEAD_IP),
        )
        self.step(
            "plug another for the customers' own machine (their DHCP server, their SSH client)",
            lambda: self.lab.headnode(DESK, DESK_IP),
        )
        status = self.lab.status()
        self.ports = {n["node"]: n["switch_port"] for n in status["nodes"]}
        self.profiles = {n["node"]: n["profile"] for n in status["nodes"]}
        self.macs = {n["node"]: n["mac"] for n in status["nodes"]}
        self.desk_ns = next(h["netns"] for h in status["headnodes"] if h["headnode"] == DESK)

    def boots(self) -> dict[str, int]:
        return {n["node"]: n["firmware_boots"] for n in self.lab.status()["nodes"]}

    def state(self, node: str) -> str:
        return str(self.admin.node.provisioning(node)["state"])

    def take_nodes(self) -> None:
        """The reseller starts on the base and takes two nodes, and enrols them in fast provisioning."""
        self.reseller: Reseller = self.step(
            "start the reseller's recursive instance on project 'reseller', fast provisioning on",
            lambda: start_reseller(
                self.lab,
                HEADNODE,
                self.workdir / "fpbl",
                return_timeout=90,
                peer_exchange=True,
                peer_multicast_mbit=MULTICAST_MBIT,
            ),
        )
        self.stack.callback(self.reseller.stop)
        self.admin = self.reseller.admin
        self.base.project.connect("reseller", DESK)  # the customers' machine: theirs, not a node to resell
        self.pool = self.step("the reseller takes 2 nodes from the base", lambda: self.admin.pool.grow(2))
        held = sorted(self.base.project.nodes_in("reseller"))
        holds = ", ".join(held)
        self.check(
            "the nodes are the reseller's at the base",
            f"{', '.join(self.pool)}; the base's project 'reseller' holds {holds} (with the headnodes)",
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

    def customers(self, bookworm: distro.DistroImage, trixie: distro.DistroImage) -> tuple[Client, Client]:
        """Customers A and B, their images as they come (whole disks), their networks and SSH keys, and
        their own machine on the lab (its DHCP server answers the pool's nodes)."""
        for project in ("customer-a", "customer-b", "level3"):
            self.admin.project.create(project)
        url = self.reseller.server.url
        alice = self.stack.enter_context(Client(url, "alice", _user(self.admin, "alice", "customer-a")))
        bob = self.stack.enter_context(Client(url, "bob", _user(self.admin, "bob", "customer-b")))
        self.cmdlines = {"debian12": bookworm.boot_entry["cmdline"], "debian13": trixie.boot_entry["cmdline"]}
        for c, name, project, image in ((alice, "debian12", "customer-a", bookworm),
                                        (bob, "debian13", "customer-b", trixie)):  # fmt: skip
            self.step(
                f"{c.username} registers {image.release}'s whole-disk image as it comes ({image.disk.name}, "
                f"{image.data_bytes >> 20} MiB of data): chunks, holes neither sent nor stored",
                lambda c=c, name=name, project=project, image=image: c.image.register_disk(
                    name, image.disk, project=project
                ),
            )
        alice.network.create("a-net", "customer-a", "customer-a", "")
        bob.network.create("b-net", "customer-b", "customer-b", "")
        self.keys = {who: keypair(self.workdir, who) for who in ("alice", "bob")}
        ips = {n: (self.macs[n], f"{NODE_NET}.{11 + i}") for i, n in enumerate(self.pool)}
        self.desk = Desk(self.desk_ns, self.workdir, ips)
        self.stack.callback(self.desk.stop)
        return alice, bob

    def provision(
        self, c: Client, project: str, image: str, who: str, net: str
    ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        """Claim the pool for ``project``, deploy ``image`` on it with ``who``'s SSH key; the final jobs
        and when each node let ``who`` in over SSH (from the request)."""
        key, pub = self.keys[who]
        for node in self.pool:
            c.project.connect(project, node)
            c.wait_networking_action(c.node.connect_network(node, "eth0", net)["status_id"])
        start = time.monotonic()
        keys = [pub.read_text()]
        jobs = {
            n: c.node.provision(n, image, ssh_keys=keys, cmdline=self._cmdline(n, image)) for n in self.pool
        }
        final = wait_jobs(c, jobs, OS_TIMEOUT, as_json=False)
        failed = {n: j.get("error") for n, j in final.items() if j["status"] != "DONE"}
        if failed:  # no OS will answer: say why now, not after the SSH deadline
            raise click.ClickException(f"{who}'s deploys failed: {failed}")
        up = wait_each(
            "SSH answers", self.pool, lambda n: self.desk.logged_in(key, n) == n, OS_TIMEOUT, since=start
        )
        return final, up

    def _cmdline(self, node: str, image: str) -> str | None:
        """The image's own command line, with what the lab's emulated hardware needs (`Profile.fpbl_args`:
        QEMU's NVMe controller can lose a command while many are in flight, and a customer's kernel
        writing hard meets it as the FPBL's wipe did); None (the image's entry) where it needs nothing."""
        extra = PROFILES[self.profiles[node]].fpbl_args
        return f"{self.cmdlines[image]} {extra}" if extra else None

    def give_back(self, c: Client, project: str, net: str | None) -> dict[str, float]:
        for node in self.pool:
            if net:
                c.wait_networking_action(c.node.detach_network(node, "eth0", net)["status_id"])
            c.project.detach(project, node)
        return wait_each("wiped and ready", self.pool, lambda n: self.state(n) == "ready", TIMEOUT)

    def _on(self, who: str, node: str, command: str, timeout: float = 120) -> str:
        done = self.desk.ssh(self.keys[who][0], node, command, timeout)
        if done.returncode != 0:
            raise click.ClickException(f"{who} on {node}: {command!r} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def customer_a(self, alice: Client, image: distro.DistroImage, nonce: str) -> None:
        """Debian 12 and A's data on both nodes, on A's network; then A returns them by the fast path."""
        a_vlan = alice.network.show("a-net")["channels"][1].split("/")[1]
        self.a_net = put_on(self.base, DESK, "reseller", a_vlan)
        self.a_jobs, self.a_up = self.step(
            "customer A claims both, puts them on a-net, provisions Debian 12 with A's SSH key",
            lambda: self.provision(alice, "customer-a", "debian12", "alice", "a-net"),
        )
        shared = {n: exchanged(j) for n, j in self.a_jobs.items()}
        sent = sum(e[0] for e in shared.values() if e)
        self.check(
            "the nodes passed the image to each other (one sent it to a multicast group), each piece checked",
            f"bytes from the server, from the other node, of those from the group: {shared}; the server sent "
            f"{sent} bytes for {len(shared)} deploys of {image.data_bytes} bytes of data",
            all(shared.values()) and sum(e[2] for e in shared.values() if e) > 0,
        )
        plant = (
            f"set -e; {ROOT_DISK}; echo $disk; {NIC_DRIVER}; "
            f"echo {nonce} | sudo tee /root/a-data /var/tmp/a-data >/dev/null; "
            f"yes {nonce} | head -c {64 * MIB} | sudo tee /var/tmp/a-bulk >/dev/null; "
            f"for mib in {' '.join(map(str, RAW_MIB))}; do echo {nonce} | sudo dd of=$disk bs=1M "
            "seek=$mib conv=notrunc,fsync status=none; done; sync; "
            "uname -r; timeout 600 sh -c 'until systemctl is-active -q multi-user.target; do sleep 1; done'; "
            "systemctl is-active multi-user.target; sudo grep -c "
            f"{nonce} /root/a-data"
        )
        out = {n: self._on("alice", n, plant, 900).split() for n in self.pool}
        hardware = {n: tuple(v[:2]) for n, v in out.items()}
        expect = {n: PROFILES[self.profiles[n]] for n in self.pool}
        seen = {n: v[2:] for n, v in out.items()}
        self.check(
            "A's OS drives each node's own hardware (disk, NIC driver)",
            ", ".join(f"{n} ({self.profiles[n]}): {' on '.join(hardware[n])}" for n in self.pool),
            all(hardware[n] == (expect[n].guest_disk, expect[n].guest_nic_driver) for n in self.pool),
        )
        self.check(
            "seed 1/4: A's OS runs on both nodes, A's data on their disks",
            f"A logged in over SSH from A's network as 'debian' on {', '.join(self.pool)}: {seen}; A's data "
            f"in files, a 64 MiB file and past the image at MiB {list(RAW_MIB)}",
            all(v == [image.kernel_release, "active", "1"] for v in seen.values()),
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
        why = {
            n: [
                f"{p['phase']} {p['state']}: {p['detail']}"
                for p in j["phases"]
                if p["phase"] in ("nmi", "fallback", "reboot-path")
            ]
            for n, j in self.a_returns.items()
            if j["path"] != "fast"
        }
        self.check(
            "seed 2/4: they were wiped without a reboot and are back in the pool",
            f"{verified}; free: {', '.join(sorted(free))}" + (f"; not fast: {why}" if why else ""),
            all(v == ("fast", "DONE", True) for v in verified.values()) and set(self.pool) <= set(free),
        )

    def customer_b(self, bob: Client, image: distro.DistroImage, nonce: str) -> None:
        self.b_release = image.kernel_release
        b_vlan = bob.network.show("b-net")["channels"][1].split("/")[1]
        put_on(self.base, DESK, "reseller", b_vlan, away_from=self.a_net)
        self.b_jobs, self.b_up = self.step(
            "customer B claims the same nodes, puts them on b-net, provisions Debian 13 (its initramfs "
            "made by dracut) with B's SSH key",
            lambda: self.provision(bob, "customer-b", "debian13", "bob", "b-net"),
        )
        # -z: records end at NUL bytes (a disk's zeroes), not at newlines, so grep's memory stays small.
        # The pattern is written so that it does not match itself: sudo logs the command line to B's
        # journal, on the very disk being scanned, and the nonce itself there would be counted as A's.
        scan = f"{ROOT_DISK}; uname -r; sudo grep -a -z -c '[{nonce[0]}]{nonce[1:]}' $disk || true"
        found: dict[str, list[str]] = {}
        self.step(
            "B scans every byte of both disks for A's data",
            lambda: found.update(in_parallel(self.pool, lambda n: self._on("bob", n, scan, 900).split())),
        )
        refused = {n: self.desk.ssh(self.keys["alice"][0], n, "true").returncode for n in self.pool}
        self.check(
            "seed 3/4: B's OS runs on them and finds none of A's data",
            f"B's scans of each whole disk (kernel, matches): {found}; A's key on B's nodes: exit {refused} "
            "(255: refused)",
            all(v == [image.kernel_release, "0"] for v in found.values()) and set(refused.values()) == {255},
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

    def customer_reboot(self, bob: Client) -> None:
        """No firmware boot so far; then B reboots one node from inside and gives both back: the
        rebooted one returns by the reboot path, the other by the fast path, side by side."""
        after_b = self.boots()
        self.check(
            "seed 4/4: no firmware boot from the first 'ready' to the end",
            f"BMC boot counts at first ready {self.first_ready}, now {after_b}",
            after_b == self.first_ready,
        )
        rebooted, kept = self.pool[0], self.pool[1]
        key = self.keys["bob"][0]

        def reboot() -> float:
            self.desk.ssh(key, rebooted, "sudo systemctl reboot", 30)  # the connection drops: no exit status
            start = time.monotonic()
            wait_each("its firmware boots", [rebooted], lambda n: self.boots()[n] > after_b[n], TIMEOUT)
            return wait_each("SSH answers", [rebooted], lambda n: self.desk.logged_in(key, n) == n,
                             OS_TIMEOUT, since=start)[rebooted]  # fmt: skip

        self.step(f"customer B reboots {rebooted} from inside (its firmware, its disk, its GRUB)", reboot)
        release = self._on("bob", rebooted, "uname -r")
        self.check(
            "B's own reboot brings B's OS back from its disk",
            f"{rebooted}: one firmware boot ({after_b[rebooted]} -> {self.boots()[rebooted]}), B logged in "
            f"again, kernel {release}",
            self.boots()[rebooted] == after_b[rebooted] + 1 and release == self.b_release,
        )
        self.b_back = self.step(
            f"customer B returns both: {kept} by NMI; {rebooted}'s crash kernel went with its reboot, so "
            "after the return's deadline it is power cycled into the FPBL",
            lambda: self.give_back(bob, "customer-b", "b-net"),
        )
        self.b_returns = {n: self.admin.node.provisioning(n)["jobs"][-1] for n in self.pool}
        after = self.boots()
        self.rebooted = {n: after[n] - after_b[n] for n in self.pool}
        paths = {n: j["path"] for n, j in self.b_returns.items()}
        why = [p["detail"] for p in self.b_returns[rebooted]["phases"] if p["phase"] == "fallback"]
        self.check(
            "the rebooted node returned by the reboot path, saying why; the other fast",
            f"paths {paths}; firmware boots since B's OS {self.rebooted}; {rebooted}'s history: {why}",
            paths == {rebooted: "reboot", kept: "fast"} and self.rebooted[kept] == 0 and bool(why),
        )
        self.fast_node, self.slow_node = kept, rebooted

    def table(self) -> list[tuple[str, str, str, str]]:
        slow, fast = self.slow_node, self.fast_node
        return _table(
            self.enrolled, [*self.a_up.values(), *self.b_up.values()],
            [*self.a_back.values(), self.b_back[fast]], [self.b_back[slow]],
            [*self.a_jobs.values(), *self.b_jobs.values()],
            [*self.a_returns.values(), self.b_returns[fast]], [self.b_returns[slow]],
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


def kernel_for(profiles: Sequence[str]) -> str:
    """The Debian kernel the FPBL and the images need: the cloud one has the drivers of ``virtio`` nodes
    only; nodes that look like servers (Intel NICs, MegaRAID) need the generic one."""
    return "cloud" if set(profiles) <= {"virtio"} else "generic"


def play(
    workdir: Path,
    step: Callable[..., Any],
    check: Callable[[str, str, bool], None],
    keep: bool,
    memory_mb: int = 1024,
    profiles: Sequence[str] = ("virtio",),
    bmcs: Sequence[str] = ("ipmi",),
) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """Play the story on nodes of ``profiles`` with BMCs speaking ``bmcs`` (node i takes the i-th of
    each, round the list); returns the closing table's rows (what, fast, reboot, firmware boots) and,
    with ``keep``, the lines that tell how to reach each instance."""
    from rhaas.provisioning.fpbl import build_fpbl, export

    lab = Lab(workdir / "lab", say=lambda line: click.echo(click.style(f"    {line}", dim=True)))
    kernel = kernel_for(profiles)
    fpbl = step(
        f"build the FPBL from Debian packages, {kernel} kernel (cached by package versions)",
        lambda: build_fpbl(flavour=kernel),
    )
    export(fpbl, workdir / "fpbl")
    bookworm, trixie = step(
        f"build Debian 12 and Debian 13 whole-disk images (cloud-init, SSH, GRUB for BIOS and UEFI, "
        f"{kernel} kernel) from Debian packages (cached by package versions)",
        lambda: tuple(distro.build_debian(release, kernel=kernel) for release in ("bookworm", "trixie")),
    )
    nonce = f"RHAAS-NONCE-{secrets.token_hex(6)}"

    with _teardown(lab, keep) as stack:
        story = _Story(workdir, lab, stack, step, check)
        story.bring_up(memory_mb, profiles, bmcs)
        story.take_nodes()
        alice, bob = story.customers(bookworm, trixie)
        story.customer_a(alice, bookworm, nonce)
        story.customer_b(bob, trixie, nonce)
        level3 = story.level3()
        story.customer_reboot(bob)
        rows = story.table()
        reach = story.reach(level3) if keep else []
    return rows, reach


def exchanged(job: dict[str, Any]) -> tuple[int, int, int] | None:
    """(bytes from the server, bytes from peers, of those from the multicast group) of a deploy through
    the peer exchange, from its write-disk phase; None if it went without one."""
    for p in job["phases"]:
        if p["phase"] == "write-disk" and p["state"] == "done":
            found = re.search(r"peer exchange: (\d+) bytes from the server, (\d+) from peers", p["detail"])
            group = re.search(r"multicast: (\d+) of the peers' bytes from the group", p["detail"])
            if found:
                return int(found[1]), int(found[2]), int(group[1]) if group else 0
    return None


def _median(values: Any) -> float:
    return float(statistics.median(list(values)))


def _table(
    enrolled: dict[str, float],
    up: list[float],
    fast_back: list[float],
    slow_back: list[float],
    deploys: list[dict[str, Any]],
    fast_returns: list[dict[str, Any]],
    slow_returns: list[dict[str, Any]],
) -> list[tuple[str, str, str, str]]:
    """Rows of (what, fast path, reboot path, firmware boots fast/reboot); medians over the nodes. A phase
    lasts from the end of the one before it (`rhaas.provisioning.phases`, as in bench/provision.py)."""
    provision, network_boot = _median(up), _median(enrolled.values())
    rows = [
        ("provision: request -> SSH answers", f"{provision:.1f} s", f"{network_boot + provision:.1f} s *",
         "0 / 1"),
        ("return: request -> wiped, ready", f"{_median(fast_back):.1f} s", f"{_median(slow_back):.1f} s",
         "0 / 1"),
        ("power cycle -> network boot -> FPBL ready", "-", f"{network_boot:.1f} s", "- / 1"),
    ]  # fmt: skip
    phases: dict[str, list[float]] = {}
    for job in deploys:
        for phase, seconds in phase_durations(job).items():
            phases.setdefault(phase, []).append(seconds)
    for phase, values in phases.items():
        rows.append((f"  deploy phase {phase}", f"{_median(values):.1f} s", "", ""))
    fast: dict[str, list[float]] = {}
    slow: dict[str, list[float]] = {}
    for jobs, into in ((fast_returns, fast), (slow_returns, slow)):
        for job in jobs:
            for phase, seconds in phase_durations(job).items():
                into.setdefault(phase, []).append(seconds)
    for phase in dict.fromkeys([*fast, *slow]):
        f = f"{_median(fast[phase]):.1f} s" if phase in fast else "-"
        s = f"{_median(slow[phase]):.1f} s" if phase in slow else "-"
        rows.append((f"  return phase {phase}", f, s, ""))
    return rows
