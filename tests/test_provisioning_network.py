"""The provisioning network and the network boot, through the API on the mock switch and mock BMCs.

While the FPBL owns a node (every state but ``deployed``) its NIC carries the provisioning network's VLAN
whatever the project connected; the project's networks take over once the customer's OS is up and give
the NIC back at the return, before the NMI. Enrolment boots the node from the network once its NIC is
there, and each network boot's iPXE script carries a fresh agent secret. (On real QEMU nodes, OVS and a
recursive instance: tests/test_provisioning_lab.py.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_helpers import BOOT_URL, Agent, deploy, machine, network_boot_site, state
from api_helpers import Api, make_api, populate_site
from dbdump import dump

from rhaas.lab.polling import wait_for

MAC1 = "52:54:00:00:00:01"


@pytest.fixture
def netprov(db_url: str, tmp_path: Path) -> Iterator[Api]:
    with network_boot_site(db_url, tmp_path / "fpbl", provisioning__return_timeout=30.0) as api:
        yield api


def port(api: Api, n: int) -> dict:
    return dict(api.admin.ok("GET", f"/switch/sw0/port/gi1/0/{n}/state"))


def vlan(api: Api, network: str) -> str:
    return str(api.admin.ok("GET", f"/network/{network}")["channels"][1].split("/")[1])


def boot(api: Api, mac: str = MAC1) -> Agent:
    """Fetch the node's iPXE script as its firmware would; an agent with the secret it carries."""
    response = api.agent.get(f"/boot/v1/ipxe/{mac}")
    assert response.status_code == 200, response.text
    script = response.text
    assert script.startswith(
        "#!ipxe\nkernel http://10.0.0.1:8080/boot/v1/fpbl/vmlinuz initrd=initrd console=ttyS0 quiet "
    )
    assert "initrd http://10.0.0.1:8080/boot/v1/fpbl/initrd" in script
    assert "rhaas.ip=${ip} rhaas.netmask=${netmask}" in script
    words = dict(re.findall(r"rhaas\.(\w+)=(\S+)", script))
    assert words["agent"] == BOOT_URL
    return Agent(api, words["node"], words["secret"])


def test_enrolment_puts_the_nic_on_the_provisioning_network_then_boots_from_it(netprov):
    bmc = machine("bmc1")
    boots = bmc.boots
    netprov.admin.ok("PUT", "/node/n1/fpbl", {})
    prov_vlan = vlan(netprov, "prov")
    wait_for("the network boot", lambda: bmc.boots == boots + 1, 30.0, every=0.02)
    assert port(netprov, 1) == {"native": prov_vlan, "tagged": []}, "the NIC was there before the boot"
    assert bmc.bootdev == "pxe" and bmc.power == "on"
    agent = boot(netprov)
    agent.checkin()
    assert state(netprov, "n1") == "ready"
    # The port shows the provisioning network; the node has no attachment a customer could see.
    assert netprov.admin.ok("GET", "/network/prov/attachments") == {}


def no_pending_action(db_url: str) -> Callable[[], bool]:
    """True once no networking action is pending: the worker commits an action DONE just after it has
    changed the switch, and until then the NIC answers customers with HIL's 409 (one action per NIC)."""
    from sqlalchemy import exists, select

    from rhaas.db.models import PENDING, NetworkingAction
    from rhaas.db.session import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(db_url))

    def done() -> bool:
        with sessions() as db:
            return not db.scalar(select(exists().where(NetworkingAction.status == PENDING)))

    return done


def test_customer_networks_reach_the_switch_when_the_os_is_up_and_leave_before_the_nmi(netprov, db_url):
    netprov.admin.ok("PUT", "/node/n1/fpbl", {})
    prov_vlan = vlan(netprov, "prov")
    wait_for("the network boot", lambda: machine("bmc1").power == "on", 30.0, every=0.02)
    agent = boot(netprov)
    agent.checkin()
    alice = netprov.alice
    alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    alice.ok("PUT", "/network/anet", {"owner": "p1", "access": "p1", "net_id": ""})
    action = alice.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "anet"}, status=202)
    assert alice.wait_action(action["status_id"])["status"] == "DONE"
    assert port(netprov, 1) == {"native": prov_vlan, "tagged": []}, "the FPBL still owns the node"

    deploy(netprov, agent, "n1")
    a_vlan = vlan(netprov, "anet")
    wait_for("A's network on the port", lambda: port(netprov, 1) == {"native": a_vlan, "tagged": []}, 30.0)
    wait_for("the NIC's hand-over committed", no_pending_action(db_url), 30.0, every=0.02)

    # A customer rebooting into the network is sent to its disk: no FPBL, no secret.
    script = netprov.agent.get(f"/boot/v1/ipxe/{MAC1}").text
    assert "exit" in script and "secret" not in script

    bmc = machine("bmc1")
    nmis = bmc.nmis
    action = alice.ok("POST", "/node/n1/nic/eth0/detach_network", {"network": "anet"}, status=202)
    alice.wait_action(action["status_id"])
    alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    wait_for("the NMI", lambda: bmc.nmis == nmis + 1, 30.0, every=0.02)
    assert port(netprov, 1) == {"native": prov_vlan, "tagged": []}, "back on the provisioning network first"


