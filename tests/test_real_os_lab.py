"""Real distributions on the lab, end to end through the CLI and the API: a recursive instance over the
lab's base instance (real OVS, real IPMI) deploys Debian whole-disk images, as they come, on two QEMU nodes.

Customer A provisions Debian 12 on both nodes in one call with A's SSH key and no network configuration:
cloud-init asks for DHCP on the NIC A connected, and A's own machine on A's VLAN (a namespace, with its
DHCP server) answers and logs in as the image's default user. A leaves data all over the disks and gives
the nodes back: NMI, wipe, verified. Customer B provisions Debian 13 on the same nodes with B's key,
scans every byte of each disk for A's data and finds none; A's key opens nothing. No firmware boot
happens from the first ready to there. Then B reboots one node: it comes back running B's OS from its own
disk, and its return takes the reboot path, saying why, while the other node returns fast.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import LAB_MARKS, lab_dir_fixture, lab_status, parse_exports, rhaas  # noqa: F401

from rhaas.client import Client
from rhaas.lab import distro
from rhaas.lab.polling import wait_for
from rhaas.lab.reseller import start_reseller
from rhaas.lab.site import Lab

pytestmark = [*LAB_MARKS, pytest.mark.ipmi]

#: TCG on two cores: a Debian kernel, systemd and cloud-init's first boot, on two nodes at once.
OS_TIMEOUT = 1200
BOOT_TIMEOUT = 400
HEAD_IP, DESK_IP = "10.0.0.1/24", "10.0.1.1/24"
NODE_IPS = {"n1": "10.0.1.11", "n2": "10.0.1.12"}
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]  # fmt: skip
MIB = 1 << 20
#: On the node: wait (at most 10 min) until systemd has reached multi-user.target.
UNTIL_MULTI_USER = "timeout 600 sh -c 'until systemctl is-active -q multi-user.target; do sleep 1; done'"


@pytest.fixture(scope="module")
def images() -> tuple[distro.DistroImage, distro.DistroImage]:
    return distro.build_debian("bookworm"), distro.build_debian("trixie")


class Desk:
    """A customer's own machine on the lab: a headnode namespace with a DHCP server for the nodes."""

    def __init__(self, netns: str, workdir: Path, macs: dict[str, str]) -> None:
        self.netns = netns
        hosts = [f"--dhcp-host={mac},{NODE_IPS[n]}" for n, mac in macs.items()]
        self.dhcp = subprocess.Popen(
            ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--bind-interfaces", "--interface=eth0", "--dhcp-range=10.0.1.100,10.0.1.150,1h",
             f"--dhcp-leasefile={workdir / 'desk.leases'}", *hosts, f"--pid-file={workdir / 'desk.pid'}"],
        )  # fmt: skip

    def ssh(self, key: str, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.netns, "ssh", "-i", key, *SSH_OPTIONS, f"debian@{NODE_IPS[node]}"]
        return subprocess.run([*argv, command], capture_output=True, text=True, timeout=timeout, check=False)

    def logged_in(self, key: str, node: str) -> str | None:
        """The node's hostname over SSH with ``key``, or None while it does not answer."""
        try:
            done = self.ssh(key, node, "hostname")
        except subprocess.TimeoutExpired:
            return None
        return done.stdout.strip() or None

    def stop(self) -> None:
        self.dhcp.terminate()
        self.dhcp.wait(10)


def keypair(workdir: Path, name: str) -> tuple[str, Path]:
    key = workdir / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return str(key), workdir / f"{name}.pub"


def on_both(what: Callable[[str], Any]) -> dict[str, Any]:
    """``what(node)`` for n1 and n2 at once (the nodes' CPUs are the machine's: run them side by side)."""
    out: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, what(n))) for n in NODE_IPS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def move_desk(base: Client, reseller_project: str, network_vlan: str, away_from: str | None) -> str:
    """The base's operator puts the desk's port on the customer's VLAN (the base network backing the
    customer's network at the reseller); returns that network's name at the base."""
    net = next(n for n in base.project.networks_in(reseller_project)
               if base.network.show(n)["channels"][1] == f"vlan/{network_vlan}")  # fmt: skip
    if away_from is not None:
        base.wait_networking_action(base.node.detach_network("desk", "eth0", away_from)["status_id"])
    base.wait_networking_action(base.node.connect_network("desk", "eth0", net)["status_id"])
    return net


def ready(admin: Client, node: str) -> bool:
    return bool(admin.node.provisioning(node)["state"] == "ready")


def history(admin: Client, node: str) -> list[dict[str, Any]]:
    return list(admin.node.provisioning(node)["jobs"])


