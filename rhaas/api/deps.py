"""Per-request dependencies: a database session, the authenticated caller, and input hygiene checks."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from rhaas.api.auth import Authenticator
from rhaas.core.access import Caller
from rhaas.errors import ValidationError


def get_db(request: Request) -> Iterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as db:
        yield db


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
