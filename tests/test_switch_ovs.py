"""The OVS switch driver on a real, private Open vSwitch: the conformance suite, the errors, and VLAN
isolation proven with packets between network namespaces."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ovs_fixtures import (  # noqa: F401 - the *_fixture functions register fixtures
    ArpProbe,
    arp_probe_fixture,
    bridge_fixture,
    hosts_fixture,
    internal_ports_fixture,
    make_switch,
    needs_ovs,
    ovs_fixture,
    unique,
)
from switch_conformance import ACCESS, EMPTY, NATIVE_TRUNK, TRUNK, SwitchConformance

from rhaas.drivers.switch.base import PortState
from rhaas.drivers.switch.ovs import OVSSwitch, OVSSwitchSettings
from rhaas.errors import BadArgumentError, SwitchError
from rhaas.lab import netns
from rhaas.lab.ovs import OVSDaemon, find_binary
from rhaas.lab.polling import wait_for

NetnsFactory = Callable[..., netns.NetnsPort]


def _cause(exc: SwitchError) -> BaseException:
    assert exc.__cause__ is not None, "SwitchError must be chained from the original exception"
    return exc.__cause__


# -- the conformance suite ------------------------------------------------------------------------------
@needs_ovs
class TestOVSConformance(SwitchConformance):
    @pytest.fixture
    def driver(self, ovs: OVSDaemon, bridge: str) -> OVSSwitch:
        return make_switch(ovs, bridge)

    @pytest.fixture
    def ports(self, internal_ports: list[str]) -> list[str]:
        return internal_ports

    @pytest.fixture
    def failing_port(self) -> str:
        return unique("gone")


@needs_ovs
def test_columns_in_ovs(ovs: OVSDaemon, bridge: str, internal_ports: list[str]) -> None:
    """What each state looks like in the OVS database (the table in OVSSwitch's docstring)."""
    driver, port = make_switch(ovs, bridge), internal_ports[0]

    def columns() -> list[str]:
        return ovs.vsctl("get", "port", port, "vlan_mode", "tag", "trunks", "protected").split("\n")[:4]

    driver.set_port(port, ACCESS)
    assert columns() == ["access", "10", "[]", "false"]
    driver.set_port(port, TRUNK)
    assert columns() == ["trunk", "[]", "[20, 30]", "false"]
    driver.set_port(port, NATIVE_TRUNK)
    assert columns() == ["native-untagged", "10", "[10, 20, 30]", "false"]
    driver.set_port(port, EMPTY)
    assert columns() == ["access", "4095", "[]", "true"]


# -- reading back what rhaas did not write --------------------------------------------------------------
@needs_ovs
def test_new_port_trunking_every_vlan_is_reported(
    ovs: OVSDaemon, bridge: str, internal_ports: list[str]
) -> None:
    """OVS's default port (no tag, no trunks) carries every VLAN: no PortState says that."""
    with pytest.raises(SwitchError, match="trunks every VLAN"):
        make_switch(ovs, bridge).get_port(internal_ports[0])


@needs_ovs
@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["vlan_mode=access", "tag=4095", "protected=false"], PortState(native="4095")),  # not isolated
        (["vlan_mode=[]", "tag=7"], PortState(native="7")),  # OVS: a tag without a mode is access
        (["vlan_mode=trunk", "trunks=[5]"], PortState(tagged=frozenset({"5"}))),
        (["vlan_mode=native-tagged", "tag=7", "trunks=[7,8]"], SwitchError),
        (["vlan_mode=native-untagged", "tag=7", "trunks=[]"], SwitchError),
        (["vlan_mode=access", "tag=[]"], SwitchError),  # OVS: VLAN 0
    ],
)
def test_foreign_settings(
    ovs: OVSDaemon, bridge: str, internal_ports: list[str], columns: list[str], expected: object
) -> None:
    port = internal_ports[0]
    ovs.vsctl("set", "port", port, *columns)
    driver = make_switch(ovs, bridge)
    if expected is SwitchError:
        with pytest.raises(SwitchError, match=port):
            driver.get_port(port)
    else:
        assert driver.get_port(port) == expected