def test_each_network_boot_gets_a_fresh_secret(netprov):
    netprov.admin.ok("PUT", "/node/n1/fpbl", {})
    first = boot(netprov)
    second = boot(netprov)
    assert first.headers != second.headers
    first.call("GET", "work", status=401)  # the first boot's secret stopped working
    second.checkin()
    assert state(netprov, "n1") == "ready"


def test_a_nic_registered_in_another_mac_form_is_found_by_ipxes(netprov):
    netprov.admin.ok("PUT", "/switch/sw0/port/gi1/0/9")
    obm = {"type": "mock", "host": "bmc9", "user": "u", "password": "secret-bmc"}
    netprov.admin.ok("PUT", "/node/n9", {"obm": obm})
    netprov.admin.ok("PUT", "/node/n9/nic/eth0", {"macaddr": "52-54-00-00-00-9A"})
    netprov.admin.ok("POST", "/switch/sw0/port/gi1/0/9/connect_nic", {"node": "n9", "nic": "eth0"})
    netprov.admin.ok("PUT", "/node/n9/fpbl", {})
    agent = boot(netprov, "52:54:00:00:00:9a")
    assert agent.node == "n9"
    agent.checkin()
    assert state(netprov, "n9") == "ready"


def test_boot_routes_refuse_bad_input_and_change_nothing(netprov):
    before = dump(netprov.sessions)
    for path, status in (
        ("/boot/v1/ipxe/not-a-mac", 400),
        ("/boot/v1/ipxe/52:54:00:99:99:99", 404),
        ("/boot/v1/fpbl/..%2Fetc%2Fpasswd", 404),
        ("/boot/v1/fpbl/core", 404),
        ("/boot/v1/ipxe?x=1", 400),
    ):
        response = netprov.agent.get(path)
        assert response.status_code == status, (path, response.status_code, response.text)
        assert set(response.json()) == {"type", "msg"}
    assert dump(netprov.sessions) == before
    # A node that is not enrolled gets a script that exits (its firmware boots the next device).
    assert netprov.agent.get(f"/boot/v1/ipxe/{MAC1}").text.startswith("#!ipxe\necho rhaas: not booting")
    chain = netprov.agent.get("/boot/v1/ipxe").text
    assert chain == "#!ipxe\nchain http://10.0.0.1:8080/boot/v1/ipxe/${net0/mac}\n"
    kernel = netprov.agent.get("/boot/v1/fpbl/vmlinuz", headers={"Range": "bytes=0-9"})
    assert kernel.status_code == 206 and kernel.content == b"K" * 10


def test_boot_routes_need_the_network_boot_set_up(db_url):
    with make_api(db_url, provisioning__enabled=True) as api:
        response = api.agent.get("/boot/v1/ipxe")
        assert response.status_code == 409 and response.json()["type"] == "IllegalStateError"
        assert "boot_url" in response.json()["msg"]


def test_enrolment_needs_the_provisioning_network_to_exist(db_url, tmp_path):
    with make_api(db_url, provisioning__enabled=True, provisioning__agent_url=BOOT_URL,
                  provisioning__network="nope") as api:  # fmt: skip
        populate_site(api)
        before = dump(api.sessions)
        msg = api.admin.error("PUT", "/node/n1/fpbl", {}, 404, "NotFoundError")
        assert "nope" in msg
        assert dump(api.sessions) == before


def test_fpbl_args_follow_the_fpbls_own_command_line_in_the_boot_script(db_url, tmp_path):
    extra = "console=ttyS1,115200n8 nvme.io_queue_depth=2"
    with network_boot_site(db_url, tmp_path / "fpbl", provisioning__fpbl_args=f" {extra}  ") as api:
        api.admin.ok("PUT", "/node/n1/fpbl", {})
        script = api.agent.get(f"/boot/v1/ipxe/{MAC1}").text
    assert f"initrd=initrd console=ttyS0 quiet {extra} rhaas." in script, script


@pytest.mark.parametrize(
    "args", ["rhaas.secret=x", "a\nchain http://evil/", "init=/bin/sh;reboot", "x" * 1025, "quiet 'x y'"]
)
def test_fpbl_args_that_are_not_plain_kernel_parameters_are_refused(args):
    from pydantic import ValidationError

    from rhaas.config import ProvisioningSettings

    with pytest.raises(ValidationError, match="fpbl_args"):
        ProvisioningSettings(fpbl_args=args)
