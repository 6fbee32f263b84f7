"""Small helpers shared by the route modules."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse


def ok() -> Response:
    """HIL answers most changes with 200 and an empty body."""
    return Response(status_code=200)


def reply(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def wake_worker(request: Request) -> None:
    wake = getattr(request.app.state, "wake_worker", None)
    if wake is not None:
        wake()


def wake_provisioning(request: Request) -> None:
    ticker = getattr(request.app.state, "provisioning_ticker", None)
    if ticker is not None:
        ticker.wake()
