"""The conformance suite every OBM driver runs (as tests/switch_conformance.py does for switch drivers).

A driver's test module subclasses `OBMConformance` (the ``Test…`` name makes pytest collect it) and
provides two fixtures:

- ``node``: a `NodeUnderTest`: a ready `OBMDriver` and how to read, from the node's side and not through
  the driver, how many firmware boots and NMIs the node has seen (and, where the node's side can tell,
  its next boot device);
- ``failing``: an `OBMDriver` whose BMC fails every call.

The tests only go through the `OBMDriver` interface. Counters are compared before and after, so a node
may have a history (a BMC shared by a module's tests). Class attributes say what differs by design:
`errors` (the classes a failing device raises: `OBMError` naming the BMC; the upstream driver raises its
upstream's errors), `has_console` and `has_nmi` (obmd has no NMI call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from rhaas.drivers.obm.base import BOOT_DEVICES, OBMDriver
from rhaas.drivers.registry import obm_driver
from rhaas.errors import BadArgumentError, OBMError


@dataclass
class NodeUnderTest:
    """A driver, and the node's own view of what happened to it."""

    obm: OBMDriver
    #: (firmware boots, NMIs) as the node's side counts them.
    counters: Callable[[], tuple[int, int]]
    #: The next boot device as the node's side holds it (one of BOOT_DEVICES), if it can tell.
    bootdev: Callable[[], str] | None = None

    def since(self, before: tuple[int, int]) -> tuple[int, int]:
        boots, nmis = self.counters()
        return boots - before[0], nmis - before[1]


def first_console_chunk(obm: OBMDriver) -> bytes:
    """Open the console, read what it yields first, and close it (a stream with ``close`` is closed)."""
    stream = obm.console()
    try:
        return next(iter(stream))
    finally:
        getattr(stream, "close", lambda: None)()


def _calls(obm: OBMDriver) -> dict[str, Callable[[], object]]:
    """Every call of the interface, ready to make (a console is opened and closed at once)."""
    return {
        "power_on": obm.power_on,
        "power_off": obm.power_off,
        "power_cycle": obm.power_cycle,
        "reset": lambda: obm.power_cycle(force=True),
        "power_status": obm.power_status,
        "set_bootdev": lambda: obm.set_bootdev("pxe"),
        "send_nmi": obm.send_nmi,
        "console": lambda: first_console_chunk(obm),
    }


class OBMConformance:
    #: What a failing device raises (each names the BMC, see `names_the_bmc`).
    errors: tuple[type[Exception], ...] = (OBMError,)
    #: False for a driver without a console: `console` then raises OBMError.
    has_console: bool = True
    #: False for a driver that cannot send an NMI: `send_nmi` then raises OBMError naming the BMC.
    has_nmi: bool = True

    def names_the_bmc(self, obm: OBMDriver, message: str) -> bool:
        """Whether an error message says which BMC failed."""
        return obm.address in message

    def test_power_on_off_status(self, node: NodeUnderTest) -> None:
        obm = node.obm
        obm.power_off()
        assert obm.power_status() == "off"
        before = node.counters()
        obm.power_on()
        assert obm.power_status() == "on"
        assert node.since(before) == (1, 0)
        obm.power_on()  # already on: no firmware boot
        assert node.since(before) == (1, 0)
        obm.power_off()
        assert obm.power_status() == "off"
        obm.power_off()  # already off: still off, no error
        assert obm.power_status() == "off"

    @pytest.mark.parametrize("force", [False, True], ids=["cycle", "reset"])
    def test_power_cycle_boots_once_and_powers_on_if_off(self, node: NodeUnderTest, force: bool) -> None:
        obm = node.obm
        obm.power_off()
        before = node.counters()
        obm.power_cycle(force=force)
        assert obm.power_status() == "on"
        assert node.since(before) == (1, 0)
        obm.power_cycle(force=force)
        assert obm.power_status() == "on"
        assert node.since(before) == (2, 0)

    def test_nmi_needs_a_running_node(self, node: NodeUnderTest) -> None:
        obm = node.obm
        obm.power_off()
        before = node.counters()
        with pytest.raises(self.errors) as raised:
            obm.send_nmi()
        assert self.names_the_bmc(obm, str(raised.value)), raised.value
        assert node.since(before) == (0, 0)
        obm.power_on()
        if not self.has_nmi:
            with pytest.raises(OBMError) as raised:
                obm.send_nmi()
            assert self.names_the_bmc(obm, str(raised.value)), raised.value
            assert node.since(before) == (1, 0)
            return
        obm.send_nmi()
        assert node.since(before) == (1, 1)
        assert obm.power_status() == "on", "an NMI is not a reset"

    @pytest.mark.parametrize("device", BOOT_DEVICES)
    def test_set_bootdev(self, node: NodeUnderTest, device: str) -> None:
        node.obm.set_bootdev(device)
        if node.bootdev is not None:
            assert node.bootdev() == device

    @pytest.mark.parametrize("device", ["floppy", "", "PXE", "pxe ", "disk;reboot"])
    def test_a_bad_boot_device_is_refused_before_the_bmc(self, node: NodeUnderTest, device: str) -> None:
        node.obm.set_bootdev("disk")
        with pytest.raises(BadArgumentError):
            node.obm.set_bootdev(device)
        if node.bootdev is not None:
            assert node.bootdev() == "disk"

    def test_console(self, node: NodeUnderTest) -> None:
        node.obm.power_on()
        if not self.has_console:
            with pytest.raises(OBMError):
                node.obm.console()
            return
        assert isinstance(first_console_chunk(node.obm), bytes)

    def test_a_failing_bmc_fails_every_call_naming_itself(self, failing: OBMDriver) -> None:
        calls = _calls(failing)
        if not self.has_console:
            del calls["console"]
        for what, call in calls.items():
            with pytest.raises(self.errors) as raised:
                call()
            assert self.names_the_bmc(failing, str(raised.value)), (what, raised.value)

    def test_registered_by_name_and_urls(self, node: NodeUnderTest) -> None:
        cls = type(node.obm)
        assert obm_driver(cls.name) is cls
        for url in cls.type_urls:
            assert obm_driver(url) is cls
            assert obm_driver(url.replace("/haas/", "/hil/")) is cls

    def test_settings_survive_storage(self, node: NodeUnderTest) -> None:
        """The core stores ``model_dump()`` as JSON and validates it again when it builds the driver."""
        model = type(node.obm).settings_model
        assert model.model_validate(node.obm.settings.model_dump()) == node.obm.settings