# -- errors ---------------------------------------------------------------------------------------------
@needs_ovs
@pytest.mark.parametrize(
    "state",
    [
        PortState(native="0"),
        PortState(native="4095"),
        PortState(native="4096"),
        PortState(native="ten"),
        PortState(native="10\n"),
        PortState(tagged=frozenset({"10", "+5"})),
        PortState(native="10", tagged=frozenset({"10"})),
    ],
)
def test_bad_vlans(ovs: OVSDaemon, bridge: str, internal_ports: list[str], state: PortState) -> None:
    driver = make_switch(ovs, bridge)
    driver.set_port(internal_ports[0], ACCESS)
    with pytest.raises(BadArgumentError):
        driver.set_port(internal_ports[0], state)
    assert driver.get_port(internal_ports[0]) == ACCESS


@needs_ovs
def test_missing_port(ovs: OVSDaemon, bridge: str) -> None:
    driver, port = make_switch(ovs, bridge), unique("x")
    for call in (lambda: driver.set_port(port, ACCESS), lambda: driver.get_port(port)):
        with pytest.raises(SwitchError, match=f"sw-ovs.*{port}.*no port named") as raised:
            call()
        assert isinstance(_cause(raised.value), subprocess.CalledProcessError)
    assert port not in ovs.vsctl("list-ports", bridge).split()  # --may-exist add-port did not make it


@needs_ovs
def test_missing_bridge(ovs: OVSDaemon, bridge: str, internal_ports: list[str]) -> None:
    driver = make_switch(ovs, unique("nobr"))
    with pytest.raises(SwitchError, match=f"{internal_ports[0]}.*no bridge named") as raised:
        driver.set_port(internal_ports[0], ACCESS)
    assert isinstance(_cause(raised.value), subprocess.CalledProcessError)
    with pytest.raises(SwitchError, match="no bridge named"):
        driver.get_port(internal_ports[0])


@needs_ovs
def test_port_on_another_bridge_is_left_alone(ovs: OVSDaemon, bridge: str, internal_ports: list[str]) -> None:
    other = unique("br2")
    ovs.add_bridge(other)
    try:
        mine = make_switch(ovs, bridge)
        mine.set_port(internal_ports[0], TRUNK)
        with pytest.raises(SwitchError, match="attached to bridge"):
            make_switch(ovs, other).set_port(internal_ports[0], ACCESS)
        with pytest.raises(SwitchError, match=f"on bridge {bridge}"):
            make_switch(ovs, other).get_port(internal_ports[0])
        assert mine.get_port(internal_ports[0]) == TRUNK
    finally:
        ovs.del_bridge(other)


@pytest.mark.ovs
@pytest.mark.skipif(
    find_binary("ovs-vsctl") is None, reason="ovs-vsctl is not installed (openvswitch-switch)"
)
def test_unreachable_database(tmp_path: Path) -> None:
    settings = {"bridge": "br0", "db": f"unix:{tmp_path}/nothing.sock", "timeout": 2}
    driver = OVSSwitch("sw-gone", OVSSwitchSettings.model_validate(settings))
    started = time.monotonic()
    with pytest.raises(SwitchError, match="sw-gone.*eth1.*database connection failed") as raised:
        driver.set_port("eth1", ACCESS)
    assert time.monotonic() - started < 2
    assert isinstance(_cause(raised.value), subprocess.CalledProcessError)


