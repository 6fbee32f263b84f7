"""Fast provisioning failures on a real QEMU node: each ends in a clear error, and a return recovers the node.

One node (QEMU under TCG, 1.5 GB, a 64 MiB disk) boots the FPBL once for the whole module and checks in with
a real rhaas server; its BMC is a virtual BMC speaking real IPMI. A customer (carol, through the client
library) then plays the failures one after the other on it, each followed by a return (she detaches the
node) that must bring it back to ``ready`` with its wipe verified:

1. a corrupted image: the disk image's blob is damaged in the server's store after the upload (same length,
   other bytes). The agent streams it onto the disk, finds the SHA-256 mismatch, reports ``verify`` in
   error with both digests, and scrubs the disk's metadata areas (its first and last MiB: nothing boots
   from it); the node never jumps into the customer's kernel.
2. a disk image larger than the disk: refused before a byte is written (``does not fit``); the disk is
   read back from the host after the error and after the return, and holds nothing of the image.
3. the agent killed in the middle of the disk image's download. The kill is the kernel's own: the FPBL is
   booted with ``sysrq_always_enabled``, and the test presses Alt+SysRq+I on the node's PS/2 keyboard
   (QMP ``send-key``), which sends SIGKILL to every process but init, as a BMC's virtual keyboard would on
   real hardware; nothing in the agent or the server helps. The FPBL's init restarts the agent, whose fresh
   check-in ends the deploy in ERROR, naming the phase it interrupted.

After each failure the node is in ``error``, still in the FPBL, its agent polling. On the return that
follows the agent takes the wipe work (the ticker's NMI, if it goes out first, is ignored by the FPBL's
kernel), and the node is ``ready`` again without a firmware boot. The wipe policy is the default,
``metadata``: a return zeroes and verifies the first and last MiB of the disk, so the middle of an image
streamed before its failure (cases 1 and 3) stays on the disk, under a scrubbed partition table, until
the next deploy overwrites it. The disk is read back with ``qemu-img convert -U`` while the node runs,
after the guest's fsync.

4. an image that cannot be fetched: its disk image's bytes are gone from the server's store after it was
   registered (an operator's ``rm``, a lost volume), so the agent's download gets a 404 whose message the
   job's error repeats; nothing was written but the scrub.

An image URL that is unreachable when it is registered needs no node: see
``test_image_register_from_an_unreachable_url_registers_nothing`` in tests/test_cli_e2e.py. An agent that
cannot reach an image's host at all is `tests/test_fpbl.py`'s
``test_an_image_that_cannot_be_fetched_ends_the_deploy_in_a_clear_error``.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    upload_image,
)

from rhaas.client import Client
from rhaas.lab import images
from rhaas.lab.fastnode import FastNode
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import QemuNode
from rhaas.lab.servers import Server

pytestmark = QEMU_PROVISIONING_MARKS

MIB = 1 << 20
DISK_MIB = 64
NODE = "pf"
PROJECT = "f"
#: Alt+SysRq+I: the kernel sends SIGKILL to every process except init.
SYSRQ_KILL_ALL = [{"type": "qcode", "data": key} for key in ("alt", "sysrq", "i")]


@dataclass
class Site:
    server: Server
    fast: FastNode
    workdir: Path
    store: Path
    os_: images.TestOS
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def node(self) -> QemuNode:
        return self.fast.node

    def client(self, user: str, password: str) -> Client:
        return Client(self.server.url, user, password)


@pytest.fixture(scope="module")
def site(tmp_path_factory, fpbl) -> Iterator[Site]:  # noqa: F811 - fpbl is the imported fixture
    """A real server with fast provisioning on, one QEMU node with a virtual BMC, booted into the FPBL and
    ready; customer carol in project f holds the node. All stopped at the end, however the tests end."""
    workdir = tmp_path_factory.mktemp("pf")  # short: QMP socket paths must fit in a unix socket
    store = workdir / "images"
    server = Server(f"sqlite:///{workdir / 'rhaas.sqlite3'}", workdir / "server.log", "--config",
                    str(workdir / "rhaas.toml"), "--image-store", str(store))  # fmt: skip
    provisioning_config(workdir / "rhaas.toml", server, return_timeout=300, deploy_timeout=600)
    os_ = images.build_test_os("f-os", "RHAAS-TESTOS f-os")
    with FastNode(NODE, workdir, BMC_PASSWORD, fpbl.kernel, fpbl.initrd, memory_mb=MEMORY_MB,
                  disk_size=f"{DISK_MIB}M") as fast:  # fmt: skip
        here = Site(server, fast, workdir, store, os_)
        try:
            server.start()
            with Client(server.url, "admin", "adminpw") as admin:
                admin.project.create(PROJECT)
                admin.user.create("carol", "carol-pw", is_admin=False)
                admin.user.add_project("carol", PROJECT)
                boot_fpbl(admin, fast, fpbl, here.timings, extra_cmdline="sysrq_always_enabled")
            yield here
        finally:
            server.stop()
            for what, seconds in here.timings.items():
                print(f"{what}: {seconds:.1f} s")


def marked_image(path: Path, tag: str, size_mib: int, fill: bytes = b"\0") -> Path:
    """A raw disk image whose every MiB starts with ``RHAAS-FAIL <tag> <n>``, the rest ``fill``."""
    with open(path, "wb") as f:
        for n in range(size_mib):
            head = marker(tag, n)
            f.write(head + fill * (MIB - len(head)))
    return path


def marker(tag: str, n: int) -> bytes:
    return f"RHAAS-FAIL {tag} {n:04d}\n".encode()


def live_disk(site: Site) -> bytes:
    """The node's disk as raw bytes, read while it runs (``-U``: QEMU holds the image's lock)."""
    raw = site.workdir / "readback.raw"
    cmd = ["qemu-img", "convert", "-U", "-q", "-O", "raw", str(site.node.disk), str(raw)]
    subprocess.run(cmd, check=True)
    try:
        data = raw.read_bytes()
    finally:
        raw.unlink()
    assert len(data) == DISK_MIB * MIB
    return data


def ended(c: Client, job: str, timeout: float) -> dict:
    """The job once it has ended, DONE or ERROR."""

    def done() -> dict | None:
        shown = c.node.show_provision_job(job)
        return shown if shown["status"] in ("DONE", "ERROR") else None

    return wait_for(f"job {job} to end", done, timeout)


def phases(job: dict) -> list[tuple[str, str]]:
    return [(p["phase"], p["state"]) for p in job["phases"]]


def provision(site: Site, admin: Client, carol: Client, image: str) -> tuple[str, int]:
    """Connect the node to carol's project and provision it with ``image``; the job and console offset."""
    assert state(admin, NODE) == "ready", "the previous case did not give the node back"
    carol.project.connect(PROJECT, NODE)
    offset = site.node.console_offset()
    return carol.node.provision(NODE, image), offset


