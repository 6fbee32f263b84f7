"""The lab's acceptance test: real virtual bare metal driven only through the base instance's API and CLI.

Two QEMU nodes and a headnode on the lab's Open vSwitch; the nodes network-boot the test OS from the
headnode (iPXE → DHCP → HTTP) once the API has put all three on one network and powered the nodes on
through their IPMI BMCs. The nodes ping each other; moving one to another network through the API
breaks that. ipmitool, an independent IPMI client, agrees with the API on the power state.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from lab_helpers import LAB_MARKS, lab_dir_fixture, lab_status, parse_exports, rhaas, wait_console  # noqa: F401

from rhaas.client import Client

pytestmark = [*LAB_MARKS, pytest.mark.ipmi]

BOOT_TIMEOUT = 150  # firmware + DHCP + HTTP + kernel under TCG, two guests on a busy 2-core machine


def ipmitool_power(port: int, password: str) -> str:
    cmd = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", "admin", "-P", password]
    done = subprocess.run([*cmd, "chassis", "power", "status"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Chassis Power is (on|off)", done.stdout)
    assert found, done.stdout
    return found.group(1)


def test_two_nodes_boot_from_a_headnode_and_are_isolated_through_the_api(lab_dir: Path) -> None:
    started = time.monotonic()
    wd = ["--workdir", str(lab_dir)]
    env = parse_exports(rhaas("lab", "up", "--nodes", "2", *wd))
    again = rhaas("lab", "up", "--nodes", "2", *wd)  # idempotent: reports what runs
    assert parse_exports(again) == env
    rhaas("lab", "headnode", "hn", "--ip", "10.0.0.1/24", "--boot", *wd)
    status = lab_status(lab_dir)
    nodes = {n["node"]: n for n in status["nodes"]}
    assert set(nodes) == {"n1", "n2"} and all(n["power"] == "off" for n in nodes.values())
    bmc_password = json.loads(Path(status["credentials"]).read_text())["bmc_password"]
    ips = {"n1": "10.0.0.11", "n2": "10.0.0.12"}
    other = {"n1": "n2", "n2": "n1"}

    with Client(env["RHAAS_ENDPOINT"], env["RHAAS_USERNAME"], env["RHAAS_PASSWORD"]) as api:
        api.project.create("p1")
        api.network.create("net1", "p1", "p1", "")
        api.network.create("net2", "p1", "p1", "")
        for node in ("hn", "n1", "n2"):
            api.project.connect("p1", node)
            api.wait_networking_action(api.node.connect_network(node, "eth0", "net1")["status_id"])
        for node in ("n1", "n2"):
            api.node.enable_obm(node)
            api.node.set_bootdev(node, "pxe")
        for node in ("n1", "n2"):
            rhaas("node", "power", "on", node, env=env)
        powered = time.monotonic()

        for node in ("n1", "n2"):
            console = Path(nodes[node]["console"])
            up = wait_console(console, r"RHAAS-TESTOS \S+ UP ip=(\S+)", BOOT_TIMEOUT)
            assert up.group(1) == f"{ips[node]}/24"
            wait_console(console, rf"RHAAS-PING {re.escape(ips[other[node]])} OK", 60)
        booted = time.monotonic()

        # Move n2 to net2: the two nodes no longer reach each other.
        api.wait_networking_action(api.node.detach_network("n2", "eth0", "net1")["status_id"])
        api.wait_networking_action(api.node.connect_network("n2", "eth0", "net2")["status_id"])
        assert (
            api.port.state("labsw", nodes["n1"]["switch_port"])["native"]
            != (api.port.state("labsw", nodes["n2"]["switch_port"])["native"])
        )
        offset = Path(nodes["n1"]["console"]).stat().st_size
        wait_console(Path(nodes["n1"]["console"]), r"RHAAS-PING 10\.0\.0\.12 FAIL", 30, offset)

        for node in ("n1", "n2"):
            api_says = rhaas("node", "power", "status", node, env=env).strip()
            assert api_says == "on" == ipmitool_power(int(nodes[node]["bmc"].split(":")[1]), bmc_password)
        for node in ("n1", "n2"):
            rhaas("node", "power", "off", node, env=env)
            assert rhaas("node", "power", "status", node, env=env).strip() == "off"
            assert ipmitool_power(int(nodes[node]["bmc"].split(":")[1]), bmc_password) == "off"

    after = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
    assert all(n["power"] == "off" and n["qemu_pid"] is None for n in after.values())
    assert all(n["firmware_boots"] == 1 for n in after.values()), after
    rhaas("lab", "down", *wd)
    assert not lab_dir.exists()
    print(
        f"\nlab e2e: power on -> both nodes pinging {booted - powered:.1f} s; "
        f"whole test {time.monotonic() - started:.1f} s"
    )


def test_a_uefi_nvme_node_behind_redfish_and_a_bios_megasas_node_behind_ipmi_network_boot(
    lab_dir: Path,
) -> None:
    """Server hardware in the lab: OVMF with the e1000e's EFI iPXE ROM, and SeaBIOS with the e1000's; each
    node network-boots the test OS (the generic flavour: Debian's generic kernel and the servers' drivers)
    from the headnode through the base instance's Redfish and IPMI drivers, sees its disk, and reaches the
    other node over the switch."""
    wd = ["--workdir", str(lab_dir)]
    hardware = ["--profile", "uefi-nvme", "--profile", "bios-megasas", "--bmc", "redfish", "--bmc", "ipmi"]
    env = parse_exports(rhaas("lab", "up", "--nodes", "2", *hardware, *wd))
    rhaas("lab", "headnode", "hn", "--ip", "10.0.0.1/24", "--boot", *wd)
    nodes = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
    ips, disks = {"n1": "10.0.0.11", "n2": "10.0.0.12"}, {"n1": "/dev/nvme0n1", "n2": "/dev/sda"}
    try:
        with Client(env["RHAAS_ENDPOINT"], env["RHAAS_USERNAME"], env["RHAAS_PASSWORD"]) as api:
            api.project.create("p1")
            api.network.create("net1", "p1", "p1", "")
            for node in ("hn", "n1", "n2"):
                api.project.connect("p1", node)
                api.wait_networking_action(api.node.connect_network(node, "eth0", "net1")["status_id"])
            for node in ("n1", "n2"):
                api.node.enable_obm(node)
                api.node.set_bootdev(node, "pxe")
                rhaas("node", "power", "on", node, env=env)
            for node, other in (("n1", "n2"), ("n2", "n1")):
                console = Path(nodes[node]["console"])
                up = wait_console(
                    console, r"RHAAS-TESTOS \S+ UP ip=(\S+) kernel=(\S+) .*disk=(\S+)", BOOT_TIMEOUT * 2
                )
                assert up.group(1) == f"{ips[node]}/24", up.group(0)
                assert not up.group(2).endswith("cloud-amd64") and up.group(3) == disks[node], up.group(0)
                wait_console(console, rf"RHAAS-PING {re.escape(ips[other])} OK", 60)
        after = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
        assert [after[n]["firmware_boots"] for n in ("n1", "n2")] == [1, 1], after
    finally:
        rhaas("lab", "down", *wd)
