"""Fast provisioning on the lab: a recursive instance over the lab's base instance (real OVS, real IPMI).

The recursive instance's boot service runs in a headnode's namespace on the provisioning network; the
nodes network-boot the FPBL through iPXE (DHCP from dnsmasq, scripts and the FPBL from the recursive
instance's API through the relay), their NICs move from the provisioning network to the customer's
network when the OS is up and back at the return, and no firmware boot happens after the first ready.
Everything goes through the API and the client; the switch's state is read back from OVS.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lab_helpers import LAB_MARKS, lab_dir_fixture, lab_status, parse_exports, rhaas  # noqa: F401
from provisioning_helpers import two_customers, upload_image, wait_job

from rhaas.client import Client
from rhaas.lab.polling import wait_for
from rhaas.lab.reseller import start_reseller
from rhaas.lab.site import Lab

pytestmark = [*LAB_MARKS, pytest.mark.ipmi]

BOOT_TIMEOUT = 300  # TCG on a busy 2-core machine: iPXE, the FPBL over HTTP, two nodes at once
HEAD_IP = "10.0.0.1/24"


def _state(c: Client, node: str) -> str:
    return str(c.node.provisioning(node)["state"])


def _console(path: str, offset: int = 0) -> str:
    return Path(path).read_bytes()[offset:].decode(errors="replace")


def _wait_ready(admin: Client, name: str, console: str) -> None:
    """Wait until ``name`` is ready; on timeout, fail with its last job's phases and its console's tail."""
    try:
        wait_for(f"{name} ready again", lambda: _state(admin, name) == "ready", BOOT_TIMEOUT)
    except TimeoutError as e:
        job = admin.node.provisioning(name)["jobs"][-1]
        tail = _console(console)[-3000:]
        raise AssertionError(f"{e}; last job {job}; console ends:\n{tail}") from e


#: The lab's hardware: (``lab up`` options, FPBL flavour, test OS flavour). ``servers``: a UEFI node with an
#: e1000e NIC and an NVMe disk behind a Redfish BMC, and a BIOS node with an e1000 NIC and a MegaRAID disk
#: behind an IPMI BMC, running the generic FPBL (coldplug) and customer OSes on Debian's generic kernel.
HARDWARE = {
    "virtio": ((), "cloud", "cloud"),
    "servers": (
        ("--profile", "uefi-nvme", "--profile", "bios-megasas", "--bmc", "redfish", "--bmc", "ipmi"),
        "generic",
        "generic",
    ),
}


@pytest.mark.parametrize("hardware", sorted(HARDWARE))
def test_network_boot_deploy_return_and_reassign_on_the_lab(
    lab_dir: Path, tmp_path: Path, hardware: str
) -> None:
    from rhaas.provisioning.fpbl import build_fpbl, export

    lab_options, fpbl_flavour, os_flavour = HARDWARE[hardware]
    export(build_fpbl(flavour=fpbl_flavour), tmp_path / "fpbl")  # what [provisioning] fpbl_dir serves
    env = parse_exports(
        rhaas("lab", "up", "--nodes", "2", "--memory", "1536", *lab_options, "--workdir", str(lab_dir))
    )
    rhaas("lab", "headnode", "boot", "--ip", HEAD_IP, "--workdir", str(lab_dir))
    status = lab_status(lab_dir)
    nodes = {n["node"]: n for n in status["nodes"]}
    head = status["headnodes"][0]
    base = Client(env["RHAAS_ENDPOINT"], env["RHAAS_USERNAME"], env["RHAAS_PASSWORD"])
    # The reseller: a recursive instance on the base's project 'reseller', its provisioning network (so
    # one VLAN of the base) also on the headnode's port, its boot service in the headnode's namespace.
    reseller = start_reseller(Lab(lab_dir), "boot", tmp_path / "fpbl", name="reseller")
    try:
        admin = reseller.admin
        prov_vlan = reseller.provisioning_vlan
        l2 = reseller.server
        assert base.port.state("labsw", head["switch_port"]) == {"native": prov_vlan, "tagged": []}
        assert sorted(admin.pool.grow(2)) == ["n1", "n2"]
        started = time.monotonic()
        for name in nodes:
            admin.node.enroll_fpbl(name)
        for name in nodes:
            wait_for(f"{name} ready", lambda n=name: _state(admin, n) == "ready", BOOT_TIMEOUT)
        boot_seconds = time.monotonic() - started
        for node in nodes.values():  # the NIC is on the provisioning network, read back from OVS
            assert base.port.state("labsw", node["switch_port"]) == {"native": prov_vlan, "tagged": []}
            assert "RHAAS-FPBL init" in _console(node["console"])
        boots = {n["node"]: n["firmware_boots"] for n in lab_status(lab_dir)["nodes"]}
        assert all(b >= 1 for b in boots.values()), boots

        a_os, b_os, disk, nonce = two_customers(admin, tmp_path, os_flavour)
        alice, bob = Client(l2.url, "alice", "alice-pw"), Client(l2.url, "bob", "bob-pw")
        upload_image(alice, "a-os", "a", a_os, disk)
        upload_image(bob, "b-os", "b", b_os, None)

        # Customer A: both nodes, A's network connected before the OS is up (the switch keeps the FPBL's
        # network until then), A's OS and data.
        alice.network.create("anet", "a", "a", "")
        a_vlan = alice.network.show("anet")["channels"][1].split("/")[1]
        offsets = {n: len(Path(node["console"]).read_bytes()) for n, node in nodes.items()}
        for name in nodes:
            alice.project.connect("a", name)
            alice.wait_networking_action(alice.node.connect_network(name, "eth0", "anet")["status_id"])
            assert base.port.state("labsw", nodes[name]["switch_port"])["native"] == prov_vlan
        started = time.monotonic()
        jobs = {name: alice.node.provision(name, "a-os") for name in nodes}
        for job in jobs.values():
            assert wait_job(alice, job, BOOT_TIMEOUT)["path"] == "fast"
        up = f"{a_os.marker} UP"
        for name, node in nodes.items():
            wait_for(f"A's OS on {name}", lambda n=node, o=offsets[name]: up in _console(n["console"], o),
                     BOOT_TIMEOUT)  # fmt: skip
            assert f"RHAAS-DISK customer-data {nonce}" in _console(node["console"], offsets[name])
            wait_for(f"{name} on A's network", lambda n=node: base.port.state("labsw", n["switch_port"])
                     == {"native": a_vlan, "tagged": []}, 60)  # fmt: skip
        a_seconds = time.monotonic() - started

        # A gives them back: the NIC goes back to the provisioning network, NMI, wipe, ready.
        started = time.monotonic()
        for name in nodes:
            alice.wait_networking_action(alice.node.detach_network(name, "eth0", "anet")["status_id"])
            alice.project.detach("a", name)
        for name in nodes:
            _wait_ready(admin, name, nodes[name]["console"])
            ret = admin.node.provisioning(name)["jobs"][-1]
            assert (ret["kind"], ret["status"], ret["path"]) == ("return", "DONE", "fast"), ret
            assert ("verify-wipe", "done") in {(p["phase"], p["state"]) for p in ret["phases"]}
            assert base.port.state("labsw", nodes[name]["switch_port"]) == {"native": prov_vlan, "tagged": []}
        return_seconds = time.monotonic() - started

        # Customer B: the same nodes, B's OS; A's data is gone from the disk (B's OS prints its start).
        offsets = {n: len(Path(node["console"]).read_bytes()) for n, node in nodes.items()}
        for name in nodes:
            bob.project.connect("b", name)
        for job in [bob.node.provision(name, "b-os") for name in nodes]:
            wait_job(bob, job, BOOT_TIMEOUT)
        up = f"{b_os.marker} UP"
        for name, node in nodes.items():
            wait_for(f"B's OS on {name}", lambda n=node, o=offsets[name]: up in _console(n["console"], o),
                     BOOT_TIMEOUT)  # fmt: skip
            assert nonce not in _console(node["console"], offsets[name])
        after = {n["node"]: n["firmware_boots"] for n in lab_status(lab_dir)["nodes"]}
        assert after == boots, f"firmware boots changed after the first ready: {boots} -> {after}"
        print(
            f"\nlab fast provisioning ({hardware}): network boot of 2 nodes to ready {boot_seconds:.1f} s; "
            f"A's OS on both "
            f"{a_seconds:.1f} s; return of both {return_seconds:.1f} s; firmware boots {boots} -> {after}"
        )
    finally:
        reseller.stop()
