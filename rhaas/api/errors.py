"""The one table from domain errors to HTTP status codes, and the handlers that write HIL's error JSON.

Bodies are always ``{"type": "<ErrorClass>", "msg": "..."}``. A 5xx caused by a bug logs the traceback
with a request id and tells the caller only the id.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException

from rhaas import errors as e

log = logging.getLogger("rhaas.api")

STATUS: dict[type[e.RhaasError], int] = {
    e.ValidationError: 400,
    e.RangeNotSatisfiableError: 416,
    e.BadArgumentError: 400,
    e.AuthorizationError: 401,
    e.NotFoundError: 404,
    e.DuplicateError: 409,
    e.BlockedError: 409,
    e.ProjectMismatchError: 409,
    e.IllegalStateError: 409,
    e.DriverError: 502,
    e.UpstreamError: 502,
    e.UpstreamUnavailableError: 503,
    e.ServerError: 500,
    e.RhaasError: 500,
}


def status_for(exc: e.RhaasError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(type_name: str, msg: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="rhaas"'} if status == 401 else None
    return JSONResponse({"type": type_name, "msg": msg}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "Request arguments are not valid for this request: " + "; ".join(parts)[:500]


def install(app: FastAPI) -> None:
    @app.exception_handler(e.RhaasError)
    async def _domain(_request: Request, exc: e.RhaasError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        return error_response(type(exc).__name__, exc.msg, status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response("ValidationError", _describe_validation(exc), 400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response("NotFoundError", f"No such route: {request.url.path[:200]}", 404)
        if exc.status_code == 405:
            return error_response("ValidationError", f"Method {request.method} is not allowed here.", 405)
        return error_response("ValidationError", str(exc.detail), exc.status_code)

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity conflict: %s", exc.orig)
        return error_response("BlockedError", "A concurrent change conflicted with this one; retry.", 409)

    @app.exception_handler(DataError)
    async def _data(_request: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL character, which PostgreSQL cannot store or compare: the caller's input, not a bug.
        log.info("refused data: %s", exc.orig)
        return error_response("ValidationError", "An argument holds a value the database cannot store.", 400)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error("database error (request %s): %s", request_id, exc)
        return error_response("ServerError", f"The database is unavailable (request {request_id}).", 503)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error("internal error (request %s)", request_id, exc_info=exc)
        return error_response("ServerError", f"Internal server error (request {request_id}).", 500)
