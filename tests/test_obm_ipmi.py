"""The IPMI OBM driver against the lab's virtual BMC over real IPMI on 127.0.0.1: the OBM conformance
suite, then what is particular to IPMI (sessions, timeouts, Serial over LAN, pyghmi's failures).

The BMC runs as its own process (see ipmi_helpers), as in the lab; the tests read what the BMC did from
its state file. How long a call takes on a live session is a benchmark's figure: bench/drivers.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from ipmi_helpers import PASSWORD, USER, BmcProcess, free_udp_port, wait_for_driver_threads
from obm_conformance import NodeUnderTest, OBMConformance
from pyghmi.exceptions import IpmiException

from rhaas.drivers.obm.base import OBMSettings
from rhaas.drivers.obm.ipmi import DEFAULT_TIMEOUT, IPMIOBM
from rhaas.errors import OBMError
from rhaas.lab.polling import wait_for

pytestmark = pytest.mark.ipmi

#: A failure that must come within the driver's timeout.
BOUND = 10.0


@pytest.fixture
def obm(bmc: BmcProcess) -> IPMIOBM:
    return IPMIOBM(bmc.settings())


# -- the OBMDriver conformance suite ---------------------------------------------------------------


class TestIPMIOBM(OBMConformance):
    """The IPMI driver against the virtual BMC, whose fake machine counts what reached it."""

    @pytest.fixture
    def node(self, bmc: BmcProcess) -> NodeUnderTest:
        def counters() -> tuple[int, int]:
            state = bmc.state()
            return state.boots, state.nmis

        return NodeUnderTest(IPMIOBM(bmc.settings()), counters, lambda: bmc.state().boot_device)

    @pytest.fixture
    def failing(self, bmc: BmcProcess) -> IPMIOBM:
        """A BMC that refuses the driver's login: every call fails at once, naming it."""
        return IPMIOBM(bmc.settings(password="wrong"))


def test_settings_default_to_the_ipmi_port():
    settings = IPMIOBM.settings_model.model_validate({"host": "bmc1", "user": "u", "password": "p"})
    assert settings.port == 623


# -- IPMI specifics ---------------------------------------------------------------------------------


def test_every_method_reaches_the_bmc(bmc, obm):
    assert obm.power_status() == "off"
    obm.power_on()
    assert (bmc.state().power, bmc.state().boots) == ("on", 1)
    obm.power_cycle()
    obm.power_cycle(force=True)
    assert bmc.state().boots == 3
    obm.send_nmi()
    assert bmc.state().nmis == 1
    obm.set_bootdev("pxe")
    assert bmc.state().boot_device == "pxe"
    obm.set_bootdev("disk")
    assert bmc.state().boot_device == "disk"
    obm.set_bootdev("none")
    assert bmc.state().boot_device == "none"
    obm.power_off()
    assert bmc.state().power == "off"
    state = bmc.state()
    assert (state.boots, state.nmis) == (3, 1)


def test_set_bootdev_as_ipmitool_sees_it(bmc, obm):
    obm.set_bootdev("pxe")
    assert "Boot Device Selector : Force PXE" in bmc.ipmitool("chassis", "bootparam", "get", "5")
    obm.set_bootdev("disk")
    assert "Force Boot from default Hard-Drive" in bmc.ipmitool("chassis", "bootparam", "get", "5")


def test_power_status_agrees_with_ipmitool(bmc, obm):
    for action, expected in (("on", "on"), ("off", "off")):
        getattr(obm, f"power_{action}")()
        assert obm.power_status() == expected
        assert bmc.ipmitool("chassis", "power", "status").strip() == f"Chassis Power is {expected}"
    bmc.ipmitool("chassis", "power", "on")  # changed behind the driver's back
    assert obm.power_status() == "on"


def test_session_is_reused(obm):
    first = obm._connect()
    assert obm._connect().ipmi_session is first.ipmi_session
    assert IPMIOBM(obm.settings)._connect().ipmi_session is first.ipmi_session


def test_concurrent_calls_share_the_bmc_safely(bmc, obm):
    obm.power_on()
    errors: list[BaseException] = []
    answers: list[str] = []

    def poll() -> None:
        try:
            for _ in range(10):
                answers.append(IPMIOBM(bmc.settings()).power_status())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and answers == ["on"] * 80


@pytest.mark.parametrize(
    "user,password,reason", [(USER, "wrong", "Incorrect password"), ("nobody", PASSWORD, "Unauthorized name")]
)
def test_bad_credentials_fail_fast(bmc, user, password, reason):
    obm = IPMIOBM(bmc.settings(user=user, password=password))
    started = time.monotonic()
    with pytest.raises(OBMError) as err:
        obm.power_status()
    assert time.monotonic() - started < BOUND
    assert f"127.0.0.1:{bmc.port}" in str(err.value) and reason in str(err.value)
    assert isinstance(err.value.__cause__, IpmiException)
    assert bmc.state().power == "off"


def test_dead_port_fails_within_the_default_timeout():
    port = free_udp_port()
    obm = IPMIOBM(OBMSettings(host="127.0.0.1", port=port, user=USER, password=PASSWORD))
    assert obm.timeout == DEFAULT_TIMEOUT < BOUND
    started = time.monotonic()
    try:
        with pytest.raises(OBMError) as err:
            obm.power_status()
        elapsed = time.monotonic() - started
        print(f"dead port: OBMError after {elapsed:.1f} s: {err.value}")
        assert elapsed < BOUND
        assert f"127.0.0.1:{port}" in str(err.value)
        assert err.value.__cause__ is not None
    finally:
        wait_for_driver_threads(obm.address)