@needs_ovs
def test_hung_vswitchd_times_out(ovs: OVSDaemon, bridge: str, internal_ports: list[str]) -> None:
    """ovs-vsctl waits for ovs-vswitchd to apply a change; a hung one must not hang the worker."""
    driver = make_switch(ovs, bridge, timeout=1)
    pid = ovs.pid("ovs-vswitchd")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(SwitchError, match=f"{internal_ports[0]}.*no answer from Open vSwitch in 1 s"):
            driver.set_port(internal_ports[0], ACCESS)
        assert time.monotonic() - started < 4
    finally:
        os.kill(pid, signal.SIGCONT)
    assert driver.get_port(internal_ports[0]) == ACCESS  # committed; applied once ovs-vswitchd ran again


def test_ovs_vsctl_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    driver = OVSSwitch("sw-x", OVSSwitchSettings(bridge="br0"))
    with pytest.raises(SwitchError, match="sw-x.*eth1.*not installed") as raised:
        driver.get_port("eth1")
    assert isinstance(_cause(raised.value), FileNotFoundError)


# -- settings -------------------------------------------------------------------------------------------
def test_settings_accept_hils_name() -> None:
    assert OVSSwitchSettings.model_validate({"ovs_bridge": "br0"}).bridge == "br0"
    assert OVSSwitchSettings.model_validate({"bridge": "br0"}).model_dump() == {
        "bridge": "br0",
        "db": None,
        "timeout": 5.0,
    }


@pytest.mark.parametrize(
    "settings",
    [{}, {"bridge": "br0", "colour": "red"}, {"bridge": "a" * 16}, {"bridge": "br 0"}, {"bridge": "br0\n"}],
)
def test_settings_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OVSSwitchSettings.model_validate(settings)


# -- isolation, with packets ----------------------------------------------------------------------------
@needs_ovs
def test_access_vlans_isolate(ovs: OVSDaemon, bridge: str, hosts: NetnsFactory) -> None:
    a, b = hosts(bridge, "10.77.0.1/24"), hosts(bridge, "10.77.0.2/24")
    driver = make_switch(ovs, bridge)
    driver.set_port(a.port, PortState(native="10"))
    driver.set_port(b.port, PortState(native="10"))
    assert netns.ping(a.netns, "10.77.0.2")
    driver.set_port(b.port, PortState(native="11"))
    assert netns.isolated(a.netns, "10.77.0.2")
    assert netns.isolated(b.netns, "10.77.0.1")
    driver.set_port(a.port, PortState(native="11"))
    assert netns.ping(b.netns, "10.77.0.1")


@needs_ovs
def test_empty_ports_reach_nothing(ovs: OVSDaemon, bridge: str, hosts: NetnsFactory) -> None:
    a, b, c = (hosts(bridge, f"10.77.0.{i}/24") for i in (1, 2, 3))
    driver = make_switch(ovs, bridge)
    for host in (a, b, c):
        driver.set_port(host.port, PortState(native="10"))
    assert netns.ping(a.netns, "10.77.0.2") and netns.ping(a.netns, "10.77.0.3")
    driver.reset_port(a.port)
    driver.reset_port(b.port)
    assert netns.isolated(a.netns, "10.77.0.2")  # empty to empty: both in VLAN 4095
    assert netns.isolated(a.netns, "10.77.0.3")  # empty to a live VLAN
    assert netns.isolated(c.netns, "10.77.0.1")
    driver.set_port(a.port, PortState(native="10"))
    assert netns.ping(a.netns, "10.77.0.3")


