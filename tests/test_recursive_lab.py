"""Recursion on the lab: a three-level stack whose base runs real OVS and real IPMI (virtual BMCs)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from lab_helpers import LAB_MARKS, lab_dir_fixture, lab_status, parse_exports, rhaas  # noqa: F401

from rhaas.client import Client
from rhaas.lab.servers import Server

pytestmark = [*LAB_MARKS, pytest.mark.ipmi]


def ipmitool_power(bmc: str, password: str) -> str:
    host, port = bmc.split(":")
    cmd = ["ipmitool", "-I", "lanplus", "-H", host, "-p", port, "-U", "admin", "-P", password]
    done = subprocess.run([*cmd, "chassis", "power", "status"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Chassis Power is (on|off)", done.stdout)
    assert found, done.stdout
    return found.group(1)


def test_three_levels_on_the_lab(lab_dir: Path, tmp_path: Path) -> None:
    env = parse_exports(rhaas("lab", "up", "--nodes", "2", "--workdir", str(lab_dir)))
    status = lab_status(lab_dir)
    nodes = {n["node"]: n for n in status["nodes"]}
    bmc_password = json.loads(Path(status["credentials"]).read_text())["bmc_password"]
    base = Client(env["RHAAS_ENDPOINT"], env["RHAAS_USERNAME"], env["RHAAS_PASSWORD"])
    base.project.create("reseller2")
    base.user.create("l2bot", "l2bot-pw")
    base.user.add_project("l2bot", "reseller2")

    servers: list[Server] = []
    try:
        mid = Server(
            f"sqlite:///{tmp_path / 'l2.sqlite3'}", tmp_path / "l2.log",
            "--upstream", env["RHAAS_ENDPOINT"],
            "--upstream-project", "reseller2", "--upstream-user", "l2bot",
            env={"RHAAS_UPSTREAM_PASSWORD": "l2bot-pw"},
        ).start()  # fmt: skip
        servers.append(mid)
        l2 = Client(mid.url, "admin", "adminpw")
        l2.project.create("reseller3")
        l2.user.create("l3bot", "l3bot-pw")
        l2.user.add_project("l3bot", "reseller3")
        top = Server(
            f"sqlite:///{tmp_path / 'l3.sqlite3'}", tmp_path / "l3.log",
            "--upstream", mid.url, "--upstream-project", "reseller3", "--upstream-user", "l3bot",
            env={"RHAAS_UPSTREAM_PASSWORD": "l3bot-pw"},
        ).start()  # fmt: skip
        servers.append(top)
        l3 = Client(top.url, "admin", "adminpw")
        l3.project.create("cust")
        l3.user.create("carol", "carolpw")
        l3.user.add_project("carol", "cust")
        carol = Client(top.url, "carol", "carolpw")

        claimed = carol.project.connect_nodes("cust", 2)
        assert sorted(claimed) == ["n1", "n2"]
        carol.network.create("cnet", "cust", "cust", "")
        vlan = carol.network.show("cnet")["channels"][1].split("/")[1]
        for node in claimed:
            action = carol.wait_networking_action(
                carol.node.connect_network(node, "eth0", "cnet")["status_id"]
            )
            assert action["status"] == "DONE"
        for node in claimed:  # the real OVS of the base, read back from OVS itself
            assert base.port.state("labsw", nodes[node]["switch_port"]) == {"native": vlan, "tagged": []}

        carol.node.enable_obm("n1")
        carol.node.power_on("n1")
        assert l2.node.power_status("n1")["power_status"] == "on"
        assert ipmitool_power(nodes["n1"]["bmc"], bmc_password) == "on"
        assert lab_status(lab_dir)["nodes"][0]["power"] == "on"
        carol.node.power_off("n1")
        assert l2.node.power_status("n1")["power_status"] == "off"
        assert ipmitool_power(nodes["n1"]["bmc"], bmc_password) == "off"
        carol.node.disable_obm("n1")

        for node in claimed:
            carol.wait_networking_action(carol.node.detach_network(node, "eth0", "cnet")["status_id"])
            carol.project.detach("cust", node)
        for node in claimed:
            assert base.port.state("labsw", nodes[node]["switch_port"])["native"] is None
        assert sorted(l3.pool.shrink(2)) == ["n1", "n2"]
        assert sorted(l2.pool.shrink(2)) == ["n1", "n2"]
        assert base.node.list("free") == ["n1", "n2"]
    finally:
        for server in reversed(servers):
            server.stop()
        base.close()
