"""Routes: /auth/basic/… (database users) and /active_extensions."""

from __future__ import annotations

from fastapi import APIRouter, Response

from rhaas.api.deps import DB, CurrentCaller
from rhaas.api.routes.common import ok, reply
from rhaas.api.schemas import ProjectBody, UserCreateBody, UserPatchBody
from rhaas.core import users
from rhaas.errors import ValidationError

router = APIRouter(tags=["users"])

EXTENSIONS = [
    "hil.ext.auth.database",
    "hil.ext.network_allocators.vlan_pool",
    "hil.ext.obm.ipmi",
    "hil.ext.obm.mock",
    "hil.ext.switches.mock",
    "hil.ext.switches.ovs",
    "rhaas.ext.power_nmi",
    "rhaas.ext.port_state",
    "rhaas.ext.connect_nodes",
    "rhaas.ext.pool",
    "rhaas.ext.long_poll",
]


@router.get("/active_extensions")
def active_extensions(caller: CurrentCaller) -> Response:
    """Any authenticated caller (HIL: admins only): a recursive instance is an ordinary project member of
    its upstream, and must learn which extensions it may use there."""
    return reply(EXTENSIONS)


@router.get("/auth/basic/users")
def list_users(db: DB, caller: CurrentCaller) -> Response:
    return reply(users.list_users(db, caller))


@router.put("/auth/basic/user/{user}")
def create_user(user: str, body: UserCreateBody, db: DB, caller: CurrentCaller) -> Response:
    users.create_user(db, caller, user, body.password, body.is_admin)
    return ok()


@router.delete("/auth/basic/user/{user}")
def delete_user(user: str, db: DB, caller: CurrentCaller) -> Response:
    users.delete_user(db, caller, user)
    return ok()


@router.patch("/auth/basic/user/{user}")
def patch_user(user: str, body: UserPatchBody, db: DB, caller: CurrentCaller) -> Response:
    if body.is_admin is None and body.password is None:
        raise ValidationError("Request arguments are not valid for this request: give is_admin or password.")
    if body.is_admin is not None:
        users.set_admin(db, caller, user, body.is_admin)
    if body.password is not None:
        users.set_password(db, caller, user, body.password)
    return ok()


@router.post("/auth/basic/user/{user}/add_project")
def add_project(user: str, body: ProjectBody, db: DB, caller: CurrentCaller) -> Response:
    users.add_project(db, caller, user, body.project)
    return ok()


@router.post("/auth/basic/user/{user}/remove_project")
def remove_project(user: str, body: ProjectBody, db: DB, caller: CurrentCaller) -> Response:
    users.remove_project(db, caller, user, body.project)
    return ok()
