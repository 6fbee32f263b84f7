"""What a lab BMC drives, and how every lab BMC counts what happened to its node.

A lab BMC (the IPMI one in `rhaas.lab.vbmc`, the Redfish one in `rhaas.lab.redfish`) serves one `Machine`:
the lab's QEMU node or, in tests, a `FakeMachine`. Both put a `NodeControl` between their protocol and the
machine, so that both count firmware boots the same way (every power-on from off, every power cycle, every
reset, including the resets a QEMU guest causes itself, from QEMU's RESET events) and NMIs, and publish
them with the power state in the same JSON state file (`BMCState`) that tests, benchmarks and ``rhaas lab
status`` read.

This module is lab equipment: nothing in the service imports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Boot devices a `Machine` is told about (the OBM drivers' names).
BOOT_DEVICES = ("pxe", "disk", "none")


class Machine(Protocol):
    """What a lab BMC drives. Calls come one at a time; each should return promptly (start a boot, do
    not wait for it). Raising makes the BMC answer the request with an error."""

    def power_on(self) -> None:
        """Power on (only called while off): firmware boots from the boot device."""

    def power_off(self) -> None:
        """Cut the power at once (only called while on)."""

    def reset(self) -> None:
        """Hard reset (only called while on): firmware boots again."""

    def is_on(self) -> bool: ...

    def nmi(self) -> None:
        """Deliver a non-maskable interrupt to the running OS (only called while on)."""

    def set_boot_device(self, device: str) -> None:
        """Set the boot device for the next firmware boot: one of `BOOT_DEVICES`."""

    def get_boot_device(self) -> str: ...


@dataclass
class FakeMachine:
    """A machine in memory, for tests. ``events`` records every call; ``fail`` makes every action
    raise (as a machine that cannot start would), so the BMC answers with an error. With a
    ``console_log`` it appends a line per event there, as a real node's serial console would."""

    on: bool = False
    boot_device: str = "none"
    events: list[str] = field(default_factory=list)
    fail: bool = False
    console_log: Path | None = None

    def _act(self, event: str, console: str | None = None) -> None:
        if self.fail:
            raise RuntimeError(f"fake machine: {event} failed (injected)")
        self.events.append(event)
        if console and self.console_log is not None:
            with open(self.console_log, "ab") as serial:
                serial.write(f"fake machine: {console}\r\n".encode())

    def power_on(self) -> None:
        self._act("power_on", f"power on, booting from {self.boot_device}")
        self.on = True

    def power_off(self) -> None:
        self._act("power_off", "power off")
        self.on = False

    def reset(self) -> None:
        self._act("reset", f"reset, booting from {self.boot_device}")

    def is_on(self) -> bool:
        return self.on

    def nmi(self) -> None:
        self._act("nmi", "NMI received")

    def set_boot_device(self, device: str) -> None:
        self._act(f"boot_device {device}")
        self.boot_device = device

    def get_boot_device(self) -> str:
        return self.boot_device


