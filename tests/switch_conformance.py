"""The conformance suite every switch driver runs (in the manner of NAPALM's ``BaseTestGetters``).

A driver's test module subclasses `SwitchConformance` (the ``Test…`` name makes pytest collect it) and
provides three fixtures:

- ``driver``: a ready `SwitchDriver`;
- ``ports``: two port names that exist on it and that the test may reprogram;
- ``failing_port``: a port name on ``driver`` whose changes fail in the device (a SwitchError).

The tests only go through the `SwitchDriver` interface, and read state back with `get_port`, so a
driver passes only if the device itself holds what was set.
"""

from __future__ import annotations

import pytest

from rhaas.drivers.registry import switch_driver
from rhaas.drivers.switch.base import PortState, SwitchDriver
from rhaas.errors import BadArgumentError, SwitchError

ACCESS = PortState(native="10")
TRUNK = PortState(tagged=frozenset({"20", "30"}))
NATIVE_TRUNK = PortState(native="10", tagged=frozenset({"20", "30"}))
EMPTY = PortState()
STATES = {"access": ACCESS, "trunk": TRUNK, "native+trunk": NATIVE_TRUNK, "empty": EMPTY}

#: Names no switch can have.
INVALID_PORT_NAMES = ["", " ", "bad name", "-leading-dash", "x" * 300, "a;rm -rf /", "\neth0"]


class SwitchConformance:
    #: False for a driver that checks port names only in `validate_port_name` (the API calls it when a
    #: port is registered), not again in `set_port` and `get_port`.
    checks_port_names_on_call: bool = True

    @pytest.mark.parametrize("state", STATES.values(), ids=STATES.keys())
    def test_set_then_get(self, driver: SwitchDriver, ports: list[str], state: PortState) -> None:
        driver.set_port(ports[0], state)
        assert driver.get_port(ports[0]) == state

    def test_every_transition(self, driver: SwitchDriver, ports: list[str]) -> None:
        """Each state fully replaces the one before (no leftover tag, trunk or mode)."""
        for before in STATES.values():
            for after in STATES.values():
                driver.set_port(ports[0], before)
                driver.set_port(ports[0], after)
                assert driver.get_port(ports[0]) == after, (before, after)

    @pytest.mark.parametrize("state", STATES.values(), ids=STATES.keys())
    def test_set_is_idempotent(self, driver: SwitchDriver, ports: list[str], state: PortState) -> None:
        driver.set_port(ports[0], state)
        driver.set_port(ports[0], state)
        assert driver.get_port(ports[0]) == state

    def test_ports_are_independent(self, driver: SwitchDriver, ports: list[str]) -> None:
        driver.set_port(ports[0], NATIVE_TRUNK)
        driver.set_port(ports[1], ACCESS)
        driver.set_port(ports[0], TRUNK)
        assert driver.get_port(ports[1]) == ACCESS
        driver.reset_port(ports[1])
        assert driver.get_port(ports[0]) == TRUNK

    @pytest.mark.parametrize("state", STATES.values(), ids=STATES.keys())
    def test_reset_port(self, driver: SwitchDriver, ports: list[str], state: PortState) -> None:
        driver.set_port(ports[0], state)
        driver.reset_port(ports[0])
        assert driver.get_port(ports[0]) == EMPTY

    def test_many_tagged_vlans(self, driver: SwitchDriver, ports: list[str]) -> None:
        state = PortState(native="100", tagged=frozenset(str(v) for v in range(101, 141)))
        driver.set_port(ports[0], state)
        assert driver.get_port(ports[0]) == state

    @pytest.mark.parametrize("name", INVALID_PORT_NAMES)
    def test_invalid_port_name(self, driver: SwitchDriver, name: str) -> None:
        with pytest.raises(BadArgumentError):
            driver.validate_port_name(name)
        if self.checks_port_names_on_call:
            with pytest.raises(BadArgumentError):
                driver.set_port(name, ACCESS)
            with pytest.raises(BadArgumentError):
                driver.get_port(name)

    def test_port_name_with_trailing_newline(self, driver: SwitchDriver) -> None:
        """A pattern ending in ``$`` matches before a final newline: use ``\\Z`` or ``fullmatch``."""
        with pytest.raises(BadArgumentError):
            driver.validate_port_name("eth0\n")

    def test_valid_port_names_pass(self, driver: SwitchDriver, ports: list[str]) -> None:
        for port in ports:
            driver.validate_port_name(port)

    def test_device_failure_is_a_switch_error(self, driver: SwitchDriver, failing_port: str) -> None:
        with pytest.raises(SwitchError) as raised:
            driver.set_port(failing_port, ACCESS)
        assert driver.switch_name in str(raised.value)
        assert failing_port in str(raised.value)

    def test_registered_by_name_and_urls(self, driver: SwitchDriver) -> None:
        assert switch_driver(driver.name) is type(driver)
        for url in type(driver).type_urls:
            assert switch_driver(url) is type(driver)

    def test_settings_survive_storage(self, driver: SwitchDriver) -> None:
        """The core stores ``model_dump()`` as JSON and validates it again when it builds the driver."""
        model = type(driver).settings_model
        assert model.model_validate(driver.settings.model_dump()) == driver.settings
