"""``client.project``: projects and the nodes they hold (``/v0/projects``, ``/v0/project/<project>/...``)."""

from __future__ import annotations

from typing import Any

from rhaas.client.base import Resource, check_name, segment

#: A list of object names (an alias, because the classes below have a method named ``list``).
Names = list[str]


class Projects(Resource):
    def list(self) -> Names:
        """All project names (admin)."""
        result: Names = self._conn.call("GET", "projects")
        return result

    def create(self, project: str) -> None:
        self._conn.call("PUT", f"project/{segment('project', project)}")

    def delete(self, project: str) -> None:
        self._conn.call("DELETE", f"project/{segment('project', project)}")

    def connect(self, project: str, node: str) -> None:
        """Claim a free node for the project."""
        path = f"project/{segment('project', project)}/connect_node"
        self._conn.call("POST", path, json={"node": check_name("node", node)})

    def detach(self, project: str, node: str) -> None:
        """Give a node back to the free pool (its OBM must be disabled and its networks detached)."""
        path = f"project/{segment('project', project)}/detach_node"
        self._conn.call("POST", path, json={"node": check_name("node", node)})

    def nodes_in(self, project: str) -> Names:
        result: Names = self._conn.call("GET", f"project/{segment('project', project)}/nodes")
        return result

    def networks_in(self, project: str) -> Names:
        """Names of the networks the project has access to."""
        result: Names = self._conn.call("GET", f"project/{segment('project', project)}/networks")
        return result

    def connect_nodes(self, project: str, count: int) -> Names:
        """rhaas extension: claim any ``count`` free nodes at once; returns their names."""
        path = f"project/{segment('project', project)}/connect_nodes"
        result: Names = self._conn.call("POST", path, json={"count": count})
        return result


class Extensions(Resource):
    def list_active(self) -> Names:
        """Names of the server's active extensions (admin)."""
        result: Names = self._conn.call("GET", "active_extensions")
        return result


class Pool(Resource):
    """rhaas extension: the free pool of a recursive instance (admin)."""

    def show(self) -> dict[str, Any]:
        result: dict[str, Any] = self._conn.call("GET", "pool")
        return result

    def grow(self, count: int) -> Names:
        """Claim up to ``count`` nodes from the upstream; returns the names added."""
        result: Names = self._conn.call("POST", "pool/grow", json={"count": count})
        return result

    def shrink(self, count: int) -> Names:
        """Give up to ``count`` idle nodes back to the upstream; returns the names released."""
        result: Names = self._conn.call("POST", "pool/shrink", json={"count": count})
        return result

    def reconcile(self, fix: bool = False) -> dict[str, Any]:
        """Compare with the upstream; repair the drift found if ``fix``."""
        result: dict[str, Any] = self._conn.call("POST", "pool/reconcile", json={"fix": fix})
        return result
