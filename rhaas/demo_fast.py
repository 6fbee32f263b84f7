"""``rhaas demo --fast``: the fast-provisioning chapter of the story, on real virtual machines (root).

A base instance holds two QEMU nodes whose BMCs speak IPMI; a reseller's recursive instance takes them,
runs fast provisioning on them, and sells them: customer A gets both with A's OS (live progress per node
and phase), gives them back and they are wiped without a reboot; customer B gets them with B's OS and
finds none of A's data. It ends with a table of per-phase times and firmware boot counts.

The nodes sit on QEMU's user-mode network (`rhaas.lab.fastnode`), so the chapter needs no switch; the
mock chapter (`rhaas.demo`) shows the networks and the third level.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rhaas.cli.provisioning import wait_jobs
from rhaas.client import Client
from rhaas.lab import images
from rhaas.lab.fastnode import BMC_USER, FastNode, agent_url
from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server

BOOT_TIMEOUT = 300.0
NODES = ("fast1", "fast2")


def _phase_times(job: dict[str, Any]) -> dict[str, float]:
    """Seconds from each phase's start to its end, from the agent's own timestamps."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for phase in job["phases"]:
        if phase["state"] == "start":
            started.setdefault(phase["phase"], phase["at"])
        elif phase["state"] == "done" and phase["phase"] in started:
            took[phase["phase"]] = phase["at"] - started[phase["phase"]]
    return took


