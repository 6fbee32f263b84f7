"""The upstream switch and OBM drivers pass the switch and OBM conformance suites against a base rhaas.

One base instance (a real ``rhaas-admin serve`` on loopback, SQLite, mock switch and mock BMCs) serves
the whole module. Its project ``reseller`` holds the nodes the drivers work on, and networks the base's
admin made for that project with the VLANs the switch suite uses, as a recursive instance's upstream
holds them. The drivers run in the test process, built by `recursion_helpers.upstream_drivers`.

What the node's side saw is read from the base, not through the driver under test: a port's VLANs from
the base's switch (the switch suite reads them back through ``get_port``, which asks the base), a node's
boots and NMIs from its mock BMC's console log, read by the base's admin.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from obm_conformance import NodeUnderTest, OBMConformance
from recursion_helpers import Level, UpstreamDrivers, ok, start_level, upstream_drivers
from switch_conformance import SwitchConformance

from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.switch.upstream import UpstreamSwitch
from rhaas.errors import UpstreamError, UpstreamUnavailableError

#: The VLANs switch_conformance's states use: the base's admin makes a network for each.
VLANS = ["10", "20", "30", *(str(v) for v in range(100, 141))]
#: Nodes held by the reseller: n1..n3 work, nf's BMC fails, n9's switch port fails.
NODES = {"n1": "gi1/0/1", "n2": "gi1/0/2", "n3": "gi1/0/3", "nf": "gi1/0/4", "n9": "gi1/0/9"}


def _build_base(base: Level) -> None:
    admin = base.admin
    ok(admin.put("/switch/sw0", json={"type": "mock", "fail_ports": ["gi1/0/9"]}))
    ok(admin.put("/project/reseller"))
    base.user("bot", "bot-pw", "reseller")
    for i, (node, port) in enumerate(NODES.items(), 1):
        host = "fail-bmc" if node == "nf" else f"bmc-{node}"
        obm = {"type": "mock", "host": host, "user": "u", "password": "p"}
        ok(admin.put(f"/node/{node}", json={"obm": obm}))
        ok(admin.put(f"/node/{node}/nic/eth0", json={"macaddr": f"52:54:00:00:09:{i:02x}"}))
        ok(admin.put(f"/switch/sw0/port/{port}"))
        ok(admin.post(f"/switch/sw0/port/{port}/connect_nic", json={"node": node, "nic": "eth0"}))
        ok(admin.post("/project/reseller/connect_node", json={"node": node}))
    for vlan in VLANS:
        body = {"owner": "admin", "access": "reseller", "net_id": vlan}
        ok(admin.put(f"/network/vlan{vlan}", json=body))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Level]:
    workdir = tmp_path_factory.mktemp("upstream-base")
    level = start_level(f"sqlite:///{workdir / 'base.sqlite3'}", workdir / "base.log", None, "", "")
    try:
        _build_base(level)
        yield level
    finally:
        level.close()
        level.server.stop()


@pytest.fixture(scope="module")
def drivers(base: Level) -> Iterator[UpstreamDrivers]:
    with upstream_drivers(base, "reseller", "bot", "bot-pw") as made:
        yield made


# -- the switch ----------------------------------------------------------------------------------------


class TestUpstreamSwitch(SwitchConformance):
    # Port names are checked when the API registers a port; a call passes them to the upstream as is.
    checks_port_names_on_call = False

    @pytest.fixture
    def driver(self, drivers: UpstreamDrivers) -> UpstreamSwitch:
        return drivers.switch()

    @pytest.fixture
    def ports(self) -> list[str]:
        return ["n1/eth0", "n2/eth0"]

    @pytest.fixture
    def failing_port(self) -> str:
        return "n9/eth0"


def test_the_upstream_port_is_what_the_base_switch_carries(base: Level, drivers: UpstreamDrivers) -> None:
    """The suite reads ports back through the driver; here the base's own switch says the same."""
    from switch_conformance import NATIVE_TRUNK

    drivers.switch().set_port("n3/eth0", NATIVE_TRUNK)
    assert ok(base.admin.get("/switch/sw0/port/gi1/0/3/state")) == NATIVE_TRUNK.as_dict()
    drivers.switch().reset_port("n3/eth0")
    assert ok(base.admin.get("/switch/sw0/port/gi1/0/3/state")) == {"native": None, "tagged": []}


# -- the BMC -------------------------------------------------------------------------------------------


def _console_counters(admin: httpx.Client, node: str) -> tuple[int, int]:
    """(firmware boots, NMIs) from the mock BMC's console log, as the base's admin reads it."""
    response = admin.get(f"/node/{node}/console")
    if response.status_code != 200:  # the base's OBM is off until the first call through the driver
        ok(admin.put(f"/node/{node}/obm", json={"enabled": True}))
        response = admin.get(f"/node/{node}/console")
    assert response.status_code == 200, response.text
    log = response.text.splitlines()
    boots = [int(m.group(1)) for line in log if (m := re.search(r"boot (\d+) from", line))]
    return max(boots, default=0), sum(line == "NMI" for line in log)


class TestUpstreamOBM(OBMConformance):
    errors = (UpstreamError, UpstreamUnavailableError)

    def names_the_bmc(self, obm: OBMDriver, message: str) -> bool:
        """An upstream's error names the upstream (its URL) and the node there."""
        upstream_url, _, _project = obm.settings.upstream.partition("#")
        return upstream_url in message and obm.settings.node in message

    @pytest.fixture
    def node(self, base: Level, drivers: UpstreamDrivers) -> NodeUnderTest:
        return NodeUnderTest(drivers.obm("n1"), lambda: _console_counters(base.admin, "n1"))

    @pytest.fixture
    def failing(self, drivers: UpstreamDrivers) -> OBMDriver:
        return drivers.obm("nf")


def test_the_upstream_obm_reaches_the_base_bmc(base: Level, drivers: UpstreamDrivers) -> None:
    obm = drivers.obm("n2")
    obm.power_off()
    before = _console_counters(base.admin, "n2")
    obm.power_cycle(force=True)
    obm.send_nmi()
    assert _console_counters(base.admin, "n2") == (before[0] + 1, before[1] + 1)
    assert ok(base.admin.get("/node/n2/power_status")) == {"power_status": "on"}