def assert_no_kexec(site: Site, job: dict, offset: int) -> None:
    """The node stayed in the FPBL: no kexec phase, no customer kernel's up line on the console."""
    assert not [p for p in phases(job) if p[0] == "kexec"], job
    assert "RHAAS-TESTOS f-os" not in site.node.console_text(offset)


def give_back(site: Site, admin: Client, carol: Client, what: str) -> dict:
    """Carol detaches the node; wait until it is ready again, the return DONE with its wipe verified."""
    started, boots, nmis = time.monotonic(), site.fast.boots(), site.fast.nmis()
    carol.project.detach(PROJECT, NODE)
    wait_for(f"ready after {what}", lambda: state(admin, NODE) in ("ready", "error"), BOOT_TIMEOUT)
    history = admin.node.provisioning(NODE)
    site.timings[f"{what}: detach -> wiped and ready"] = time.monotonic() - started
    ret = history["jobs"][-1]
    assert history["state"] == "ready", ret
    assert (ret["kind"], ret["status"]) == ("return", "DONE"), ret
    assert {("verify-wipe", "done"), ("ready", "done")} <= set(phases(ret)), ret
    # The node never left the FPBL, whose agent polls: it may take the wipe before the ticker sends the
    # NMI (which the FPBL's kernel ignores), so there is at most one NMI; there is never a firmware boot.
    assert site.fast.nmis() in (nmis, nmis + 1) and site.fast.boots() == boots, "no firmware boot"
    return ret


def assert_scrubbed(disk: bytes) -> None:
    """The first and last MiB of the disk (partition tables, GPT backup, file system signatures) are zero."""
    assert disk[:MIB] == bytes(MIB) and disk[-MIB:] == bytes(MIB)


def test_a_corrupted_image_is_refused_scrubbed_and_the_node_returns(site: Site):
    image = marked_image(site.workdir / "corrupt.img", "corrupt", 8, fill=b"\xa5")
    with site.client("admin", "adminpw") as admin, site.client("carol", "carol-pw") as carol:
        upload_image(carol, "corrupt-os", PROJECT, site.os_, image)
        digest = carol.image.show("corrupt-os")["disk"]["sha256"]
        # Damage the stored blob: same length, other bytes (bit rot, a bad disk, a tampered store).
        blob = site.store / "sha256" / digest[:2] / digest
        data = bytearray(blob.read_bytes())
        data[4 * MIB : 4 * MIB + 16] = bytes(b ^ 0xFF for b in data[4 * MIB : 4 * MIB + 16])
        blob.write_bytes(data)
        assert blob.stat().st_size == image.stat().st_size
        assert hashlib.sha256(data).hexdigest() != digest

        job, offset = provision(site, admin, carol, "corrupt-os")
        shown = ended(carol, job, BOOT_TIMEOUT)
        assert shown["status"] == "ERROR", shown
        actual = hashlib.sha256(data).hexdigest()
        assert shown["error"] == f"verify: disk: sha256 {actual} is not the expected {digest}; refused"
        assert ("download-disk", "done") in phases(shown) and ("verify", "error") in phases(shown)
        assert state(admin, NODE) == "error"
        # The node says so too, and its agent goes on polling: it stays reachable.
        site.node.wait_for_console(
            rf"RHAAS-AGENT report job={job} verify error disk: sha256", 30, offset=offset
        )
        assert_no_kexec(site, shown, offset)
        # The image was streamed onto the disk before its hash was known: its metadata areas are scrubbed.
        disk = live_disk(site)
        assert_scrubbed(disk)
        assert marker("corrupt", 0) not in disk

        give_back(site, admin, carol, "corrupted image")
        assert_scrubbed(live_disk(site))