def play(
    workdir: Path,
    step: Callable[[str, Callable[[], Any]], Any],
    check: Callable[[str, str, bool], None],
    memory_mb: int = 1024,
) -> list[tuple[str, float, int | None]]:
    """Play the chapter; returns (what, seconds, firmware boots per node or None) for the closing table."""
    from rhaas.provisioning.fpbl import build_fpbl

    fpbl = step("build the FPBL and two customer OS images from Debian packages (cached)", build_fpbl)
    a_os = images.build_test_os("demo-a", "RHAAS-TESTOS customer-a-os")
    b_os = images.build_test_os("demo-b", "RHAAS-TESTOS customer-b-os")
    disk = workdir / "a-data.img"
    nonce = secrets.token_hex(6)
    line = f"RHAAS-DISK customer-a-data {nonce}\n".encode()
    disk.write_bytes(line + bytes(16 * 2**20 - len(line)))
    rows: list[tuple[str, float, int | None]] = []
    with ExitStack() as stack:
        bmc_password = secrets.token_urlsafe(12)
        fast = {
            n: stack.enter_context(FastNode(n, workdir, bmc_password, fpbl.kernel, fpbl.initrd, memory_mb))
            for n in NODES
        }
        base = Server(f"sqlite:///{workdir / 'fast-base.sqlite3'}", workdir / "fast-base.log").start()
        stack.callback(base.stop)
        base_admin = stack.enter_context(Client(base.url, "admin", "adminpw"))
        base_admin.project.create("reseller")
        bot_password = secrets.token_urlsafe(12)
        base_admin.user.create("reseller-bot", bot_password)
        base_admin.user.add_project("reseller-bot", "reseller")
        for name, node in fast.items():
            base_admin.node.register(name, "ipmi", "127.0.0.1", BMC_USER, bmc_password, port=node.port)
            base_admin.node.add_nic(name, "eth0", node.node.mac)

        config = workdir / "fast-reseller.toml"
        up = ["--upstream", base.url, "--upstream-project", "reseller", "--upstream-user", "reseller-bot"]
        reseller = Server(
            f"sqlite:///{workdir / 'fast-reseller.sqlite3'}",
            workdir / "fast-reseller.log",
            *up,
            "--config",
            str(config),
            env={"RHAAS_UPSTREAM_PASSWORD": bot_password},
        )
        config.write_text(
            f'[provisioning]\nenabled = true\nagent_url = "{agent_url(reseller.port)}"\n'
            "tick_seconds = 0.2\nagent_poll_seconds = 0.3\n"
        )
        step("start the reseller's recursive instance with fast provisioning", reseller.start)
        stack.callback(reseller.stop)
        admin = stack.enter_context(Client(reseller.url, "admin", "adminpw"))
        pool = step("the reseller takes the two nodes from the base", lambda: admin.pool.grow(2))
        check(
            "the base shows them in the reseller's project",
            ", ".join(pool),
            sorted(base_admin.project.nodes_in("reseller")) == sorted(NODES),
        )

        def wait_ready(what: str) -> None:
            for name in NODES:
                wait_for(
                    f"{name} {what}",
                    lambda n=name: admin.node.provisioning(n)["state"] == "ready",
                    BOOT_TIMEOUT,
                    every=0.3,
                )

        def give_back(c: Client, project: str) -> None:
            for name in NODES:
                c.project.detach(project, name)
            wait_ready("wiped and ready")

        def boot_all() -> None:
            for name in NODES:
                enrolled = admin.node.enroll_fpbl(name)["cmdline"]
                fast[name].boot_fpbl(f"{fpbl.cmdline} {enrolled}")
            wait_ready("ready")

        started = time.monotonic()
        step("power on both nodes into the FPBL; their agents check in", boot_all)
        rows.append(("power on -> FPBL ready (once, when a node arrives)", time.monotonic() - started, 1))
        boots = {n: fast[n].boots() for n in NODES}

        for project in ("customer-a", "customer-b"):
            admin.project.create(project)
        users = {}
        for user, project in (("alice", "customer-a"), ("bob", "customer-b")):
            password = secrets.token_urlsafe(12)
            admin.user.create(user, password)
            admin.user.add_project(user, project)
            users[user] = stack.enter_context(Client(reseller.url, user, password))
        alice, bob = users["alice"], users["bob"]

        def register(c: Client, name: str, project: str, os_: images.TestOS, with_disk: Path | None) -> None:
            files = {"kernel": os_.kernel, "initrd": os_.initrd, **({"disk": with_disk} if with_disk else {})}
            digests = {role: c.image.upload(path)["sha256"] for role, path in files.items()}
            c.image.register(name, project=project, cmdline=os_.cmdline, **digests)

        register(alice, "a-os", "customer-a", a_os, disk)
        register(bob, "b-os", "customer-b", b_os, None)

        def provision(c: Client, project: str, image: str, os_: images.TestOS) -> dict[str, Any]:
            offsets = {n: fast[n].node.console_offset() for n in NODES}
            for name in NODES:
                c.project.connect(project, name)
            jobs = {name: c.node.provision(name, image) for name in NODES}
            final = wait_jobs(c, jobs, BOOT_TIMEOUT, as_json=False)
            for name in NODES:
                fast[name].node.wait_for_console(os_.up_regex, BOOT_TIMEOUT, offset=offsets[name])
            return {"final": final, "offsets": offsets}

        started = time.monotonic()
        a = step(
            "customer A provisions both nodes with A's OS and data",
            lambda: provision(alice, "customer-a", "a-os", a_os),
        )
        a_took = time.monotonic() - started
        consoles = {n: fast[n].node.console_text(a["offsets"][n]) for n in NODES}
        evidence = f"console lines 'RHAAS-DISK customer-a-data {nonce}'"
        check(
            "A's OS runs on both, A's data on their disks",
            evidence,
            all(f"customer-a-data {nonce}" in text for text in consoles.values()),
        )

        started = time.monotonic()
        step("customer A gives both back: NMI, wipe, verified, ready", lambda: give_back(alice, "customer-a"))
        back_took = time.monotonic() - started
        returns = {n: admin.node.provisioning(n)["jobs"][-1] for n in NODES}
        verified = {
            n: j["path"] == "fast"
            and j["status"] == "DONE"
            and any(p["phase"] == "verify-wipe" and p["state"] == "done" for p in j["phases"])
            for n, j in returns.items()
        }
        summary = ", ".join(f"{n}: {j['path']} path, {j['status']}" for n, j in returns.items())
        check("the returns took the fast path and verified the wipe", summary, all(verified.values()))

        started = time.monotonic()
        b = step(
            "customer B provisions the same nodes with B's OS",
            lambda: provision(bob, "customer-b", "b-os", b_os),
        )
        b_took = time.monotonic() - started
        consoles = {n: fast[n].node.console_text(b["offsets"][n]) for n in NODES}
        check(
            "B's OS finds none of A's data on the disks",
            "no RHAAS-DISK line on B's consoles",
            all("RHAAS-DISK" not in text for text in consoles.values()),
        )
        after = {n: fast[n].boots() for n in NODES}
        evidence = f"boot counts before {boots}, after {after}"
        check("no firmware boot from the first 'ready' to the end", evidence, after == boots)

        # The reboot path, side by side on the same nodes: the reseller restarts with return_path=reboot.
        reseller.stop()
        config.write_text(config.read_text() + 'return_path = "reboot"\n')
        reseller.start()

        started = time.monotonic()
        step("customer B gives them back by the reboot path (power cycle) to compare",
             lambda: give_back(bob, "customer-b"))  # fmt: skip
        reboot_took = time.monotonic() - started
        rebooted = {n: fast[n].boots() - after[n] for n in NODES}
        check(
            "the reboot path booted each node's firmware once", f"{rebooted}", set(rebooted.values()) == {1}
        )

        rows.append(("customer A: provision 2 nodes -> OS up (kexec)", a_took, 0))
        rows.append(("customer A: return 2 nodes -> wiped, ready (NMI)", back_took, 0))
        rows.append(("customer B: provision 2 nodes -> OS up (kexec)", b_took, 0))
        rows.append(("customer B: return 2 nodes -> wiped, ready (reboot path)", reboot_took, 1))
        phases: dict[str, list[float]] = {}
        for job in [*a["final"].values(), *b["final"].values(), *returns.values()]:
            for phase, seconds in _phase_times(job).items():
                phases.setdefault(f"  {job['kind']} phase {phase} (median of 2 nodes)", []).append(seconds)
        for phase, values in sorted(phases.items()):
            rows.append((phase, sorted(values)[len(values) // 2], None))
    return rows