def test_timeout_is_configurable():
    port = free_udp_port()
    obm = IPMIOBM(OBMSettings(host="127.0.0.1", port=port, user=USER, password=PASSWORD), timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(OBMError, match=f"127.0.0.1:{port}: no answer to power on") as err:
            obm.power_on()
        assert time.monotonic() - started < 2.0
        assert isinstance(err.value.__cause__, TimeoutError)
    finally:
        wait_for_driver_threads(obm.address)
    with pytest.raises(ValueError):
        IPMIOBM(obm.settings, timeout=0)


def read_console(stream: Iterator[bytes], marker: bytes, timeout: float = 10.0) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    for chunk in stream:  # the IPMI stream yields every fraction of a second, b"" if nothing came
        output += chunk
        if marker in output:
            return output
        assert time.monotonic() < deadline, f"no {marker!r} on the console within {timeout} s: {output!r}"
    raise AssertionError(f"console stream ended without {marker!r}: {output!r}")


def test_console_streams_serial_over_lan(bmc, obm):
    obm.power_on()  # before activation: not shown
    with contextlib.closing(obm.console()) as stream:
        # Power commands share the session with the console while it streams.
        obm.power_cycle(force=True)
        obm.send_nmi()
        output = read_console(stream, b"NMI received")
        assert b"reset, booting from none" in output and b"power on" not in output
        assert obm.power_status() == "on"
    # Closing deactivated SOL: another client can attach.
    with contextlib.closing(IPMIOBM(bmc.settings()).console()) as again:
        obm.power_off()
        read_console(again, b"power off")


def test_console_is_for_one_client_at_a_time(obm):
    with contextlib.closing(obm.console()), pytest.raises(OBMError, match="SOL Session active for another"):
        obm.console()


def test_console_survives_pyghmi_keepalive(obm):
    """pyghmi's SOL client keeps its session alive with "get payload instance info" after ~29 s of
    quiet and drops the console unless the BMC names the session as SOL's owner. Ask it directly."""
    with contextlib.closing(obm.console()):
        ipmi = obm._connect()
        owner = bytes(ipmi.xraw_command(netfn=6, command=0x4B, data=(1, 1))["data"][:4])
        assert struct.unpack("<I", owner)[0] == ipmi.ipmi_session.sessionid
    owner = bytes(obm._connect().xraw_command(netfn=6, command=0x4B, data=(1, 1))["data"][:4])
    assert owner == bytes(4)  # nobody


def test_console_with_wrong_password_raises(bmc):
    with pytest.raises(OBMError, match=f"127.0.0.1:{bmc.port}.*Incorrect password"):
        IPMIOBM(bmc.settings(password="wrong")).console()


@pytest.mark.slow
def test_bmc_dying_mid_session_fails_in_time_then_recovers(bmc):
    obm = IPMIOBM(bmc.settings(), timeout=3.0)
    obm.power_on()
    bmc.stop()
    started = time.monotonic()
    try:
        with pytest.raises(OBMError):
            obm.power_status()
        assert time.monotonic() - started < 4.0
        # The BMC comes back on the same port with a fresh (off) machine: once pyghmi has given up on
        # the old session, the driver logs in again by itself.
        bmc.start()
        wait_for_driver_threads(obm.address)

        def status() -> str | None:
            try:
                return obm.power_status()
            except OBMError:
                return None

        assert wait_for("the driver to log in again", status, 60) == "off"
    finally:
        wait_for_driver_threads(obm.address)


class _Failing:
    """Stands in for pyghmi's Command: the one I/O seam, failing the way pyghmi can."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def xraw_command(self, **kwargs: object) -> dict[str, object]:
        raise self.exc

    def set_bootdev(self, *args: object, **kwargs: object) -> dict[str, object]:
        raise self.exc


FAILURES = [
    IpmiException("Session no longer connected"),
    IpmiException(None),
    IpmiException("Command not supported in present state", 0xD5),
    OSError("Network is unreachable"),
    socket.gaierror(-2, "Name or service not known"),
    struct.error("unpack requires a buffer of 4 bytes"),
    KeyError("data"),
    IndexError("bytearray index out of range"),
    AssertionError(),
]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "method", ["power_on", "power_off", "power_cycle", "power_status", "send_nmi", "bootdev"]
)
def test_every_library_failure_becomes_obm_error(monkeypatch, exc, method):
    obm = IPMIOBM(OBMSettings(host="bmc.example", port=6230, user=USER, password=PASSWORD))
    monkeypatch.setattr(obm, "_connect", lambda: _Failing(exc))
    call = (lambda: obm.set_bootdev("pxe")) if method == "bootdev" else getattr(obm, method)
    with pytest.raises(OBMError, match="bmc.example:6230") as err:
        call()
    assert err.value.__cause__ is exc


def test_connect_failure_becomes_obm_error(monkeypatch):
    obm = IPMIOBM(OBMSettings(host="no-such-bmc.invalid", user=USER, password=PASSWORD))
    failure = socket.gaierror(-2, "Name or service not known")

    def connect() -> object:
        raise failure

    monkeypatch.setattr(obm, "_connect", connect)
    with pytest.raises(OBMError, match="no-such-bmc.invalid:623") as err:
        obm.power_status()
    assert err.value.__cause__ is failure
