"""``rhaas lab up`` / ``down`` leave the machine as they found it: processes, devices, namespaces, files;
``down`` is idempotent and cleans up after a crash (killed BMC daemon and QEMU, lost ``lab.json``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from lab_helpers import LAB_MARKS, RHAAS, lab_dir_fixture, lab_status, rhaas  # noqa: F401

from rhaas.client import Client
from rhaas.lab import procs
from rhaas.lab.site import lab_id

pytestmark = LAB_MARKS

#: Programs the lab runs (by /proc comm), and markers of its Python processes' command lines.
_COMMS = {"qemu-system-x86", "ovsdb-server", "ovs-vswitchd", "dnsmasq"}
_ARGS = ("rhaas.lab.daemon", "rhaas.admin", "http.server")


def snapshot() -> dict[str, set[str]]:
    """The lab-relevant state of the machine: processes, host devices, network namespaces."""
    processes = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        argv = procs.cmdline(int(entry.name)) or []
        if comm in _COMMS or any(a in arg for a in _ARGS for arg in argv):
            processes.add(f"{entry.name} {' '.join(argv)}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {
        "processes": processes,
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
        "netns": {line.split()[0] for line in namespaces.splitlines() if line.strip()},
    }


def assert_as_before(before: dict[str, set[str]], workdir: Path) -> None:
    """Nothing of this lab is left. Differences that cannot be ours (other work on a shared machine: they
    name neither our directory nor our lab id) are printed, not failed on."""
    after = snapshot()
    mine = (str(workdir), lab_id(workdir.absolute()), "ovs-netdev")
    for kind in ("processes", "links", "netns"):
        new, gone = after[kind] - before[kind], before[kind] - after[kind]
        if new or gone:
            print(f"{kind}: new {sorted(new)}, gone {sorted(gone)}")
        assert not [item for item in new if any(m in item for m in mine)], (kind, new)
    assert procs.ours_in(workdir) == []
    assert not workdir.exists()


def test_up_four_nodes_then_down_leaves_nothing(lab_dir: Path) -> None:
    before = snapshot()
    wd = ["--workdir", str(lab_dir)]
    rhaas("lab", "up", "--nodes", "4", *wd)
    record = json.loads((lab_dir / "lab.json").read_text())
    assert oct((lab_dir / "credentials.json").stat().st_mode & 0o777) == "0o600"
    status = lab_status(lab_dir)
    assert [n["node"] for n in status["nodes"]] == ["n1", "n2", "n3", "n4"]
    assert all(n["power"] == "off" and n["qemu_pid"] is None for n in status["nodes"])  # off: no QEMU
    assert status["server"]["running"] and status["switch"]["running"]
    assert all(procs.is_ours(n["bmc_pid"], lab_dir) for n in record["nodes"])
    assert record["netns"] in snapshot()["netns"]
    # Every port the site registered is empty on the switch itself.
    with Client(**_client_args(lab_dir)) as api:
        for node in record["nodes"]:
            assert api.port.state("labsw", node["tap"]) == {"native": None, "tagged": []}
    rhaas("lab", "headnode", "hn", *wd)
    assert any(ns.startswith(record["id"] + "h") for ns in snapshot()["netns"])

    rhaas("lab", "down", *wd)
    assert_as_before(before, lab_dir)
    rhaas("lab", "down", *wd)  # twice is fine
    assert_as_before(before, lab_dir)


def _client_args(workdir: Path) -> dict[str, str]:
    creds = json.loads((workdir / "credentials.json").read_text())
    endpoint = json.loads((workdir / "lab.json").read_text())["endpoint"]
    return {"endpoint": endpoint, "username": creds["username"], "password": creds["password"]}


def _env(workdir: Path) -> dict[str, str]:
    args = _client_args(workdir)
    return {"RHAAS_ENDPOINT": args["endpoint"], "RHAAS_USERNAME": args["username"],
            "RHAAS_PASSWORD": args["password"]}  # fmt: skip


def test_down_after_a_crash(lab_dir: Path) -> None:
    before = snapshot()
    wd = ["--workdir", str(lab_dir)]
    rhaas("lab", "up", "--nodes", "2", *wd)
    rhaas("lab", "headnode", "hn", "--boot", *wd)
    env = _env(lab_dir)
    for node in ("n1", "n2"):
        rhaas("node", "obm", "enable", node, env=env)
        rhaas("node", "power", "on", node, env=env)
    status = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
    record = json.loads((lab_dir / "lab.json").read_text())
    qemu = status["n1"]["qemu_pid"]
    assert qemu and status["n2"]["qemu_pid"]
    # The crash: n1's BMC daemon and QEMU are SIGKILLed, and lab.json is lost.
    os.kill(record["nodes"][0]["bmc_pid"], signal.SIGKILL)
    os.kill(qemu, signal.SIGKILL)
    (lab_dir / "lab.json").unlink()

    rhaas("lab", "down", *wd)
    assert_as_before(before, lab_dir)
    rhaas("lab", "down", *wd)
    assert_as_before(before, lab_dir)


@pytest.mark.parametrize("args", [["status"], ["headnode", "hn"], ["exec", "hn", "true"]])
def test_commands_without_a_lab_say_so(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run(
        [*RHAAS, "lab", *args, "--workdir", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert done.returncode == 1 and "no lab in" in done.stderr, done.stderr


def test_a_lab_of_mixed_servers_powers_each_node_on_through_its_bmc_with_its_hardware_and_post(
    lab_dir: Path,
) -> None:
    before = snapshot()
    wd = ["--workdir", str(lab_dir)]
    try:
        rhaas("lab", "up", "--nodes", "3", "--profile", "uefi-nvme", "--profile", "bios-megasas",
              "--bmc", "redfish", "--bmc", "ipmi", "--post", "2", "--cpu", "max", *wd)  # fmt: skip
        status = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
        assert [status[n]["profile"] for n in ("n1", "n2", "n3")] == [
            "uefi-nvme",
            "bios-megasas",
            "uefi-nvme",
        ]
        assert {n["post_seconds"] for n in status.values()} == {2.0}
        assert {n["cpu"] for n in status.values()} == {"max"}
        assert [status[n]["bmc_protocol"] for n in ("n1", "n2", "n3")] == ["redfish", "ipmi", "redfish"]
        env = _env(lab_dir)
        for node in ("n1", "n2"):  # through the base instance, its Redfish and IPMI drivers, the lab's BMCs
            rhaas("node", "obm", "enable", node, env=env)
            rhaas("node", "power", "on", node, env=env)
        nodes = {n["node"]: n for n in lab_status(lab_dir)["nodes"]}
        argv = {
            node: Path(f"/proc/{nodes[node]['qemu_pid']}/cmdline").read_bytes().decode().split("\0")
            for node in ("n1", "n2")
        }
        assert all("-S" in a for a in argv.values()), "held for their POST at power on"
        assert all(a[a.index("-cpu") + 1] == "max" for a in argv.values())
        assert any("OVMF_CODE" in a for a in argv["n1"]) and any(a.startswith("nvme,") for a in argv["n1"])
        assert any(a.startswith("e1000e,") for a in argv["n1"])
        assert not any("OVMF_CODE" in a for a in argv["n2"]) and "megasas-gen2,id=raid0" in argv["n2"]
        assert any(a.startswith("e1000,") for a in argv["n2"])
        assert nodes["n1"]["firmware_boots"] == nodes["n2"]["firmware_boots"] == 1, "each BMC counted it"
        assert nodes["n3"]["power"] == "off"
    finally:
        rhaas("lab", "down", *wd)
    assert_as_before(before, lab_dir)
