"""Small helpers shared by the route modules: HIL's answers. (Sessions, callers, the application state
and after-commit wake-ups are dependencies: rhaas.api.deps.)"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse


def ok() -> Response:
    """HIL answers most changes with 200 and an empty body."""
    return Response(status_code=200)


def reply(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)
