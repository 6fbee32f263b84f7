"""HTTP basic authentication against the database's users, with a cache of verified passwords.

One `Authenticator` lives in the application state; the `CurrentCaller` dependency (rhaas.api.deps)
asks it who is calling. It answers with a `Caller` or raises AuthorizationError; what the caller may do
is decided by core, not here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from rhaas.config import AuthSettings
from rhaas.core.access import ADMIN, Caller
from rhaas.core.passwords import verify_password
from rhaas.db.models import User
from rhaas.errors import AuthorizationError

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