@pytest.fixture
def site(lab_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from rhaas.provisioning.fpbl import build_fpbl, export

    export(build_fpbl(), tmp_path / "fpbl")
    env = parse_exports(rhaas("lab", "up", "--nodes", "2", "--memory", "1536", "--workdir", str(lab_dir)))
    rhaas("lab", "headnode", "boot", "--ip", HEAD_IP, "--workdir", str(lab_dir))
    rhaas("lab", "headnode", "desk", "--ip", DESK_IP, "--workdir", str(lab_dir))
    reseller = start_reseller(Lab(lab_dir), "boot", tmp_path / "fpbl", name="reseller", return_timeout=90)
    status = lab_status(lab_dir)
    desk_ns = next(h["netns"] for h in status["headnodes"] if h["headnode"] == "desk")
    desk = Desk(desk_ns, tmp_path, {n["node"]: n["mac"] for n in status["nodes"]})
    base = Client(env["RHAAS_ENDPOINT"], env["RHAAS_USERNAME"], env["RHAAS_PASSWORD"])
    try:
        base.project.connect("reseller", "desk")
        yield {"base": base, "reseller": reseller, "desk": desk, "lab_dir": lab_dir, "tmp": tmp_path}
    finally:
        desk.stop()
        base.close()
        reseller.stop()


def firmware_boots(lab_dir: Path) -> dict[str, int]:
    return {n["node"]: n["firmware_boots"] for n in lab_status(lab_dir)["nodes"]}


@pytest.mark.timeout(3600)
def test_two_customers_run_two_debian_releases_on_two_nodes_of_a_recursive_instance(site, images) -> None:
    bookworm, trixie = images
    base, reseller, desk, lab_dir, tmp = (site[k] for k in ("base", "reseller", "desk", "lab_dir", "tmp"))
    admin = reseller.admin
    timings: dict[str, float] = {}
    as_user = {
        user: {"RHAAS_ENDPOINT": reseller.server.url, "RHAAS_USERNAME": user, "RHAAS_PASSWORD": f"{user}-pw"}
        for user in ("alice", "bob")
    }
    for project, user in (("a", "alice"), ("b", "bob")):
        admin.project.create(project)
        admin.user.create(user, f"{user}-pw", is_admin=False)
        admin.user.add_project(user, project)
    assert sorted(admin.pool.grow(2)) == ["n1", "n2"]
    for name in NODE_IPS:
        admin.node.enroll_fpbl(name)
    for name in NODE_IPS:
        wait_for(f"{name} ready", lambda n=name: ready(admin, n), BOOT_TIMEOUT)
    boots = firmware_boots(lab_dir)

    a_key, a_pub = keypair(tmp, "alice")
    b_key, b_pub = keypair(tmp, "bob")
    started = time.monotonic()
    rhaas(
        "image", "register", "bookworm", "--project", "a", "--disk", str(bookworm.disk), env=as_user["alice"]
    )
    timings["register bookworm (2 GiB virtual)"] = time.monotonic() - started
    rhaas("image", "register", "trixie", "--project", "b", "--disk", str(trixie.disk), env=as_user["bob"])

    # Customer A: its network on both nodes, its desk on that VLAN, Debian 12 on both in one call.
    alice = Client(reseller.server.url, "alice", "alice-pw")
    alice.network.create("anet", "a", "a", "")
    a_net = move_desk(base, "reseller", alice.network.show("anet")["channels"][1].split("/")[1], None)
    for name in NODE_IPS:
        rhaas("project", "node", "add", "a", name, env=as_user["alice"])
        rhaas("node", "network", "connect", name, "eth0", "anet", env=as_user["alice"])
    started = time.monotonic()
    rhaas("node", "provision", "n1", "n2", "--image", "bookworm", "--ssh-key", str(a_pub), "--wait",
          env=as_user["alice"], timeout=OS_TIMEOUT)  # fmt: skip
    timings["A: provision both -> kexec"] = time.monotonic() - started
    up = on_both(lambda n: wait_for(f"SSH to {n}", lambda: desk.logged_in(a_key, n), OS_TIMEOUT))
    timings["A: provision both -> SSH answers"] = time.monotonic() - started
    assert up == {"n1": "n1", "n2": "n2"}, "cloud-init named each host after its node"
    for name in NODE_IPS:
        assert bookworm.kernel_release in desk.ssh(a_key, name, "uname -r").stdout
        # SSH answers before systemd has finished its way to multi-user.target: wait for it there.
        target = desk.ssh(a_key, name, f"{UNTIL_MULTI_USER}; systemctl is-active multi-user.target", 660)
        assert target.stdout.strip() == "active", f"{name}: multi-user.target {target.stdout} {target.stderr}"

    # A's data all over each disk: files, a 64 MiB file of it, and raw writes past the image's end.
    nonce = f"RHAAS-NONCE-{os.urandom(6).hex()}"
    plant = (
        f"set -e; echo {nonce} | sudo tee /root/a-data /var/tmp/a-data >/dev/null; "
        f"yes {nonce} | head -c {64 * MIB} | sudo tee /var/tmp/a-bulk >/dev/null; "
        f"for mib in 2100 2600 3100 3600; do echo {nonce} | sudo dd of=/dev/vda bs=1M seek=$mib "
        "conv=notrunc,fsync status=none; done; sync"
    )
    for name in NODE_IPS:
        wrote = desk.ssh(a_key, name, plant, timeout=300)
        assert wrote.returncode == 0, wrote.stderr

    # A gives both back: NMI, wipe, verified; ready again with no firmware boot.
    started = time.monotonic()
    for name in NODE_IPS:
        rhaas("node", "network", "detach", name, "eth0", "anet", env=as_user["alice"])
        rhaas("project", "node", "remove", "a", name, env=as_user["alice"])
    for name in NODE_IPS:
        wait_for(f"{name} ready again", lambda n=name: ready(admin, n), BOOT_TIMEOUT)
        ret = history(admin, name)[-1]
        assert (ret["kind"], ret["status"], ret["path"]) == ("return", "DONE", "fast"), ret
    timings["A: detach both -> wiped and ready"] = time.monotonic() - started

    # Customer B: Debian 13 on the same nodes with B's key; B's desk is the same machine, on B's VLAN now.
    bob = Client(reseller.server.url, "bob", "bob-pw")
    bob.network.create("bnet", "b", "b", "")
    move_desk(base, "reseller", bob.network.show("bnet")["channels"][1].split("/")[1], a_net)
    for name in NODE_IPS:
        rhaas("project", "node", "add", "b", name, env=as_user["bob"])
        rhaas("node", "network", "connect", name, "eth0", "bnet", env=as_user["bob"])
    started = time.monotonic()
    rhaas("node", "provision", "n1", "n2", "--image", "trixie", "--ssh-key", str(b_pub), "--wait",
          env=as_user["bob"], timeout=OS_TIMEOUT)  # fmt: skip
    on_both(lambda n: wait_for(f"SSH to {n}", lambda: desk.logged_in(b_key, n), OS_TIMEOUT))
    timings["B: provision both -> SSH answers"] = time.monotonic() - started
    scans = on_both(
        lambda n: desk.ssh(b_key, n, f"sudo -n grep -a -z -c {nonce} /dev/vda; echo exit=$?", 900)
    )
    for name in NODE_IPS:
        assert trixie.kernel_release in desk.ssh(b_key, name, "uname -r").stdout
        assert scans[name].stdout.split() == ["0", "exit=1"], (
            f"{name}: {scans[name].stdout} {scans[name].stderr}"
        )
        assert desk.ssh(a_key, name, "true").returncode == 255, "A's key opens nothing of B's"
    assert firmware_boots(lab_dir) == boots, "no firmware boot from the first ready to B's OS"

    # B reboots n1 from inside: its OS comes back from its own disk (one firmware boot, B's doing).
    desk.ssh(b_key, "n1", "sudo systemctl reboot", timeout=30)
    wait_for("n1's reboot", lambda: firmware_boots(lab_dir)["n1"] == boots["n1"] + 1, 120)
    started = time.monotonic()
    assert wait_for("B's OS again on n1", lambda: desk.logged_in(b_key, "n1"), OS_TIMEOUT) == "n1"
    timings["B: n1 reboot -> SSH answers"] = time.monotonic() - started
    assert trixie.kernel_release in desk.ssh(b_key, "n1", "uname -r").stdout

    # B gives both back: n2 returns fast; n1's crash kernel went with the reboot, so its return takes
    # the reboot path, and its history says why.
    for name in NODE_IPS:
        rhaas("node", "network", "detach", name, "eth0", "bnet", env=as_user["bob"])
        rhaas("project", "node", "remove", "b", name, env=as_user["bob"])
    for name in NODE_IPS:
        wait_for(f"{name} ready again", lambda n=name: ready(admin, n), BOOT_TIMEOUT)
    fast, slow = history(admin, "n2")[-1], history(admin, "n1")[-1]
    assert (fast["status"], fast["path"]) == ("DONE", "fast"), fast
    assert (slow["status"], slow["path"]) == ("DONE", "reboot"), slow
    why = [p["detail"] for p in slow["phases"] if p["phase"] == "fallback"]
    assert why and "reboot" in why[0], slow["phases"]
    after = firmware_boots(lab_dir)
    assert after["n2"] == boots["n2"], "n2: still no firmware boot"
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")
