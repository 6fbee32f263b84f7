"""``client.user``: the database-auth users (``/v0/auth/basic/...``, admin only)."""

from __future__ import annotations

from typing import Any

from rhaas.client.base import Resource, check_name, segment


def _user(user: str) -> str:
    return f"auth/basic/user/{segment('user', user)}"


class Users(Resource):
    def list(self) -> dict[str, Any]:
        """``{name: {"is_admin": bool, "projects": [...]}}``."""
        result: dict[str, Any] = self._conn.call("GET", "auth/basic/users")
        return result

    def create(self, user: str, password: str, is_admin: bool = False) -> None:
        self._conn.call("PUT", _user(user), json={"password": password, "is_admin": is_admin})

    def delete(self, user: str) -> None:
        self._conn.call("DELETE", _user(user))

    def set_admin(self, user: str, is_admin: bool) -> None:
        self._conn.call("PATCH", _user(user), json={"is_admin": is_admin})

    def add_project(self, user: str, project: str) -> None:
        self._conn.call(
            "POST", f"{_user(user)}/add_project", json={"project": check_name("project", project)}
        )

    def remove_project(self, user: str, project: str) -> None:
        body = {"project": check_name("project", project)}
        self._conn.call("POST", f"{_user(user)}/remove_project", json=body)
