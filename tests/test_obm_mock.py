"""The mock OBM passes the OBM conformance suite, and its faults, injected from data, behave as documented.

The suite's failing BMC is made each way the mock can fail: a host named ``fail…``, and a faults file
naming the host, naming every call, or failing the next calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from obm_conformance import NodeUnderTest, OBMConformance

from rhaas.drivers.obm.mock import CALLS, MockOBM, MockOBMSettings
from rhaas.errors import BadArgumentError, OBMError


def make(host: str = "bmc-conformance", **settings: object) -> MockOBM:
    return MockOBM(MockOBMSettings.model_validate({"host": host, "user": "u", "password": "p", **settings}))


def write(path: Path, faults: object) -> str:
    path.write_text(json.dumps(faults))
    return str(path)


class TestMockOBM(OBMConformance):
    @pytest.fixture
    def node(self) -> NodeUnderTest:
        obm = make()

        def counters() -> tuple[int, int]:
            machine = MockOBM.machines.get(obm.address)
            return (machine.boots, machine.nmis) if machine else (0, 0)

        return NodeUnderTest(obm, counters, lambda: MockOBM.machines[obm.address].bootdev)

    @pytest.fixture(params=["host named fail", "fail_hosts", "fail_calls", "fail_next"])
    def failing(self, request: pytest.FixtureRequest, tmp_path: Path) -> MockOBM:
        faults = tmp_path / "faults.json"
        if request.param == "host named fail":
            return make("fail-bmc")
        if request.param == "fail_hosts":
            return make("bmc7", faults_file=write(faults, {"fail_hosts": ["bmc7"]}))
        if request.param == "fail_calls":
            return make(faults_file=write(faults, {"fail_calls": sorted(CALLS)}))
        return make(faults_file=write(faults, {"fail_next": 100}))


def test_a_missing_or_empty_faults_file_injects_nothing(tmp_path: Path) -> None:
    obm = make(faults_file=str(tmp_path / "none.json"))
    obm.power_on()
    (tmp_path / "none.json").write_text("  \n")
    assert obm.power_status() == "on"


def test_faults_come_and_go_while_the_bmc_stays(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    obm = make(faults_file=write(faults, {}))
    obm.power_on()
    write(faults, {"fail_calls": ["send_nmi"]})
    with pytest.raises(OBMError, match="bmc-conformance:623: send_nmi refused"):
        obm.send_nmi()
    assert obm.power_status() == "on", "only the named call fails"
    write(faults, {})
    obm.send_nmi()
    assert MockOBM.machines[obm.address].nmis == 1


def test_fail_next_counts_down_across_bmcs_sharing_the_file(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    one, two = (
        make("bmc1", faults_file=write(faults, {"fail_next": 2})),
        make("bmc2", faults_file=str(faults)),
    )
    with pytest.raises(OBMError, match="bmc1:623: power_on refused .*fail_next"):
        one.power_on()
    assert json.loads(faults.read_text())["fail_next"] == 1
    with pytest.raises(OBMError, match="bmc2:623: power_status refused"):
        two.power_status()
    assert json.loads(faults.read_text())["fail_next"] == 0
    one.power_on()
    assert two.power_status() == "off"
    assert MockOBM.machines[one.address].boots == 1, "a refused call changed nothing"


def test_fail_hosts_spares_the_other_bmcs(tmp_path: Path) -> None:
    faults = write(tmp_path / "faults.json", {"fail_hosts": ["bmc2"]})
    make("bmc1", faults_file=faults).power_on()
    with pytest.raises(OBMError, match="bmc2:623: no answer"):
        make("bmc2", faults_file=faults).power_on()


def test_crash_calls_raise_what_a_driver_bug_would(tmp_path: Path) -> None:
    obm = make(faults_file=write(tmp_path / "faults.json", {"crash_calls": ["power_cycle"]}))
    with pytest.raises(RuntimeError, match="injected crash in power_cycle"):
        obm.power_cycle()
    obm.power_on()


@pytest.mark.parametrize(
    "content",
    ["[1]", "{", '{"fail_calls": "power_on"}', '{"fail_calls": ["reboot"]}', '{"fail_next": "2"}'],
)
def test_a_garbled_faults_file_fails_every_call_naming_the_bmc(tmp_path: Path, content: str) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(content)
    with pytest.raises(OBMError, match="bmc-conformance:623: the faults file is unreadable"):
        make(faults_file=str(faults)).power_status()


def test_a_refused_bad_boot_device_reads_no_faults(tmp_path: Path) -> None:
    """The boot device is checked before the BMC is asked, as in every driver: a 400, not a 502."""
    obm = make(faults_file=write(tmp_path / "faults.json", {"fail_next": 1}))
    with pytest.raises(BadArgumentError, match="not legal"):
        obm.set_bootdev("floppy")
    assert json.loads((tmp_path / "faults.json").read_text())["fail_next"] == 1


def test_the_faults_file_is_a_setting_the_api_accepts() -> None:
    settings = {"host": "h", "user": "u", "password": "p", "faults_file": "/tmp/f.json", "delay": 0.5}
    assert MockOBM.settings_model.model_validate(settings).model_dump()["faults_file"] == "/tmp/f.json"
