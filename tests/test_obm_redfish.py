"""The Redfish OBM driver against the lab's Redfish BMC over real HTTP(S) on 127.0.0.1: the OBM conformance
suite, then what is particular to Redfish (sessions, TLS, allowed reset types, boot override), the lab BMC
itself, registration through the API, and one firmware boot of a QEMU node counted after a ForceRestart.

The BMC runs as its own process (see redfish_helpers), as in the lab; the tests read what it did from its
state file, as for the IPMI BMC.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from obm_conformance import NodeUnderTest, OBMConformance
from redfish_helpers import PASSWORD, USER, RedfishProcess, self_signed_certificate
from sushy import exceptions as sushy_errors

from rhaas.drivers.obm.redfish import RedfishOBM, RedfishSettings
from rhaas.errors import OBMError
from rhaas.lab.machine import BMCState
from rhaas.lab.servers import Server, free_port

#: A failure that must come within the driver's timeout.
BOUND = 10.0


@pytest.fixture
def redfish(tmp_path: Path) -> Iterator[RedfishProcess]:
    """A lab Redfish BMC process with a fake machine, plain HTTP, every reset type."""
    bmc = RedfishProcess(tmp_path / "redfish.json")
    try:
        yield bmc.start()
    finally:
        bmc.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_bmc(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[RedfishProcess]:
    bmc = RedfishProcess(tmp_path / "https.json", tls=certificate)
    try:
        yield bmc.start()
    finally:
        bmc.stop()


def sessions_open(bmc: RedfishProcess) -> int:
    answer = bmc.get("/redfish/v1/SessionService/Sessions")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["Members@odata.count"])


# -- the OBMDriver conformance suite ---------------------------------------------------------------


class TestRedfishOBM(OBMConformance):
    """The Redfish driver against the lab Redfish BMC, whose fake machine counts what reached it."""

    has_console = False

    @pytest.fixture
    def node(self, redfish: RedfishProcess) -> NodeUnderTest:
        def counters() -> tuple[int, int]:
            state = redfish.state()
            return state.boots, state.nmis

        return NodeUnderTest(RedfishOBM(redfish.settings()), counters, lambda: redfish.state().boot_device)

    @pytest.fixture
    def failing(self, redfish: RedfishProcess) -> RedfishOBM:
        """A BMC that refuses the driver's credentials: every call fails at once, naming it."""
        return RedfishOBM(redfish.settings(password="wrong"))


# -- settings ---------------------------------------------------------------------------------------


def test_settings_defaults():
    settings = RedfishSettings.model_validate({"host": "bmc1", "user": "u", "password": "p"})
    assert (settings.scheme, settings.port, settings.verify) == ("https", 443, True)
    assert (settings.boot_override, settings.boot_mode, settings.system) == ("continuous", None, None)
    assert (
        RedfishSettings.model_validate({"host": "b", "user": "u", "password": "p", "scheme": "http"}).port
        == 80
    )
    assert "s3cr3t" not in repr(
        RedfishSettings.model_validate({"host": "b", "user": "u", "password": "s3cr3t"})
    )
    v6 = RedfishSettings.model_validate({"host": "fd00::5", "user": "u", "password": "p"})
    assert v6.base_url == "https://[fd00::5]:443"


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "bmc/evil"},
        {"host": "user@bmc"},
        {"host": ""},
        {"scheme": "ftp"},
        {"port": 0},
        {"verify": "relative/ca.pem"},
        {"verify": "true"},
        {"verify": 1},
        {"boot_override": "always"},
        {"boot_mode": "bios"},
        {"system": "../x?y"},
        {"colour": "red"},
    ],
)
def test_bad_settings_are_refused(fields):
    with pytest.raises(ValueError):
        RedfishSettings.model_validate({"host": "bmc1", "user": "u", "password": "p"} | fields)


# -- Redfish specifics -------------------------------------------------------------------------------


