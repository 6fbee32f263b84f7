"""``client.node``: nodes, their NICs, metadata, OBM, power and console, and their networks."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from rhaas.client.base import Resource, check_name, segment


def _node(node: str) -> str:
    return f"node/{segment('node', node)}"


class Nodes(Resource):
    def list(self, is_free: str = "all") -> list[str]:
        """Node names: ``"free"`` for those in no project, anything else (``"all"``) for all."""
        result: list[str] = self._conn.call("GET", f"nodes/{segment('is_free', is_free)}")
        return result

    def show(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = self._conn.call("GET", _node(node))
        return result

    def register(
        self,
        node: str,
        obm_type: str,
        host: str,
        user: str,
        password: str,
        port: int | None = None,
        metadata: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Register a node with an in-tree OBM: ``obm_type`` is ``"ipmi"``, ``"redfish"``, ``"mock"`` or a
        HIL type URL. ``settings`` are the OBM type's other fields (Redfish: ``scheme``, ``verify``, …)."""
        obm: dict[str, Any] = {"type": obm_type, "host": host, "user": user, "password": password}
        if port is not None:
            obm["port"] = port
        obm.update(settings or {})
        body: dict[str, Any] = {"obm": obm}
        if metadata is not None:
            body["metadata"] = metadata
        self._conn.call("PUT", _node(node), json=body)

    def register_obmd(
        self, node: str, uri: str, admin_token: str, metadata: dict[str, Any] | None = None
    ) -> None:
        """Register a node the way HIL master does, with an obmd URI and admin token."""
        body: dict[str, Any] = {"obmd": {"uri": uri, "admin_token": admin_token}}
        if metadata is not None:
            body["metadata"] = metadata
        self._conn.call("PUT", _node(node), json=body)

    def delete(self, node: str) -> None:
        self._conn.call("DELETE", _node(node))

    # -- NICs and networks ----------------------------------------------------------------------------
    def add_nic(self, node: str, nic: str, macaddr: str) -> None:
        self._conn.call("PUT", f"{_node(node)}/nic/{segment('nic', nic)}", json={"macaddr": macaddr})

    def remove_nic(self, node: str, nic: str) -> None:
        self._conn.call("DELETE", f"{_node(node)}/nic/{segment('nic', nic)}")

    def connect_network(
        self, node: str, nic: str, network: str, channel: str | None = None
    ) -> dict[str, Any]:
        """Queue attaching ``network`` to the NIC (on the network's default channel if ``channel`` is None).

        Returns ``{"status_id": ...}``; see `Client.wait_networking_action`."""
        body = {"network": check_name("network", network)}
        if channel is not None:
            body["channel"] = check_name("channel", channel, slashes=True)
        path = f"{_node(node)}/nic/{segment('nic', nic)}/connect_network"
        result: dict[str, Any] = self._conn.call("POST", path, json=body)
        return result

    def detach_network(self, node: str, nic: str, network: str) -> dict[str, Any]:
        """Queue detaching ``network`` from the NIC; returns ``{"status_id": ...}``."""
        path = f"{_node(node)}/nic/{segment('nic', nic)}/detach_network"
        result: dict[str, Any] = self._conn.call(
            "POST", path, json={"network": check_name("network", network)}
        )
        return result

    def show_networking_action(self, status_id: str, wait: float | None = None) -> dict[str, Any]:
        """``{"status": "PENDING"|"DONE"|"ERROR", "node", "nic", "new_network", "type", "channel"}``.

        ``wait`` (rhaas extension): the server answers as soon as the action is no longer PENDING, or
        after ``wait`` seconds at most. A HIL server refuses the parameter (ValidationError).
        """
        params = {"wait": f"{wait:g}"} if wait is not None else None
        result: dict[str, Any] = self._conn.call(
            "GET", f"networking_action/{segment('status_id', status_id)}", params=params
        )
        return result

    # -- metadata -------------------------------------------------------------------------------------
    def metadata_set(self, node: str, label: str, value: Any) -> None:
        """Set a metadata label to any JSON value."""
        self._conn.call("PUT", f"{_node(node)}/metadata/{segment('label', label)}", json={"value": value})

    def metadata_delete(self, node: str, label: str) -> None:
        self._conn.call("DELETE", f"{_node(node)}/metadata/{segment('label', label)}")

    # -- OBM, power, console --------------------------------------------------------------------------
    def enable_obm(self, node: str) -> None:
        self._conn.call("PUT", f"{_node(node)}/obm", json={"enabled": True})

    def disable_obm(self, node: str) -> None:
        self._conn.call("PUT", f"{_node(node)}/obm", json={"enabled": False})

    def power_on(self, node: str) -> None:
        self._conn.call("POST", f"{_node(node)}/power_on")

    def power_off(self, node: str) -> None:
        self._conn.call("POST", f"{_node(node)}/power_off")

    def power_cycle(self, node: str, force: bool = False) -> None:
        """Reboot; ``force`` resets at once instead of asking the OS to shut down first."""
        self._conn.call("POST", f"{_node(node)}/power_cycle", json={"force": force})

    def power_status(self, node: str) -> dict[str, Any]:
        """``{"power_status": "on"|"off"|...}``."""
        result: dict[str, Any] = self._conn.call("GET", f"{_node(node)}/power_status")
        return result

    def power_nmi(self, node: str) -> None:
        """rhaas extension: send a diagnostic interrupt (NMI)."""
        self._conn.call("POST", f"{_node(node)}/power_nmi")

    def set_bootdev(self, node: str, bootdev: str) -> None:
        """Next boot device: ``"pxe"``, ``"disk"`` or ``"none"`` (IPMI)."""
        self._conn.call("PUT", f"{_node(node)}/boot_device", json={"bootdev": bootdev})

    # -- fast provisioning (rhaas extension) -----------------------------------------------------------

    def enroll_fpbl(self, node: str, agent_url: str | None = None) -> dict[str, Any]:
        """Enrol a free node for fast provisioning (admin); returns the FPBL's ``cmdline`` words."""
        body = {"agent_url": agent_url} if agent_url else {}
        result: dict[str, Any] = self._conn.call("PUT", f"{_node(node)}/fpbl", json=body)
        return result

    def provision(self, node: str, image: str, **seed: Any) -> str:
        """Deploy ``image`` on a ready node of the caller's project; returns the job id. ``seed``: first-boot
        data for cloud-init (``ssh_keys`` a list of public key lines, ``user_data``, ``network_config``) and
        boot entry overrides (``kernel``, ``initrd`` paths in the image, ``cmdline``); None values are left
        out."""
        body = {"image": image, **{k: v for k, v in seed.items() if v is not None}}
        result: dict[str, Any] = self._conn.call("POST", f"{_node(node)}/provision", json=body)
        return str(result["job_id"])

    def provision_group(self, nodes: Sequence[str], image: str, **seed: Any) -> dict[str, Any]:
        """Deploy ``image`` on every one of ``nodes`` (all in the caller's project) in one request: all are
        queued, or none is. Returns ``{"group_id", "jobs": {node: job id}}``; ``seed`` as for `provision`."""
        body = {"nodes": list(nodes), "image": image, **{k: v for k, v in seed.items() if v is not None}}
        result: dict[str, Any] = self._conn.call("POST", "provision_group", json=body)
        return result

    def show_provision_group(self, group: str) -> dict[str, Any]:
        """A provision group's aggregated progress (counts, the slowest nodes, every node's job)."""
        result: dict[str, Any] = self._conn.call("GET", f"provision_group/{check_name('group', group)}")
        return result

    def provisioning(self, node: str) -> dict[str, Any]:
        """The node's provisioning state, agent facts and job history."""
        result: dict[str, Any] = self._conn.call("GET", f"{_node(node)}/provisioning")
        return result

    def show_provision_job(self, job: str) -> dict[str, Any]:
        result: dict[str, Any] = self._conn.call("GET", f"provision_job/{check_name('job', job)}")
        return result

    def show_console(self, node: str) -> Generator[str, None, None]:
        """The serial console as text chunks as they arrive; close the generator to hang up."""
        return self._conn.stream("GET", f"{_node(node)}/console")
