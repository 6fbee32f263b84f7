"""``client.switch`` and ``client.port``: switches and their ports (admin only).

Port names may contain ``/`` (``gi1/0/1``); HIL routes them as ``<path:port>``, so they are sent with
their slashes as they are and every other reserved character percent-encoded.
"""

from __future__ import annotations

from typing import Any

from rhaas.client.base import Resource, check_name, segment


def _switch(switch: str) -> str:
    return f"switch/{segment('switch', switch)}"


def _port(switch: str, port: str) -> str:
    return f"{_switch(switch)}/port/{segment('port', port, slashes=True)}"


class Switches(Resource):
    def list(self) -> list[str]:
        result: list[str] = self._conn.call("GET", "switches")
        return result

    def show(self, switch: str) -> dict[str, Any]:
        """``{"name", "ports": [{"label": ...}], "capabilities": [...]}``."""
        result: dict[str, Any] = self._conn.call("GET", _switch(switch))
        return result

    def register(self, switch: str, type: str, **fields: Any) -> None:
        """Register a switch: ``type`` is ``"ovs"``, ``"mock"`` or a HIL type URL; ``fields`` are the
        driver's settings (ovs: ``bridge``, ``db``; mock: ``hostname``, ``username``, ``password``, ...)."""
        self._conn.call("PUT", _switch(switch), json={"type": type, **fields})

    def delete(self, switch: str) -> None:
        self._conn.call("DELETE", _switch(switch))


class Ports(Resource):
    def register(self, switch: str, port: str) -> None:
        self._conn.call("PUT", _port(switch, port))

    def delete(self, switch: str, port: str) -> None:
        self._conn.call("DELETE", _port(switch, port))

    def show(self, switch: str, port: str) -> dict[str, Any]:
        """``{"node", "nic", "networks": {channel: network}}``, or ``{}`` if no NIC is wired to it."""
        result: dict[str, Any] = self._conn.call("GET", _port(switch, port))
        return result

    def state(self, switch: str, port: str) -> dict[str, Any]:
        """rhaas extension: what the device itself says the port carries: ``{"native", "tagged"}``."""
        result: dict[str, Any] = self._conn.call("GET", f"{_port(switch, port)}/state")
        return result

    def connect_nic(self, switch: str, port: str, node: str, nic: str) -> None:
        """Record that ``node``'s ``nic`` is cabled to this port."""
        body = {"node": check_name("node", node), "nic": check_name("nic", nic)}
        self._conn.call("POST", f"{_port(switch, port)}/connect_nic", json=body)

    def detach_nic(self, switch: str, port: str) -> None:
        self._conn.call("POST", f"{_port(switch, port)}/detach_nic")

    def revert(self, switch: str, port: str) -> dict[str, Any]:
        """Queue removing every network from the port; returns ``{"status_id": ...}``."""
        result: dict[str, Any] = self._conn.call("POST", f"{_port(switch, port)}/revert")
        return result