def test_every_method_reaches_the_bmc(redfish):
    obm = RedfishOBM(redfish.settings())
    assert obm.power_status() == "off"
    obm.power_on()
    assert (redfish.state().power, redfish.state().boots) == ("on", 1)
    obm.power_cycle()
    obm.power_cycle(force=True)
    assert redfish.state().boots == 3
    assert obm.nmi_unavailable() is None
    obm.send_nmi()
    assert redfish.state().nmis == 1
    obm.power_off()
    state = redfish.state()
    assert (state.power, state.boots, state.nmis) == ("off", 3, 1)


def test_calls_share_one_session_and_it_is_used(redfish):
    obm = RedfishOBM(redfish.settings())
    obm.power_status()
    obm.power_on()
    RedfishOBM(redfish.settings()).power_status()  # another driver object, same BMC and credentials
    assert sessions_open(redfish) == 1


def test_basic_auth_when_the_bmc_refuses_sessions(tmp_path):
    bmc = RedfishProcess(tmp_path / "nosessions.json", sessions=False).start()
    try:
        obm = RedfishOBM(bmc.settings())
        obm.power_on()
        assert obm.power_status() == "on"
        assert bmc.state().boots == 1
        assert sessions_open(bmc) == 0
        with pytest.raises(OBMError, match="refused the credentials"):
            RedfishOBM(bmc.settings(password="wrong")).power_status()
    finally:
        bmc.stop()


@pytest.mark.parametrize("user,password", [(USER, "wrong"), ("nobody", PASSWORD)])
def test_bad_credentials_fail_fast_naming_the_bmc(redfish, user, password):
    obm = RedfishOBM(redfish.settings(user=user, password=password))
    started = time.monotonic()
    with pytest.raises(OBMError) as err:
        obm.power_on()
    assert time.monotonic() - started < BOUND
    assert f"127.0.0.1:{redfish.port}" in str(err.value) and "refused the credentials (HTTP 401)" in str(
        err.value
    )
    assert password not in str(err.value)
    assert redfish.state().power == "off"


def test_no_nmi_in_the_allowed_reset_types(tmp_path):
    bmc = RedfishProcess(tmp_path / "nonmi.json", reset_types=["On", "ForceOff", "ForceRestart"]).start()
    try:
        obm = RedfishOBM(bmc.settings())
        obm.power_on()
        why = obm.nmi_unavailable()
        assert why is not None and f"127.0.0.1:{bmc.port} has no NMI" in why
        with pytest.raises(OBMError, match=f"127.0.0.1:{bmc.port} has no NMI"):
            obm.send_nmi()
        # Without PowerCycle, a power cycle is a ForceRestart.
        obm.power_cycle()
        state = bmc.state()
        assert (state.nmis, state.boots, state.power) == (0, 2, "on")
    finally:
        bmc.stop()


def test_a_power_cycle_needs_an_allowed_restart(tmp_path):
    bmc = RedfishProcess(tmp_path / "norestart.json", reset_types=["On", "ForceOff"]).start()
    try:
        obm = RedfishOBM(bmc.settings())
        obm.power_cycle()  # off: On
        with pytest.raises(OBMError, match="allows no ForceRestart nor PowerCycle reset"):
            obm.power_cycle(force=True)
        assert bmc.state().boots == 1
    finally:
        bmc.stop()


def test_boot_override_once_continuous_and_mode(redfish):
    def boot() -> dict[str, str]:
        return dict(redfish.get("/redfish/v1/Systems/node").json()["Boot"])

    RedfishOBM(redfish.settings(boot_mode="legacy")).set_bootdev("pxe")
    assert boot()["BootSourceOverrideTarget"] == "Pxe"
    assert boot()["BootSourceOverrideEnabled"] == "Continuous"
    assert boot()["BootSourceOverrideMode"] == "Legacy"
    assert redfish.state().boot_device == "pxe"

    once = RedfishOBM(redfish.settings(boot_override="once", boot_mode="uefi"))
    once.set_bootdev("disk")
    assert (boot()["BootSourceOverrideTarget"], boot()["BootSourceOverrideEnabled"]) == ("Hdd", "Once")
    assert boot()["BootSourceOverrideMode"] == "UEFI"
    once.power_on()  # the one boot the override was for
    assert boot()["BootSourceOverrideEnabled"] == "Disabled"
    assert redfish.state().boot_device == "none"

    once.set_bootdev("pxe")
    once.set_bootdev("none")
    assert (boot()["BootSourceOverrideTarget"], boot()["BootSourceOverrideEnabled"]) == ("None", "Disabled")


