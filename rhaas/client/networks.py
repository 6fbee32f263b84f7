"""``client.network``: networks and their access lists (``/v0/networks``, ``/v0/network/<network>``)."""

from __future__ import annotations

from typing import Any

from rhaas.client.base import Resource, check_name, segment


def _network(network: str) -> str:
    return f"network/{segment('network', network)}"


class Networks(Resource):
    def list(self) -> dict[str, Any]:
        """``{name: {"network_id": ..., "projects": [...] or None}}`` (public ones only for non-admins)."""
        result: dict[str, Any] = self._conn.call("GET", "networks")
        return result

    def show(self, network: str) -> dict[str, Any]:
        result: dict[str, Any] = self._conn.call("GET", _network(network))
        return result

    def create(self, network: str, owner: str, access: str, net_id: str) -> None:
        """``owner``: a project or ``"admin"``; ``access``: a project or ``""`` (public); ``net_id``: ``""``
        to allocate one from the pool, or an explicit id (admin only)."""
        body = {
            "owner": check_name("owner", owner),
            "access": check_name("access", access, empty_ok=True),
            "net_id": check_name("net_id", net_id, slashes=True, empty_ok=True),
        }
        self._conn.call("PUT", _network(network), json=body)

    def delete(self, network: str) -> None:
        self._conn.call("DELETE", _network(network))

    def grant_access(self, network: str, project: str) -> None:
        self._conn.call("PUT", f"{_network(network)}/access/{segment('project', project)}")

    def revoke_access(self, network: str, project: str) -> None:
        self._conn.call("DELETE", f"{_network(network)}/access/{segment('project', project)}")

    def list_attachments(self, network: str, project: str | None = None) -> dict[str, Any]:
        """``{node: {"nic", "channel", "project"}}``, only nodes of ``project`` if given."""
        params = {"project": check_name("project", project)} if project is not None else None
        result: dict[str, Any] = self._conn.call("GET", f"{_network(network)}/attachments", params=params)
        return result