@needs_ovs
def test_tagged_trunk(
    ovs: OVSDaemon, bridge: str, hosts: NetnsFactory, arp_probe: Callable[[str], ArpProbe]
) -> None:
    """A trunk port (a raw socket, since the kernel has no 802.1Q module) reaches hosts on access
    VLANs 10 and 20 with their tags, and nothing else."""
    driver = make_switch(ovs, bridge)
    a, b = hosts(bridge, "10.77.0.1/24"), hosts(bridge, "10.77.0.2/24")
    driver.set_port(a.port, PortState(native="10"))
    driver.set_port(b.port, PortState(native="20"))
    probe = arp_probe(bridge)
    trunk = next(p for p in ovs.vsctl("list-ports", bridge).split() if p not in (a.port, b.port))

    driver.set_port(trunk, PortState(tagged=frozenset({"10", "20"})))
    settled(probe, "10.77.0.1", 10, 10)
    settled(probe, "10.77.0.2", 20, 20)
    settled(probe, "10.77.0.2", 10, False)  # b is not on VLAN 10
    settled(probe, "10.77.0.1", None, False)  # a nativeless trunk drops untagged frames
    settled(probe, "10.77.0.1", 30, False)

    driver.set_port(trunk, PortState(native="10", tagged=frozenset({"20"})))
    settled(probe, "10.77.0.1", None, None)  # native VLAN: untagged both ways
    settled(probe, "10.77.0.2", 20, 20)
    settled(probe, "10.77.0.2", None, False)

    driver.reset_port(trunk)
    for target, vlan in (("10.77.0.1", None), ("10.77.0.1", 10), ("10.77.0.2", 20), ("10.77.0.1", 4095)):
        settled(probe, target, vlan, False)


def settled(probe: ArpProbe, target: str, vlan: int | None, expected: int | None | bool) -> None:
    """The answer to ``ask`` becomes ``expected`` within a deadline and then stays so.

    The userspace datapath applies a port change a moment after ovs-vsctl returns (cached flows are
    revalidated), so the first frame after a change may still see the old state either way.
    """
    deadline = time.monotonic() + 5
    while not _same(answer := probe.ask(target, vlan, timeout=0.5), expected):
        assert time.monotonic() < deadline, (target, vlan, answer, expected)
    assert _same(probe.ask(target, vlan, timeout=0.5), expected), (target, vlan, expected)


def _same(answer: object, expected: object) -> bool:
    """Equal and of the same type (False, None and a VLAN number are three different answers)."""
    return type(answer) is type(expected) and answer == expected


# -- the lab daemon -------------------------------------------------------------------------------------
@needs_ovs
def test_daemon_survives_a_crash(ovs: OVSDaemon, bridge: str, internal_ports: list[str]) -> None:
    driver = make_switch(ovs, bridge)
    driver.set_port(internal_ports[0], NATIVE_TRUNK)
    before = (ovs.pid("ovsdb-server"), ovs.pid("ovs-vswitchd"))
    ovs.start()
    assert (ovs.pid("ovsdb-server"), ovs.pid("ovs-vswitchd")) == before  # idempotent: reused
    assert before[1] is not None
    os.kill(before[1], signal.SIGKILL)
    wait_for("the killed ovs-vswitchd to die", lambda: not _running(before[1]), 10.0, every=0.01)
    ovs.start()
    assert ovs.pid("ovs-vswitchd") not in (None, before[1])
    assert bridge in ovs.bridges() and ovs.link_exists(bridge)
    assert driver.get_port(internal_ports[0]) == NATIVE_TRUNK  # the database kept the port's settings
    driver.set_port(internal_ports[0], ACCESS)
    assert driver.get_port(internal_ports[0]) == ACCESS


@needs_ovs
def test_daemons_side_by_side_and_stop_leaves_nothing(ovs: OVSDaemon, bridge: str) -> None:
    """A second daemon in its own namespace works while the first has a bridge, and stops cleanly."""
    workdir = Path(tempfile.mkdtemp(prefix="rhaas-"))
    ns = unique("sw2")
    daemon = OVSDaemon(workdir, netns=ns)
    name = unique("br")
    try:
        daemon.start()
        daemon.add_bridge(name)
        assert daemon.link_exists(name) and ovs.link_exists(bridge)
        pids = [daemon.pid("ovsdb-server"), daemon.pid("ovs-vswitchd")]
        assert None not in pids
        daemon.stop()
        assert not workdir.exists()
        assert not Path("/run/netns", ns).exists()
        assert not any(_running(pid) for pid in pids if pid is not None)
        daemon.stop()  # idempotent
        assert ovs.link_exists(bridge)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited; its parent just has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