def test_a_restarted_bmc_forgets_the_session_and_the_driver_logs_in_again(redfish):
    obm = RedfishOBM(redfish.settings())
    obm.power_on()
    assert sessions_open(redfish) == 1
    redfish.stop()
    redfish.start(fresh=False)  # same port; the session the driver holds is unknown to it now
    assert sessions_open(redfish) == 0
    assert obm.power_status() == "off"  # a new fake machine, off
    assert sessions_open(redfish) == 1


def test_dead_port_fails_within_the_timeout():
    port = free_port()
    settings = RedfishSettings(host="127.0.0.1", port=port, user=USER, password=PASSWORD, scheme="http")
    started = time.monotonic()
    with pytest.raises(OBMError, match=f"127.0.0.1:{port}: power status failed"):
        RedfishOBM(settings, timeout=2.0).power_status()
    assert time.monotonic() - started < BOUND


# -- TLS ------------------------------------------------------------------------------------------------


def test_tls_verification_refuses_a_self_signed_certificate(https_bmc):
    obm = RedfishOBM(https_bmc.settings())  # verify: true, the system's CAs
    with pytest.raises(OBMError) as err:
        obm.power_on()
    message = str(err.value)
    assert f"127.0.0.1:{https_bmc.port}" in message and "TLS certificate is not trusted" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert https_bmc.state().boots == 0


def test_tls_with_the_bmc_ca_bundle_or_without_verification(https_bmc, certificate):
    RedfishOBM(https_bmc.settings(verify=str(certificate[0]))).power_on()
    assert https_bmc.state().boots == 1
    assert RedfishOBM(https_bmc.settings(verify=False)).power_status() == "on"
    with pytest.raises(OBMError, match=f"127.0.0.1:{https_bmc.port}"):
        RedfishOBM(https_bmc.settings(verify="/nonexistent/ca.pem")).power_status()


# -- the lab Redfish BMC itself ---------------------------------------------------------------------------


def test_lab_bmc_sessions_log_in_and_out(redfish):
    assert redfish.get("/redfish/v1", auth=None).json()["SessionService"] == {
        "@odata.id": "/redfish/v1/SessionService"
    }
    sessions = f"{redfish.url}/redfish/v1/SessionService/Sessions"
    refused = httpx.post(sessions, json={"UserName": USER, "Password": "wrong"})
    assert refused.status_code == 401 and "error" in refused.json()
    opened = httpx.post(sessions, json={"UserName": USER, "Password": PASSWORD})
    assert opened.status_code == 201
    token, location = opened.headers["X-Auth-Token"], opened.headers["Location"]
    system = f"{redfish.url}/redfish/v1/Systems/node"
    assert httpx.get(system, headers={"X-Auth-Token": token}).json()["PowerState"] == "Off"
    assert httpx.delete(redfish.url + location, headers={"X-Auth-Token": token}).status_code == 204
    assert httpx.get(system, headers={"X-Auth-Token": token}).status_code == 401
    assert httpx.get(system, auth=(USER, "wrong")).status_code == 401
    assert httpx.get(system).status_code == 401


def test_lab_bmc_refuses_bad_requests_and_changes_nothing(redfish):
    reset = f"{redfish.url}/redfish/v1/Systems/node/Actions/ComputerSystem.Reset"
    auth = (USER, PASSWORD)
    assert httpx.post(reset, json={"ResetType": "Explode"}, auth=auth).status_code == 400
    assert httpx.post(reset, content=b"{not json", auth=auth).status_code == 400
    assert httpx.post(reset, json={"ResetType": "Nmi"}, auth=auth).status_code == 409  # off
    system = f"{redfish.url}/redfish/v1/Systems/node"
    bad = {"Boot": {"BootSourceOverrideTarget": "Floppy"}}
    assert httpx.patch(system, json=bad, auth=auth).status_code == 400
    assert httpx.patch(system, json={"PowerState": "On"}, auth=auth).status_code == 400
    state = redfish.state()
    assert (state.power, state.boots, state.nmis, state.boot_device) == ("off", 0, 0, "none")
    allowed = redfish.get("/redfish/v1/Systems/node").json()["Actions"]["#ComputerSystem.Reset"]
    assert allowed["ResetType@Redfish.AllowableValues"] == [
        "On",
        "ForceOff",
        "ForceRestart",
        "PowerCycle",
        "Nmi",
    ]


