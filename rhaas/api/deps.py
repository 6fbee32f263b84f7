"""Per-request dependencies, said once as typed aliases for route signatures:

- ``DB``: a database session (`get_db`) that commits when the route returns without raising, *before*
  the response is sent, so a client that gets its answer finds the change committed, and a commit that
  fails answers with the error instead (a 409 on a conflict, a 503 on an outage). A route that raises is
  rolled back. After a successful commit the session's `after_commit` hooks run (wake the networking
  worker, wake the provisioning ticker, notify a waiting agent): never for a change that was not kept.
- ``CurrentCaller``: the authenticated caller (`get_caller`).
- ``State``: the application's `AppState`.
- ``CurrentBackend``: the instance's backend (network allocator, driver factories), built once by the app.

and `check_input`, HIL's input hygiene rules, which every JSON router runs. No business rules here:
routes call core, and core never commits a route's work for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, ParamSpec

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from rhaas.api.state import AppState
from rhaas.backends.base import Backend
from rhaas.core.access import Caller
from rhaas.errors import ValidationError

P = ParamSpec("P")

#: Where a session keeps the hooks to run once it has committed (``Session.info`` is per session).
_AFTER_COMMIT = "rhaas.after_commit"


async def app_state(request: Request) -> AppState:
    return AppState.of(request.app)


State = Annotated[AppState, Depends(app_state)]


def after_commit(db: Session, hook: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``hook(*args, **kwargs)`` once ``db``'s work has been committed by `unit_of_work` (in the
    order registered); never if it is rolled back instead."""
    db.info.setdefault(_AFTER_COMMIT, []).append(functools.partial(hook, *args, **kwargs))


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed when the block ends without raising, then its `after_commit`
    hooks run; rolled back if it raises (the exception goes on)."""
    with sessions() as db:
        yield db  # if the block raises, closing the session rolls its work back
        db.commit()
        hooks: list[Callable[[], object]] = db.info.pop(_AFTER_COMMIT, [])
    for hook in hooks:
        hook()


def get_db(state: State) -> Iterator[Session]:
    with unit_of_work(state.sessions) as db:
        yield db


# scope="function": FastAPI runs the end of `get_db` (the commit) when the route returns, before the
# response is sent; its default scope would commit after the client already had its 200.
DB = Annotated[Session, Depends(get_db, scope="function")]


def get_backend(state: State) -> Backend:
    return state.backend


CurrentBackend = Annotated[Backend, Depends(get_backend)]


def get_caller(request: Request, db: DB, state: State) -> Caller:
    caller = state.authenticator.caller(db, request.headers.get("authorization"))
    db.rollback()  # end the read transaction: on SQLite it holds the write lock
    return caller


CurrentCaller = Annotated[Caller, Depends(get_caller)]


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
