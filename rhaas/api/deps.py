"""Per-request dependencies: a database session, the authenticated caller, the backend, and input
hygiene checks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from rhaas.backends.base import Backend
from rhaas.config import AuthSettings
from rhaas.core.access import ADMIN, Caller
from rhaas.core.passwords import verify_password
from rhaas.db.models import User
from rhaas.errors import AuthorizationError, ValidationError

AUTH_REQUIRED = "Authentication failed. Authentication is required to use this service."


class Authenticator:
    """HTTP basic auth against database users.

    Verifying a password costs a deliberately slow KDF; a verified (user, password, stored hash) triple is
    remembered for ``cache_seconds`` so that each request does not pay it again. Changing a password
    changes the stored hash and so invalidates the entry. Unknown users and wrong passwords get the same
    401 answer.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._verified: dict[tuple[str, str, bytes], float] = {}
        self._lock = threading.Lock()

    def caller(self, db: Session, authorization: str | None) -> Caller:
        if self.settings.mode == "null":
            return ADMIN
        name, password = self._parse(authorization)
        user = db.scalar(select(User).where(User.label == name).options(selectinload(User.projects)))
        if user is None or not self._check(user, password):
            raise AuthorizationError(AUTH_REQUIRED)
        return Caller(user.label, user.is_admin, frozenset(p.label for p in user.projects))

    @staticmethod
    def _parse(authorization: str | None) -> tuple[str, str]:
        if not authorization or not authorization.lower().startswith("basic "):
            raise AuthorizationError(AUTH_REQUIRED)
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthorizationError(AUTH_REQUIRED) from exc
        name, sep, password = decoded.partition(":")
        if not sep or "\x00" in name:
            raise AuthorizationError(AUTH_REQUIRED)
        return name, password

    def _check(self, user: User, password: str) -> bool:
        key = (user.label, user.password_hash, hashlib.sha256(password.encode()).digest())
        now = time.monotonic()
        with self._lock:
            if self._verified.get(key, 0.0) > now:
                return True
        if not verify_password(password, user.password_hash):
            return False
        with self._lock:
            if len(self._verified) >= self.MAX_ENTRIES:
                self._verified.clear()
            self._verified[key] = now + self.settings.cache_seconds
        return True


def get_db(request: Request) -> Iterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as db:
        yield db


def get_backend(request: Request) -> Backend:
    """The instance's backend (network allocator, driver factories), built once by the app."""
    backend: Backend = request.app.state.backend
    return backend


def get_caller(request: Request, db: Session = Depends(get_db)) -> Caller:
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.caller(db, request.headers.get("authorization"))
    db.rollback()  # end the read transaction: on SQLite it holds the write lock
    return caller


async def check_input(request: Request) -> None:
    """HIL's rules beyond the body schema: no body on GET or on calls that take none; no unknown or
    empty query parameters."""
    route = request.scope.get("route")
    body = (await request.body()).strip()
    if "\x00" in request.url.path or "\x00" in str(request.query_params) or b"\\u0000" in body.lower():
        raise ValidationError(
            "Request arguments are not valid for this request: NUL characters are not allowed."
        )
    takes_body = getattr(route, "body_field", None) is not None
    if body and (request.method == "GET" or (not takes_body and body != b"{}")):
        raise ValidationError("Request arguments are not valid for this request: it takes no body.")
    dependant = getattr(route, "dependant", None)
    allowed = {p.alias for p in dependant.query_params} if dependant is not None else set()
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise ValidationError(f"Request arguments are not valid for this request: unknown {key[:40]!r}.")
        if value == "":
            raise ValidationError(f"Request arguments are not valid for this request: {key} is empty.")