def test_lab_bmc_stops_on_sigterm_and_carries_on_counting(redfish):
    RedfishOBM(redfish.settings()).power_on()
    assert redfish.stop() == 0
    assert not redfish.state().serving
    assert PASSWORD not in redfish.log_path.read_text()
    redfish.start(fresh=False)  # the same state file: the count goes on
    assert BMCState.read(redfish.state_file).boots == 1


# -- through the API --------------------------------------------------------------------------------------


def test_registration_and_power_through_the_api(api, redfish):
    admin = api.admin
    obm = {"type": "redfish", "host": "127.0.0.1", "port": redfish.port, "user": USER, "password": PASSWORD}
    obm |= {"scheme": "http", "boot_override": "once"}
    admin.ok("PUT", "/node/rf", {"obm": obm})
    admin.ok("PUT", "/node/rf/obm", {"enabled": True})
    admin.ok("PUT", "/node/rf/boot_device", {"bootdev": "pxe"})
    admin.ok("POST", "/node/rf/power_on")
    assert admin.ok("GET", "/node/rf/power_status") == {"power_status": "on"}
    admin.ok("POST", "/node/rf/power_nmi")
    admin.ok("POST", "/node/rf/power_cycle", {"force": True})
    state = redfish.state()
    assert (state.boots, state.nmis, state.boot_device) == (2, 1, "none")  # the "once" override was used
    admin.ok("POST", "/node/rf/power_off")
    assert PASSWORD not in admin("GET", "/node/rf").text

    wrong = {**obm, "password": "wrong"}
    admin.ok("PUT", "/node/locked", {"obm": wrong})
    admin.ok("PUT", "/node/locked/obm", {"enabled": True})
    msg = admin.error("POST", "/node/locked/power_on", None, 502, "OBMError")
    assert f"127.0.0.1:{redfish.port}" in msg and "wrong" not in msg


@pytest.mark.parametrize(
    "change",
    [
        {"host": "bmc/x"},
        {"scheme": "gopher"},
        {"verify": "ca.pem"},
        {"verify": "yes"},
        {"port": 70000},
        {"boot_mode": "bios"},
        {"boot_override": 1},
        {"password": 5},
        {"ipmi_port": 623},
    ],
)
def test_bad_redfish_bodies_are_400_and_store_nothing(api, change):
    admin = api.admin
    obm = {"type": "redfish", "host": "bmc1", "user": USER, "password": PASSWORD} | change
    msg = admin.error("PUT", "/node/bad", {"obm": obm}, 400, "ValidationError")
    assert PASSWORD not in msg
    assert "bad" not in admin.ok("GET", "/nodes/all")
    admin.error("GET", "/node/bad", None, 404, "NotFoundError")


