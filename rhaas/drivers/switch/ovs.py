"""The Open vSwitch switch driver: programs the VLANs of ports on one OVS bridge with ``ovs-vsctl``."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess

from pydantic import AliasChoices, Field

from rhaas.drivers.switch.base import SwitchDriver, SwitchSettings
from rhaas.errors import BadArgumentError, SwitchError
from rhaas.ports import PortState

#: The tag of an empty port. 802.1Q reserves VLAN 4095, so no network ever gets it (`set_port` refuses it).
DEAD_VLAN = 4095
_VLAN = re.compile(r"[0-9]{1,4}")
#: A Linux interface name: at most 15 characters.
_IFNAME = "[A-Za-z0-9][A-Za-z0-9_.-]{0,14}"


class OVSSwitchSettings(SwitchSettings):
    bridge: str = Field(
        validation_alias=AliasChoices("bridge", "ovs_bridge"),  # HIL's ovs switch calls it ovs_bridge
        pattern=f"^{_IFNAME}$",  # pydantic's (Rust) regex: $ is the end of the text
        description="the OVS bridge whose ports this switch programs",
    )
    db: str | None = Field(
        default=None, description="ovsdb-server to talk to, as ovs-vsctl --db= takes it; None: the system's"
    )
    timeout: float = Field(default=5.0, gt=0, le=120, description="seconds each ovs-vsctl call may take")


class OVSSwitch(SwitchDriver):
    """One Open vSwitch bridge, driven by ``ovs-vsctl`` (local, or a remote ovsdb-server via ``db``).

    A port is an OVS port name on ``bridge`` (a Linux interface name: at most 15 characters). VLANs are
    the port's ``tag``, ``trunks`` and ``vlan_mode`` columns:

    ==============================  =====================================================================
    PortState                       OVS port
    ==============================  =====================================================================
    native only                     ``vlan_mode=access tag=<native>``
    tagged only                     ``vlan_mode=trunk trunks=<tagged>`` (a nativeless trunk)
    native and tagged               ``vlan_mode=native-untagged tag=<native> trunks=<tagged + native>``
    empty                           ``vlan_mode=access tag=4095 protected=true``
    ==============================  =====================================================================

    An empty port must carry nothing, which OVS has no direct setting for: a port without ``tag`` or
    ``trunks`` trunks *every* VLAN. So an empty port is an access port of the reserved VLAN 4095, which
    no network can have, and it is *protected*: OVS drops traffic between two protected ports, so empty
    ports cannot reach each other either. (The bridge's own internal port trunks every VLAN by default
    and so still sees their frames, tagged 4095; rhaas never puts anything on it.)

    Each `set_port` is one ovsdb transaction that first checks the port exists on this bridge, so a
    change is all or nothing; ovs-vsctl returns once ovs-vswitchd has applied it. `get_port` reads the
    columns back from the database and raises SwitchError for settings rhaas never makes and a PortState
    cannot express, above all a port that trunks every VLAN (a new port OVS added with no VLAN settings).

    Every failure (no such port or bridge, database unreachable, ovs-vswitchd not applying the change in
    ``timeout`` seconds, ovs-vsctl missing) raises SwitchError naming the switch and port, chained from
    the original exception. A VLAN outside 1-4094 is a BadArgumentError.
    """

    name = "ovs"
    type_urls = ("http://schema.massopencloud.org/haas/v0/switches/ovs",)
    settings_model = OVSSwitchSettings
    port_pattern = re.compile(rf"{_IFNAME}\Z")  # not $: in Python it also matches before a final newline

    settings: OVSSwitchSettings

    # -- the SwitchDriver interface --------------------------------------------------------------------
    def set_port(self, port: str, state: PortState) -> None:
        self.validate_port_name(port)
        columns = self._columns(port, state)
        bridge = self.settings.bridge
        self._vsctl(
            port,
            # The checks stop ovs-vsctl before it commits anything: br-exists when the bridge does not
            # exist, port-to-br when the port does not, --may-exist add-port when it is on another bridge.
            *("--", "br-exists", bridge),
            *("--", "port-to-br", port),
            *("--", "--may-exist", "add-port", bridge, port),
            *("--", "set", "port", port, *columns),
        )

    def get_port(self, port: str) -> PortState:
        self.validate_port_name(port)
        out = self._vsctl(
            port,
            *("--", "br-exists", self.settings.bridge),
            *("--", "port-to-br", port),
            *("--", "get", "port", port, "vlan_mode", "tag", "trunks", "protected"),
        )
        lines = out.splitlines()
        if len(lines) != 5:
            raise SwitchError(f"{self._where(port)}: unexpected ovs-vsctl output {out!r}")
        bridge, vlan_mode, tag, trunks, protected = (line.strip() for line in lines)
        if bridge != self.settings.bridge:
            raise SwitchError(f"{self._where(port)}: the port is on bridge {bridge}")
        try:
            return self._state(port, vlan_mode, tag, trunks, protected == "true")
        except ValueError as exc:
            raise SwitchError(f"{self._where(port)}: unexpected ovs-vsctl output {out!r}") from exc

    # -- PortState <-> OVS columns ---------------------------------------------------------------------
    def _vlan(self, port: str, vlan: str) -> int:
        if not _VLAN.fullmatch(vlan) or not 1 <= int(vlan) < DEAD_VLAN:
            raise BadArgumentError(f"{self._where(port)}: {vlan!r} is not a VLAN id (1-4094).")
        return int(vlan)

    def _columns(self, port: str, state: PortState) -> list[str]:
        native = None if state.native is None else self._vlan(port, state.native)
        tagged = sorted(self._vlan(port, vlan) for vlan in state.tagged)
        if native is not None and native in tagged:
            raise BadArgumentError(f"{self._where(port)}: VLAN {native} cannot be both native and tagged.")
        if native is None and not tagged:
            return ["vlan_mode=access", f"tag={DEAD_VLAN}", "trunks=[]", "protected=true"]
        if not tagged:
            return ["vlan_mode=access", f"tag={native}", "trunks=[]", "protected=false"]
        if native is None:
            return ["vlan_mode=trunk", "tag=[]", f"trunks={_set(tagged)}", "protected=false"]
        trunks = sorted([*tagged, native])
        return ["vlan_mode=native-untagged", f"tag={native}", f"trunks={_set(trunks)}", "protected=false"]

    def _state(self, port: str, vlan_mode: str, tag: str, trunks: str, protected: bool) -> PortState:
        native = None if tag == "[]" else int(tag)
        trunked = {int(v) for v in trunks.strip("[]").split(",") if v.strip()}
        # OVS's own default when vlan_mode is unset: access if the port has a tag, else trunk.
        mode = vlan_mode.strip('"') if vlan_mode != "[]" else ("access" if native is not None else "trunk")
        if mode == "access" and native is not None:
            if native == DEAD_VLAN and protected:
                return PortState()
            return PortState(native=str(native))
        if mode in ("trunk", "native-untagged") and not trunked:
            raise SwitchError(
                f"{self._where(port)}: the port trunks every VLAN (OVS's default for a port without trunks);"
                " reset it."
            )
        if mode == "trunk":
            return PortState(tagged=frozenset(str(v) for v in trunked))
        if mode == "native-untagged" and native is not None:
            return PortState(native=str(native), tagged=frozenset(str(v) for v in trunked - {native}))
        setting = f"vlan_mode={vlan_mode} tag={tag} trunks={trunks}"
        raise SwitchError(f"{self._where(port)}: {setting} is not a setting rhaas makes.")

    # -- ovs-vsctl -------------------------------------------------------------------------------------
    def _where(self, port: str) -> str:
        return f"ovs switch {self.switch_name} (bridge {self.settings.bridge}), port {port}"

    def _vsctl(self, port: str, *args: str) -> str:
        seconds = math.ceil(self.settings.timeout)
        binary = shutil.which("ovs-vsctl")
        argv = [binary or "ovs-vsctl", f"--timeout={seconds}"]
        if self.settings.db is not None:
            argv.append(f"--db={self.settings.db}")
        try:
            done = subprocess.run(
                [*argv, *args], capture_output=True, text=True, timeout=seconds + 2, check=True
            )
        except FileNotFoundError as exc:
            raise SwitchError(f"{self._where(port)}: ovs-vsctl is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise SwitchError(f"{self._where(port)}: ovs-vsctl did not finish in {seconds} s") from exc
        except subprocess.CalledProcessError as exc:
            if exc.returncode == -signal.SIGALRM:
                # ovs-vsctl's own --timeout: the database or ovs-vswitchd did not answer in time.
                reason = f"no answer from Open vSwitch in {seconds} s"
            elif exc.returncode == 2 and not exc.stderr:  # br-exists says no
                reason = f"no bridge named {self.settings.bridge}"
            else:
                reason = (exc.stderr or "").strip().removeprefix("ovs-vsctl: ") or f"exit {exc.returncode}"
            raise SwitchError(f"{self._where(port)}: {reason}") from exc
        return done.stdout


def _set(vlans: list[int]) -> str:
    return "[" + ",".join(str(v) for v in vlans) + "]"
