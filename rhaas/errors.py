"""The rhaas domain exceptions.

Every error a caller can cause or see is one of these. They know nothing of HTTP: `rhaas.api.errors`
holds the one table that maps them to status codes, and the client library raises the same classes back
from the server's ``{"type": "<ClassName>", "msg": "..."}`` bodies. Class names are part of the wire
format (HIL's names), so renaming one is an API change.

    RhaasError
    ├── ValidationError          400  the request's shape is wrong (unknown key, wrong type, bad JSON)
    │   └── RangeNotSatisfiableError 416  a download's Range lies outside the content
    ├── BadArgumentError         400  well-formed but illegal value (channel, net_id, port name, type)
    ├── AuthorizationError       401  not authenticated, or not allowed
    ├── NotFoundError            404  the named object does not exist
    ├── DuplicateError           409  the object (or connection) already exists
    ├── BlockedError             409  something depends on it / it is busy
    │   └── AllocationError      409  a pool (VLANs, nodes) is exhausted
    ├── ProjectMismatchError     409  the object is not in the project the call needs
    ├── IllegalStateError        409  the operation is not legal in the object's current state
    ├── DriverError              502  a device (switch, BMC) failed or answered garbage
    │   ├── SwitchError
    │   └── OBMError
    ├── UpstreamError            502  the upstream HIL/rhaas answered with an error
    │   └── UpstreamUnavailableError 503  the upstream could not be reached
    └── ServerError              500  a bug; the message shown to callers is generic

An error may be ``transient``: the failure may pass by itself (an upstream that could not be reached,
timed out, or answered a 5xx), so the same call is worth making again later. A definite refusal (a 4xx
in HIL's error shape) is not. Whoever raises an error says which; a wrapper keeps the flag it wraps.
"""

from __future__ import annotations


class RhaasError(Exception):
    """Base class of every rhaas error. ``str(err)`` is the message shown to the caller."""

    #: The failure may pass by itself: asking again later may succeed (see the module's docstring).
    transient: bool = False

    def __init__(self, msg: str = "", *, transient: bool | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        return self.msg


class ValidationError(RhaasError):
    """The request's arguments do not match what the call accepts."""


class RangeNotSatisfiableError(ValidationError):
    """A download asked for a byte range the content does not have."""


class BadArgumentError(RhaasError):
    """An argument is well-formed but not a legal value here."""


class AuthorizationError(RhaasError):
    """The caller is not authenticated, or may not do this."""


class NotFoundError(RhaasError):
    """The named object does not exist."""


class DuplicateError(RhaasError):
    """The object, membership or connection already exists."""


class BlockedError(RhaasError):
    """Something else depends on the object, or an operation on it is still pending."""


class AllocationError(BlockedError):
    """A pool of resources (network ids, free nodes) has nothing left to give."""


class ProjectMismatchError(RhaasError):
    """The object does not belong to the project the operation needs."""


class IllegalStateError(RhaasError):
    """The operation is not legal in the object's current state."""


class DriverError(RhaasError):
    """A device driver failed: the device timed out, refused, or answered garbage.

    Drivers raise a subclass naming the device, chained from the library's exception.
    """


class SwitchError(DriverError):
    """A switch driver failed."""


class OBMError(DriverError):
    """An out-of-band management (BMC) driver failed."""


class UpstreamError(RhaasError):
    """The upstream HIL-compatible service answered a call with an error.

    ``http_status``: the HTTP status of an answer without HIL's error body (HIL answers a route it does
    not have with an HTML 404, a wrong method with an HTML 405), set by the client library; None otherwise.
    """

    http_status: int | None = None


class UpstreamUnavailableError(UpstreamError):
    """The upstream HIL-compatible service could not be reached."""

    transient = True


class ServerError(RhaasError):
    """An unexpected failure inside rhaas (a bug)."""


#: Every error class by its wire name, for the client library and the API error table.
ERRORS_BY_NAME: dict[str, type[RhaasError]] = {
    cls.__name__: cls
    for cls in (
        RhaasError,
        ValidationError,
        RangeNotSatisfiableError,
        BadArgumentError,
        AuthorizationError,
        NotFoundError,
        DuplicateError,
        BlockedError,
        AllocationError,
        ProjectMismatchError,
        IllegalStateError,
        DriverError,
        SwitchError,
        OBMError,
        UpstreamError,
        UpstreamUnavailableError,
        ServerError,
    )
}