def test_password_is_not_in_answers_nor_the_server_log(server: Server, redfish: RedfishProcess) -> None:
    """A real server (logging at INFO, sushy's warnings included) drives a Redfish node, and fails to."""
    obm = {"type": "redfish", "host": "127.0.0.1", "port": redfish.port, "user": USER, "password": PASSWORD}
    obm["scheme"] = "http"
    wrong_password = "n0t-the-r3dfish-password"
    with server.client("admin", "adminpw") as admin:
        answers = [admin.put("/node/r1", json={"obm": obm})]
        answers.append(admin.put("/node/r1/obm", json={"enabled": True}))
        answers.append(admin.post("/node/r1/power_on"))
        answers += [admin.get("/node/r1/power_status"), admin.get("/node/r1")]
        answers.append(admin.put("/node/r2", json={"obm": {**obm, "password": wrong_password}}))
        answers.append(admin.put("/node/r2/obm", json={"enabled": True}))
        answers.append(admin.post("/node/r2/power_on"))
        answers.append(admin.put("/node/r3", json={"obm": {**obm, "verify": "relative"}}))
        assert [a.status_code for a in answers] == [200] * 7 + [502, 400]
        assert answers[3].json() == {"power_status": "on"}
    for answer in answers:
        assert PASSWORD not in answer.text and wrong_password not in answer.text
    log = server.log_path.read_text()
    assert f"Redfish BMC at 127.0.0.1:{redfish.port}: power on failed" in log, "the log holds BMC failures"
    assert PASSWORD not in log and wrong_password not in log
    assert PASSWORD not in redfish.log_path.read_text() and wrong_password not in redfish.log_path.read_text()


# -- a real firmware boot ------------------------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")
def test_force_restart_boots_the_firmware_of_a_qemu_node(tmp_path_factory, nodes):
    """The lab Redfish BMC in front of a QEMU node: the boot device reaches the firmware, and a
    ForceRestart is one more firmware boot, counted from QEMU's own RESET event."""
    from rhaas.lab.qemu import QemuNode
    from rhaas.lab.redfish import RedfishBMC

    workdir = tmp_path_factory.mktemp("q")  # short: the QMP socket path must fit a unix socket address
    node = QemuNode("rf", workdir, memory_mb=256, disk_size="64M")
    nodes.append(node)
    bmc = RedfishBMC(node, port=0, user=USER, password=PASSWORD, state_file=workdir / "bmc.json")  # type: ignore[arg-type]
    bmc.serve_in_thread()
    try:
        obm = RedfishOBM(
            RedfishSettings(host="127.0.0.1", port=bmc.port, user=USER, password=PASSWORD, scheme="http")
        )
        obm.set_bootdev("pxe")
        obm.power_on()
        node.wait_for_console(r"iPXE initialising devices", 120)
        offset = node.console_offset()
        obm.power_cycle(force=True)  # on: ForceRestart
        node.wait_for_console(r"iPXE initialising devices", 120, offset=offset)
        state = BMCState.read(workdir / "bmc.json")
        assert state.boots - state.guest_resets == 2, state
        assert (state.power, state.boot_device) == ("on", "pxe")
        obm.power_off()
        assert not node.is_running()
    finally:
        bmc.stop()


class _Root:
    """Stands in for sushy's client: the one I/O seam, failing the way sushy and requests can."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def get_system(self, path: str) -> object:
        raise self.exc


FAILURES = [
    sushy_errors.ConnectionError(url="https://bmc.example/redfish/v1", error="Connection refused"),
    sushy_errors.MissingAttributeError(attribute="PowerState", resource="/redfish/v1/Systems/1"),
    sushy_errors.UnknownDefaultError(entity="ComputerSystem", error="System count is not exactly one"),
    OSError("Could not find a suitable TLS CA certificate bundle"),
    ValueError("Expecting value: line 1 column 1 (char 0)"),
    KeyError("Members"),
]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "method", ["power_on", "power_off", "power_cycle", "power_status", "send_nmi", "bootdev"]
)
def test_every_library_failure_becomes_obm_error(monkeypatch, exc, method):
    from rhaas.drivers.obm import redfish as driver

    obm = RedfishOBM(RedfishSettings(host="bmc.example", user=USER, password=PASSWORD))
    monkeypatch.setattr(driver, "_clients", {})
    monkeypatch.setattr(obm, "_connect", lambda: driver._Client(_Root(exc), "/redfish/v1/Systems/1"))  # type: ignore[arg-type]
    call = (lambda: obm.set_bootdev("pxe")) if method == "bootdev" else getattr(obm, method)
    with pytest.raises(OBMError, match="Redfish BMC at bmc.example:443") as err:
        call()
    assert err.value.__cause__ is exc
    assert PASSWORD not in str(err.value)
