"""Database users (HIL's ``hil.ext.auth.database``): accounts, the admin flag, project membership."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rhaas.core.access import Caller, check_label, get_project, get_user, require_admin
from rhaas.core.passwords import hash_password
from rhaas.db.models import User
from rhaas.errors import DuplicateError, IllegalStateError, NotFoundError


def list_users(db: Session, caller: Caller) -> dict[str, Any]:
    require_admin(caller)
    users = db.scalars(select(User).order_by(User.label)).all()
    return {u.label: {"is_admin": u.is_admin, "projects": [p.label for p in u.projects]} for u in users}


def create_user(db: Session, caller: Caller, name: str, password: str, is_admin: bool = False) -> None:
    require_admin(caller)
    check_label("User", name)
    if db.scalar(select(User.id).where(User.label == name)) is not None:
        raise DuplicateError(f"User {name} already exists.")
    db.add(User(label=name, password_hash=hash_password(password), is_admin=is_admin))


def delete_user(db: Session, caller: Caller, name: str) -> None:
    require_admin(caller)
    db.delete(get_user(db, name))


def set_admin(db: Session, caller: Caller, name: str, is_admin: bool) -> None:
    require_admin(caller)
    user = get_user(db, name)
    if user.label == caller.name:
        raise IllegalStateError("You cannot change your own admin status.")
    user.is_admin = is_admin


def set_password(db: Session, caller: Caller, name: str, password: str) -> None:
    """Admins may set anyone's password; a user may set their own."""
    if caller.name != name:
        require_admin(caller)
    get_user(db, name).password_hash = hash_password(password)


def add_project(db: Session, caller: Caller, name: str, project: str) -> None:
    require_admin(caller)
    user, proj = get_user(db, name), get_project(db, project)
    if proj in user.projects:
        raise DuplicateError(f"User {name} is already in project {project}.")
    user.projects.append(proj)


def remove_project(db: Session, caller: Caller, name: str, project: str) -> None:
    require_admin(caller)
    user, proj = get_user(db, name), get_project(db, project)
    if proj not in user.projects:
        raise NotFoundError(f"User {name} is not in project {project}.")
    user.projects.remove(proj)


def bootstrap_admin(db: Session, name: str, password: str) -> None:
    """Create the first admin (``rhaas-admin create-admin-user``); update the password if it exists."""
    check_label("User", name)
    user = db.scalar(select(User).where(User.label == name))
    if user is None:
        db.add(User(label=name, password_hash=hash_password(password), is_admin=True))
    else:
        user.password_hash, user.is_admin = hash_password(password), True
