"""Real distributions through fast provisioning: the lab's Debian whole-disk images, registered as they
come, deployed by the real agent on a QEMU node (extents written, the image's own GRUB default entry
booted by kexec, cloud-init seeded with the customer's SSH key), logged into over SSH, taken back by the
NMI into the return FPBL and wiped; then the next customer's other distribution on the same node, which
finds nothing of the first customer's, with no firmware boot from the first ready to the end."""

from __future__ import annotations

import os
import shutil
import subprocess
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
    wait_job,
)

from rhaas.client import Client
from rhaas.lab import distro
from rhaas.lab.fastnode import FastNode
from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server, free_port

pytestmark = [
    *QEMU_PROVISIONING_MARKS,
    pytest.mark.skipif(not shutil.which("mmdebstrap"), reason="needs mmdebstrap (scripts/bootstrap)"),
]
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]  # fmt: skip
#: TCG: a Debian kernel, systemd and cloud-init's first boot take minutes here.
OS_TIMEOUT = 900


@pytest.fixture(scope="module")
def debian() -> distro.DistroImage:
    return distro.build_debian("bookworm")


@pytest.fixture(scope="module")
def trixie() -> distro.DistroImage:
    return distro.build_debian("trixie")


@pytest.fixture
def site(tmp_path_factory, fpbl) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("ro")
    server = Server(f"sqlite:///{workdir / 'rhaas.sqlite3'}", workdir / "server.log", "--config",
                    str(workdir / "rhaas.toml"))  # fmt: skip
    provisioning_config(workdir / "rhaas.toml", server, return_timeout=600, deploy_timeout=1200)
    ssh_port = free_port()
    with FastNode("ro", workdir, BMC_PASSWORD, fpbl.kernel, fpbl.initrd, memory_mb=MEMORY_MB,
                  disk_size="3G", ssh_port=ssh_port) as fast:  # fmt: skip
        try:
            server.start()
            yield {"server": server, "fast": fast, "workdir": workdir, "ssh_port": ssh_port}
        finally:
            server.stop()


def ssh(site: dict, key: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", key, *SSH_OPTIONS, "-p", str(site["ssh_port"]), "debian@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def keypair(workdir: Path, name: str) -> tuple[str, str]:
    """A new SSH key pair: (private key file, public key line)."""
    key = workdir / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return str(key), (workdir / f"{name}.pub").read_text()


def disk_holds(fast: FastNode, workdir: Path, needle: str) -> int:
    """How many times ``needle`` is in the node's disk's whole logical content (read here, on the host)."""
    raw = workdir / "readback.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-q", "-O", "raw", str(fast.node.disk), str(raw)], check=True
    )
    try:
        done = subprocess.run(["grep", "-a", "-z", "-c", needle, str(raw)], capture_output=True, text=True)
        return int(done.stdout.strip() or 0)
    finally:
        raw.unlink()


@pytest.mark.timeout(2700)  # TCG: ~0.8 GB written through the agent, and two Debian first boots
def test_two_customers_run_two_debian_releases_on_one_node_with_no_firmware_boot(site, fpbl, debian, trixie):
    server, fast, workdir = site["server"], site["fast"], site["workdir"]
    a_key, a_pub = keypair(workdir, "alice")
    b_key, b_pub = keypair(workdir, "bob")
    nonce = f"RHAAS-NONCE-{os.urandom(6).hex()}"
    timings: dict[str, float] = {}
    with Client(server.url, "admin", "adminpw") as admin:
        for project, user in (("a", "alice"), ("b", "bob")):
            admin.project.create(project)
            admin.user.create(user, f"{user}-pw", is_admin=False)
            admin.user.add_project(user, project)
        boots = boot_fpbl(admin, fast, fpbl, timings)
        with Client(server.url, "alice", "alice-pw") as alice, Client(server.url, "bob", "bob-pw") as bob:
            started = time.monotonic()
            alice.image.register_disk("bookworm", debian.disk, project="a")
            timings["A: register bookworm"] = time.monotonic() - started
            bob.image.register_disk("trixie", trixie.disk, project="b")

            # Customer A: Debian 12, logged into with A's key; A leaves data on the disk.
            alice.project.connect("a", "ro")
            started = time.monotonic()
            job = alice.node.provision("ro", "bookworm", ssh_keys=[a_pub])
            shown = wait_job(alice, job, OS_TIMEOUT)
            timings["A: provision -> kexec"] = time.monotonic() - started
            done = {p["phase"]: p["detail"] for p in shown["phases"] if p["state"] == "done"}
            assert "grub entry" in done["find-boot"] and "holes zeroed" in done["write-disk"], done
            up = wait_for("SSH", lambda: ssh(site, a_key, "hostname").stdout.strip() or None, OS_TIMEOUT)
            timings["A: provision -> SSH answers"] = time.monotonic() - started
            assert up == "ro", "cloud-init named the host after the node"
            assert debian.kernel_release in ssh(site, a_key, "uname -r").stdout
            wrote = ssh(site, a_key, f"echo {nonce} | sudo tee /var/tmp/a-data /root/a-data >/dev/null; sync")
            assert wrote.returncode == 0, wrote.stderr
            assert disk_holds(fast, workdir, nonce) >= 1, "the host sees A's data on the disk"

            # A gives it back: NMI into the return FPBL, every block wiped and sampled back.
            started = time.monotonic()
            alice.project.detach("a", "ro")
            wait_for("ready again", lambda: state(admin, "ro") == "ready", BOOT_TIMEOUT)
            timings["A: detach -> wiped and ready"] = time.monotonic() - started
            ret = admin.node.provisioning("ro")["jobs"][-1]
            assert (ret["kind"], ret["status"], ret["path"]) == ("return", "DONE", "fast"), ret
            assert disk_holds(fast, workdir, nonce) == 0

            # Customer B: Debian 13 on the same node, B's key; A's key and data are gone.
            bob.project.connect("b", "ro")
            started = time.monotonic()
            job = bob.node.provision("ro", "trixie", ssh_keys=[b_pub])
            shown = wait_job(bob, job, OS_TIMEOUT)
            done = {p["phase"]: p["detail"] for p in shown["phases"] if p["state"] == "done"}
            assert "holes skipped" in done["write-disk"], "the verified wipe left zeroes: holes not written"
            up = wait_for("SSH", lambda: ssh(site, b_key, "hostname").stdout.strip() or None, OS_TIMEOUT)
            timings["B: provision -> SSH answers"] = time.monotonic() - started
            assert trixie.kernel_release in ssh(site, b_key, "uname -r").stdout
            assert ssh(site, a_key, "true").returncode == 255, "A's key does not open B's node"
            # -z: records end at NUL bytes (a disk's zeroes), not at newlines, so grep's memory stays small.
            scan = ssh(site, b_key, f"sudo -n grep -a -z -c {nonce} /dev/vda; echo exit=$?", timeout=600)
            seen = f"B's OS scanning its disk: {scan.stdout} {scan.stderr}"
            assert scan.stdout.split() == ["0", "exit=1"], seen
            assert fast.boots() == boots, "no firmware boot from the first ready to the end"
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")
