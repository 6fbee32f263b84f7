"""Fast provisioning end to end on a real QEMU node: the FPBL agent against a real rhaas server.

One node (QEMU under TCG, 1.5 GB) boots the FPBL and checks in with the server; the node's BMC is a
virtual BMC speaking real IPMI. Everything the customers do goes through the rhaas client library:
customer A uploads an OS image (kernel, initrd, a disk image holding A's data) and provisions the node,
which comes up in A's OS by kexec; A gives the node back (detach_node), the server sends the NMI through
the IPMI driver, the return FPBL wipes the disk and the node is ready again (in the return FPBL, which hands
the next customer all the memory);
customer B provisions it with B's OS, whose console shows that A's data is gone from the disk. The firmware
boot count does not change from the first "ready" to the end.

The QEMU node uses user-mode networking: it reaches the server on the host's loopback as 10.0.2.2. The
lab tests run the same lifecycle over the lab's switch (see docs/fast-provisioning.md).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisioning_helpers import (
    BMC_PASSWORD,
    BOOT_TIMEOUT,
    MEMORY_MB,
    QEMU_PROVISIONING_MARKS,
    boot_fpbl,
    provisioning_config,
    state,
    two_customers,
    upload_image,
    wait_job,
)
from sqlalchemy.orm import Session

from rhaas.client import Client
from rhaas.core import provisioning
from rhaas.db.session import make_engine
from rhaas.lab import images
from rhaas.lab.fastnode import BMC_USER, HOST_IP, NODE_IP, FastNode, agent_url
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import QemuNode
from rhaas.lab.servers import Server

pytestmark = QEMU_PROVISIONING_MARKS


@pytest.fixture
def return_timeout() -> int:
    return 300


@pytest.fixture
def site(tmp_path_factory, return_timeout, fpbl) -> Iterator[dict]:
    """A real server with fast provisioning on, one QEMU node with a virtual BMC; all stopped at the end."""
    workdir = tmp_path_factory.mktemp("pq")  # short: QMP socket paths must fit in a unix socket
    server = Server(f"sqlite:///{workdir / 'rhaas.sqlite3'}", workdir / "server.log", "--config",
                    str(workdir / "rhaas.toml"))  # fmt: skip
    provisioning_config(workdir / "rhaas.toml", server, return_timeout=return_timeout, deploy_timeout=600)
    with FastNode("pq", workdir, BMC_PASSWORD, fpbl.kernel, fpbl.initrd, memory_mb=MEMORY_MB) as fast:
        try:
            server.start()
            yield {"server": server, "fast": fast, "node": fast.node, "workdir": workdir}
        finally:
            server.stop()


def disk_bytes(node: QemuNode, workdir: Path) -> bytes:
    """The disk's whole logical content (not the qcow2 file's bytes); readable while the node runs."""
    raw = workdir / "readback.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-q", "-O", "raw", str(node.disk), str(raw)], check=True)
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def nonce_offsets(image_bytes: int, disk_bytes: int) -> list[int]:
    """Where A's OS plants nonces: the part of the disk the next image does not cover, just past A's
    image, in the middle, in the last MiB, at its very end, and at random offsets between."""
    mib = 1 << 20
    fixed = [image_bytes, image_bytes + 4097, disk_bytes // 2, disk_bytes - mib + 100, disk_bytes - 64]
    spread = [image_bytes + mib + secrets.randbelow(disk_bytes - image_bytes - 3 * mib) for _ in range(3)]
    return fixed + spread


def test_deploy_return_and_reassign_without_firmware(site, fpbl):
    server, fast, node, workdir = site["server"], site["fast"], site["node"], site["workdir"]
    timings: dict[str, float] = {}

    with Client(server.url, "admin", "adminpw") as admin:
        a_os, b_os, disk, nonce = two_customers(admin, workdir)
        boots = boot_fpbl(admin, site["fast"], fpbl, timings)
        facts = admin.node.provisioning("pq")["facts"]
        assert facts["memory_kb"] > 0.9 * MEMORY_MB * 1024

        with Client(server.url, "alice", "alice-pw") as alice, Client(server.url, "bob", "bob-pw") as bob:
            planted = nonce_offsets(disk.stat().st_size, 64 << 20)
            plant = f"rhaas.plant={','.join(map(str, planted))} rhaas.scan=1"
            upload_image(alice, "a-os", "a", a_os, disk, plant)
            upload_image(bob, "b-os", "b", b_os, None, "rhaas.scan=1")

            # Customer A: provision, and the node runs A's OS with A's data on its disk.
            alice.project.connect("a", "pq")
            offset = node.console_offset()
            started = time.monotonic()
            job = alice.node.provision("pq", "a-os")
            shown = wait_job(alice, job, BOOT_TIMEOUT)
            node.wait_for_console(a_os.up_regex, BOOT_TIMEOUT, offset=offset)
            timings["A: provision -> OS up"] = time.monotonic() - started
            assert shown["path"] == "fast"
            assert f"RHAAS-DISK customer-data {nonce}" in node.console_text(offset)
            console = node.console_text(offset)
            assert f"RHAAS-PLANTED {len(planted)}" in console
            assert f"RHAAS-SCAN found={len(planted)}" in console, "B's scan below can find them"
            assert disk_bytes(node, workdir).count(b"RHAAS-NONCE a-os") == len(planted), "the host sees them"
            a_kb = a_os.memory_kb(node.console_text(offset))
            assert state(admin, "pq") == "deployed"

            # A gives it back: NMI over IPMI, wipe, ready (in the return FPBL: no second boot).
            started = time.monotonic()
            alice.project.detach("a", "pq")
            assert "pq" not in bob.node.list("free")
            wait_for("ready again", lambda: state(admin, "pq") == "ready", BOOT_TIMEOUT)
            timings["A: detach -> wiped and ready"] = time.monotonic() - started
            history = admin.node.provisioning("pq")
            ret = history["jobs"][-1]
            assert (ret["kind"], ret["status"], ret["path"]) == ("return", "DONE", "fast"), ret
            phases = {(p["phase"], p["state"]) for p in ret["phases"]}
            assert {
                ("nmi", "done"),
                ("wipe", "done"),
                ("verify-wipe", "done"),
                ("restore-memory", "done"),
            } <= phases
            assert history["facts"]["mode"] == "return", "the node idles in the return FPBL"
            assert fast.nmis() >= 1

            # Customer B: the same node, B's OS; A's data is not on the disk any more.
            assert "pq" in bob.node.list("free")
            bob.project.connect("b", "pq")
            offset = node.console_offset()
            started = time.monotonic()
            env = {
                **os.environ,
                "RHAAS_ENDPOINT": server.url,
                "RHAAS_USERNAME": "bob",
                "RHAAS_PASSWORD": "bob-pw",
            }
            cli = [
                sys.executable,
                "-m",
                "rhaas.cli.main",
                "node",
                "provision",
                "pq",
                "--image",
                "b-os",
                "--wait",
            ]
            done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
            assert done.returncode == 0, done.stderr
            # The group's summary (stdout) and the fleet's progress while it waited (stderr).
            assert re.search(r"^pq\s+DONE\s+fast\s", done.stdout, re.MULTILINE), done.stdout + done.stderr
            assert "1/1 done, 0 in flight, 0 failed" in done.stderr, done.stderr
            node.wait_for_console(b_os.up_regex, BOOT_TIMEOUT, offset=offset)
            timings["B: provision -> OS up"] = time.monotonic() - started
            assert "RHAAS-DISK" not in node.console_text(offset), "B's OS must not find A's data"
            # The default wipe left none of A's nonces: not for B's OS scanning the whole disk, not for
            # the host reading its whole logical content.
            assert "RHAAS-SCAN found=0" in node.console_text(offset)
            assert b"RHAAS-NONCE" not in disk_bytes(node, workdir)
            b_kb = b_os.memory_kb(node.console_text(offset))
            assert abs(b_kb - a_kb) < 0.02 * a_kb, f"B's OS has the memory A's had: {a_kb} kB, {b_kb} kB"
            assert fast.boots() == boots, "no firmware boot from the first ready to the end"

    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")
    node.stop()
    assert nonce.encode() not in disk_bytes(node, workdir)


def network_boot_next(site: dict, fpbl) -> None:
    """The node's next firmware boot gets the FPBL with a fresh agent secret, as a network boot's iPXE
    script gives it (the enrolment's secret died at the first deploy's hand-out)."""
    engine = make_engine(f"sqlite:///{site['workdir'] / 'rhaas.sqlite3'}")
    try:
        with Session(engine) as db:
            agent = agent_url(site["server"].agent_port)
            script = provisioning.boot_script(db, site["node"].mac, "", agent, "", site["server"].pin)
            db.commit()
    finally:
        engine.dispose()
    words = " ".join(
        w
        for w in script.split()
        if w.startswith(("rhaas.agent=", "rhaas.node=", "rhaas.secret=", "rhaas.pin="))
    )
    site["fast"].append_file.write_text(f"{fpbl.cmdline} {words} rhaas.ip={NODE_IP} rhaas.gw={HOST_IP}\n")


@pytest.mark.parametrize("return_timeout", [20])
def test_a_customer_who_defuses_the_nmi_return_still_gets_the_node_back(site, fpbl, return_timeout):
    server, node = site["server"], site["node"]
    evil = images.build_test_os("evil-os", "RHAAS-TESTOS evil-os")
    timings: dict[str, float] = {}
    with Client(server.url, "admin", "adminpw") as admin:
        admin.project.create("e")
        boots = boot_fpbl(admin, site["fast"], fpbl, timings)
        digests = {role: admin.image.upload(path)["sha256"] for role, path in (("kernel", evil.kernel),
                   ("initrd", evil.initrd))}  # fmt: skip
        admin.image.register("evil-os", project="e", cmdline=f"{evil.cmdline} rhaas.disarm=1", **digests)
        admin.project.connect("e", "pq")
        offset = node.console_offset()
        wait_job(admin, admin.node.provision("pq", "evil-os"), BOOT_TIMEOUT)
        node.wait_for_console(evil.up_regex, BOOT_TIMEOUT, offset=offset)
        assert "DISARMED unknown_nmi_panic=0" in node.console_text(offset)

        started = time.monotonic()
        admin.project.detach("e", "pq")

        def nmi_sent() -> bool:
            return any(p["phase"] == "nmi" for p in admin.node.provisioning("pq")["jobs"][-1]["phases"])

        # The fallback's firmware boot must bring the FPBL up with a fresh secret, as a network boot's iPXE
        # script does. A direct kernel boot reads its command line only at power on (a reset reuses it), so
        # once the NMI went unanswered the node is powered off: the fallback powers it up (one boot).
        wait_for("the NMI", nmi_sent, 30)
        network_boot_next(site, fpbl)
        site["fast"].ipmitool("chassis", "power", "off")
        wait_for(
            "ready by the reboot path", lambda: state(admin, "pq") == "ready", return_timeout + BOOT_TIMEOUT
        )
        timings["detach -> ready (NMI ignored, then power cycle)"] = time.monotonic() - started
        ret = admin.node.provisioning("pq")["jobs"][-1]
        assert (ret["kind"], ret["status"], ret["path"]) == ("return", "DONE", "reboot"), ret
        phases = [(p["phase"], p["state"]) for p in ret["phases"]]
        assert (
            ("nmi", "done") in phases
            and ("fallback", "start") in phases
            and ("power-cycle", "done") in phases
        )
        assert ("verify-wipe", "done") in phases
        assert site["fast"].boots() == boots + 1, "the fallback boots the firmware once"
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")


@pytest.fixture
def stacked(tmp_path_factory, fpbl) -> Iterator[dict]:
    """A base instance (the node's BMC is a virtual BMC on IPMI) and a recursive instance over it with fast
    provisioning on; the node boots the recursive instance's FPBL. All stopped at the end."""
    workdir = tmp_path_factory.mktemp("pr")
    base = Server(f"sqlite:///{workdir / 'base.sqlite3'}", workdir / "base.log")
    env = {"RHAAS_UPSTREAM_PASSWORD": "reseller-pw"}
    upstream = ["--upstream", base.url, "--upstream-project", "reseller", "--upstream-user", "reseller"]
    level2 = Server(f"sqlite:///{workdir / 'l2.sqlite3'}", workdir / "l2.log", *upstream, "--config",
                    str(workdir / "l2.toml"), env=env)  # fmt: skip
    provisioning_config(workdir / "l2.toml", level2)
    with FastNode("pr", workdir, BMC_PASSWORD, fpbl.kernel, fpbl.initrd, memory_mb=MEMORY_MB) as fast:
        node = fast.node
        try:
            base.start()
            with Client(base.url, "admin", "adminpw") as admin:
                admin.project.create("reseller")
                admin.user.create("reseller", "reseller-pw")
                admin.user.add_project("reseller", "reseller")
                admin.node.register("pr", "ipmi", "127.0.0.1", BMC_USER, BMC_PASSWORD, port=fast.port)
                admin.node.add_nic("pr", "eth0", node.mac)
            level2.start()
            yield {"base": base, "level2": level2, "fast": fast, "node": node}
        finally:
            level2.stop()
            base.stop()


def test_a_recursive_instance_provisions_and_returns_through_its_upstream(stacked, fpbl):
    """Fast provisioning needs nothing from the upstream but HIL's API and the NMI route."""
    base, level2, node, fast = stacked["base"], stacked["level2"], stacked["node"], stacked["fast"]
    a_os = images.build_test_os("a-os", "RHAAS-TESTOS a-os")
    timings: dict[str, float] = {}
    with Client(level2.url, "admin", "adminpw") as admin, Client(base.url, "admin", "adminpw") as base_admin:
        assert admin.pool.grow(1) == ["pr"]
        assert base_admin.node.show("pr")["project"] == "reseller"
        enrolled = admin.node.enroll_fpbl("pr")["cmdline"]
        fast.boot_fpbl(f"{fpbl.cmdline} {enrolled}")
        wait_for("ready", lambda: state(admin, "pr") == "ready", BOOT_TIMEOUT)
        boots = fast.boots()
        admin.project.create("a")
        upload_image(admin, "a-os", "a", a_os, None)
        admin.project.connect("a", "pr")
        offset = node.console_offset()
        wait_job(admin, admin.node.provision("pr", "a-os"), BOOT_TIMEOUT)
        node.wait_for_console(a_os.up_regex, BOOT_TIMEOUT, offset=offset)

        started, nmis = time.monotonic(), fast.nmis()
        admin.project.detach("a", "pr")
        wait_for("ready again", lambda: state(admin, "pr") == "ready", BOOT_TIMEOUT)
        timings["level 2: detach -> wiped and ready"] = time.monotonic() - started
        ret = admin.node.provisioning("pr")["jobs"][-1]
        assert (ret["status"], ret["path"]) == ("DONE", "fast"), ret
        nmi = next(p for p in ret["phases"] if p["phase"] == "nmi")
        assert nmi["state"] == "done" and "upstream" in nmi["detail"], nmi
        assert fast.nmis() == nmis + 1, "the NMI went down through the base's API to the node's BMC"
        assert fast.boots() == boots
        # The node never left the reseller's project at the base.
        assert base_admin.node.show("pr")["project"] == "reseller"
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")
