"""Power, boot device, NMI and console of a node, through its BMC driver from the backend.

Each call checks that the caller controls the node (its project; a free node's admins) and that its
OBM is enabled (`rhaas.core.nodes.node_obm`), then ends the read transaction before the driver is called:
no transaction stays open while a BMC, or an upstream, answers. A node's power is not recorded: this
module changes no rows. Routes call these functions, never a driver.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session

from rhaas.backends.base import Backend
from rhaas.core.access import Caller
from rhaas.core.nodes import node_obm
from rhaas.drivers.obm.base import OBMDriver


def _obm(db: Session, caller: Caller, backend: Backend, node_name: str) -> OBMDriver:
    driver = node_obm(db, caller, backend, node_name)
    db.rollback()  # no transaction stays open while the BMC answers
    return driver


def power_on(db: Session, caller: Caller, backend: Backend, node_name: str) -> None:
    _obm(db, caller, backend, node_name).power_on()


def power_off(db: Session, caller: Caller, backend: Backend, node_name: str) -> None:
    _obm(db, caller, backend, node_name).power_off()


def power_cycle(db: Session, caller: Caller, backend: Backend, node_name: str, force: bool = False) -> None:
    """Reboot through firmware: ``force`` resets at once; otherwise a power cycle (on if off)."""
    _obm(db, caller, backend, node_name).power_cycle(force)


def send_nmi(db: Session, caller: Caller, backend: Backend, node_name: str) -> None:
    """Pulse the node's diagnostic interrupt (an NMI to its running OS)."""
    _obm(db, caller, backend, node_name).send_nmi()


def power_status(db: Session, caller: Caller, backend: Backend, node_name: str) -> str:
    """``"on"`` or ``"off"``, as the BMC says."""
    return _obm(db, caller, backend, node_name).power_status()


def set_bootdev(db: Session, caller: Caller, backend: Backend, node_name: str, bootdev: str) -> None:
    """Set the node's next boot device. An illegal device is refused before the node is even looked up."""
    OBMDriver.check_bootdev(bootdev)
    _obm(db, caller, backend, node_name).set_bootdev(bootdev)


def console(db: Session, caller: Caller, backend: Backend, node_name: str) -> Iterator[bytes]:
    """The node's serial console as a stream of chunks (close it when done: that frees the BMC's
    console for the next reader). Drivers without a console raise OBMError."""
    return _obm(db, caller, backend, node_name).console()