def test_a_disk_image_larger_than_the_disk_is_refused_before_writing(site: Site):
    image = marked_image(site.workdir / "big.img", "big", DISK_MIB + 16)
    with site.client("admin", "adminpw") as admin, site.client("carol", "carol-pw") as carol:
        upload_image(carol, "big-os", PROJECT, site.os_, image)
        job, offset = provision(site, admin, carol, "big-os")
        shown = ended(carol, job, BOOT_TIMEOUT)
        assert shown["status"] == "ERROR", shown
        size = image.stat().st_size
        assert shown["error"] == (
            f"download-disk: the image ({size} bytes) does not fit /dev/vda ({DISK_MIB * MIB} bytes)"
        ), shown
        assert ("download-disk", "error") in phases(shown)
        assert state(admin, NODE) == "error"
        assert_no_kexec(site, shown, offset)
        assert b"RHAAS-FAIL big" not in live_disk(site), "not a byte of the image was written"

        give_back(site, admin, carol, "image too large")
        assert b"RHAAS-FAIL big" not in live_disk(site)


def test_an_agent_killed_mid_download_ends_the_deploy_in_error_and_the_node_returns(site: Site):
    image = marked_image(site.workdir / "killed.img", "killed", DISK_MIB - 4, fill=b"\x5a")
    with site.client("admin", "adminpw") as admin, site.client("carol", "carol-pw") as carol:
        upload_image(carol, "killed-os", PROJECT, site.os_, image)
        job, offset = provision(site, admin, carol, "killed-os")

        def downloading() -> dict | None:
            shown = carol.node.show_provision_job(job)
            progress = [p for p in shown["phases"] if p["phase"] == "download-disk" and "progress" in p]
            return progress[-1]["progress"] if progress else None

        progress = wait_for("the disk image's download", downloading, BOOT_TIMEOUT, every=0.05)
        site.node.qmp("send-key", {"keys": SYSRQ_KILL_ALL})
        killed_at = time.monotonic()
        # SIGKILL: the shell says 128 + 9.
        kill = r"sysrq: Kill All Tasks[\s\S]*RHAAS-FPBL agent exited with 137"
        site.node.wait_for_console(kill, 60, offset=offset)
        shown = ended(carol, job, BOOT_TIMEOUT)
        site.timings["agent killed -> deploy in ERROR"] = time.monotonic() - killed_at
        assert progress["done"] < progress["total"] == image.stat().st_size
        assert shown["status"] == "ERROR", shown
        assert shown["error"] == (
            "The FPBL checked in again during the deploy (its agent restarted or the node rebooted during"
            " download-disk): the customer OS did not start."
        ), shown
        assert ("download-disk", "done") not in phases(shown), "killed before the download ended"
        assert state(admin, NODE) == "error"
        assert_no_kexec(site, shown, offset)
        # The restarted agent checked in and polls again.
        site.node.wait_for_console(r"RHAAS-AGENT checkin mode=ready memory_kb=\d+ ok", 30, offset=offset)

        give_back(site, admin, carol, "agent killed")
        disk = live_disk(site)
        assert_scrubbed(disk)
        assert marker("killed", 0) not in disk


def test_an_image_whose_bytes_left_the_store_ends_in_a_clear_error_and_the_node_returns(site: Site):
    image = marked_image(site.workdir / "gone.img", "gone", 4)
    with site.client("admin", "adminpw") as admin, site.client("carol", "carol-pw") as carol:
        upload_image(carol, "gone-os", PROJECT, site.os_, image)
        digest = carol.image.show("gone-os")["disk"]["sha256"]
        (site.store / "sha256" / digest[:2] / digest).unlink()
        job, offset = provision(site, admin, carol, "gone-os")
        shown = ended(carol, job, BOOT_TIMEOUT)
        assert shown["status"] == "ERROR", shown
        assert shown["error"].startswith("download-disk: GET "), shown
        assert shown["error"].endswith(
            f": HTTP 404: Blob {digest} is recorded but its bytes are missing from the image store; upload it"
            " again (PUT /v0/blob/<sha256>)."
        ), shown
        assert ("download-disk", "error") in phases(shown)
        assert state(admin, NODE) == "error"
        assert_no_kexec(site, shown, offset)
        assert b"RHAAS-FAIL gone" not in live_disk(site)

        give_back(site, admin, carol, "image bytes gone")
        assert_scrubbed(live_disk(site))