@dataclass(frozen=True)
class BMCState:
    """What a lab BMC publishes in its state file."""

    port: int
    pid: int
    serving: bool
    power: str  # "on" | "off"
    boot_device: str
    boots: int  # firmware boots: power-ons from off, power cycles, and every reset whoever caused it
    nmis: int
    updated: float  # time.time() of the last write
    guest_resets: int = 0  # the resets among ``boots`` that the node's OS caused itself

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BMCState:
        """The state last written to ``path`` (raises OSError or ValueError if there is none)."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a field is missing
            raise ValueError(f"{path}: not a virtual BMC state file: {exc}") from exc


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, so that a reader sees the old file or the new, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NodeIsOff(Exception):
    """The action needs a running node (a reset, a power cycle, an NMI) and the node is off."""


class NodeControl:
    """The actions of a BMC on its `Machine`, one at a time, with the firmware boots and NMIs counted
    and the state file rewritten after each.

    A restarted BMC carries on counting from the state file it finds (benchmarks and tests compare counts
    across its life). A machine that reports its own resets (QEMU's RESET events, through an ``on_reset``
    attribute) is counted from those: that sees the resets the guest causes itself (reboot, panic=N, a
    triple fault), not only the BMC's.
    """

    def __init__(
        self, machine: Machine, state_file: str | os.PathLike[str], *, port: int, label: str = "BMC"
    ) -> None:
        self.machine = machine
        self.state_file = Path(state_file)
        self.port = port
        self.label = label
        try:
            previous = BMCState.read(self.state_file)
            self.boots, self.nmis, self.guest_resets = previous.boots, previous.nmis, previous.guest_resets
        except (OSError, ValueError):
            self.boots = self.nmis = self.guest_resets = 0
        self.serving = False
        #: Held for each action (and state write): actions come one at a time.
        self.lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._machine_counts_resets = hasattr(machine, "on_reset")
        if self._machine_counts_resets:
            machine.on_reset = self._reset_seen  # type: ignore[attr-defined]
            watch = getattr(machine, "watch_resets", None)
            if watch is not None and machine.is_on():
                watch()  # a node left running by an earlier BMC process
        self.write_state()

    def act(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` alone, then write the state file whatever happened; raises what it raised."""
        with self.lock:
            try:
                action()
            finally:
                self.write_state()
        log.info("%s on port %d: %s", self.label, self.port, what)

    # -- the actions: each raises NodeIsOff, or what the machine raised --------------------------------

    def power_on(self) -> None:
        self.act("power on", self._power_on)

    def power_off(self) -> None:
        self.act("power off", self._power_off)

    def power_cycle(self) -> None:
        self.act("power cycle", self._power_cycle)

    def reset(self) -> None:
        self.act("reset", self._reset)

    def nmi(self) -> None:
        self.act("NMI", self._nmi)

    def set_boot_device(self, device: str) -> None:
        if device not in BOOT_DEVICES:
            raise ValueError(f"boot device must be one of {BOOT_DEVICES}, not {device!r}")
        self.act(f"boot device {device}", lambda: self.machine.set_boot_device(device))

    def is_on(self) -> bool:
        return self.machine.is_on()

    def _power_on(self) -> None:
        if not self.machine.is_on():
            self.machine.power_on()
            self.boots += 1

    def _power_off(self) -> None:
        if self.machine.is_on():
            self.machine.power_off()

    def _power_cycle(self) -> None:
        if not self.machine.is_on():
            raise NodeIsOff("power cycle")
        self.machine.power_off()
        self.machine.power_on()
        self.boots += 1

    def _reset(self) -> None:
        if not self.machine.is_on():
            raise NodeIsOff("reset")
        self.machine.reset()
        if not self._machine_counts_resets:
            self.boots += 1

    def _reset_seen(self, data: dict[str, Any]) -> None:
        """A reset the machine reported (from its own thread, possibly inside one of our actions)."""
        with self._count_lock:
            self.boots += 1
            if data.get("guest"):
                self.guest_resets += 1
            self.write_state()

    def _nmi(self) -> None:
        if not self.machine.is_on():
            raise NodeIsOff("NMI")
        self.machine.nmi()
        self.nmis += 1

    # -- the state file -------------------------------------------------------------------------------

    def state(self) -> BMCState:
        return BMCState(
            port=self.port,
            pid=os.getpid(),
            serving=self.serving,
            power="on" if self.machine.is_on() else "off",
            boot_device=self.machine.get_boot_device(),
            boots=self.boots,
            nmis=self.nmis,
            updated=time.time(),
            guest_resets=self.guest_resets,
        )

    def write_state(self) -> None:
        write_atomically(self.state_file, dataclasses.asdict(self.state()))

    def set_serving(self, serving: bool) -> None:
        """Publish whether the BMC answers requests (written at once)."""
        with self.lock:
            self.serving = serving
            self.write_state()


__all__ = [
    "BOOT_DEVICES",
    "BMCState",
    "FakeMachine",
    "Machine",
    "NodeControl",
    "NodeIsOff",
    "write_atomically",
]


class Server(Protocol):
    """A BMC's server loop: `serve_forever` until `request_stop` (callable from a signal handler)."""

    def serve_forever(self) -> None: ...

    def request_stop(self) -> None: ...


def serve_until_signalled(bmc: Server) -> None:
    """Serve in this thread until SIGTERM or SIGINT asks the BMC to stop (either protocol's BMC)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        bmc.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bmc.serve_forever()
