"""The HTTP seam of the client library: URLs, names, requests, and errors read back into rhaas classes.

Every call goes through `Connection.call` (or `Connection.stream`), which

* builds ``<endpoint>/v0/<path>`` from name segments that were checked and percent-encoded here
  (`segment`), so a name can never address a different route;
* follows redirects (HIL answers power calls with a 307 to obmd);
* returns the parsed JSON body, or None for an empty one;
* raises the `rhaas.errors` class the server named in its ``{"type", "msg"}`` body, a `ServerError`
  (HTTP 500) or `UpstreamError` (any other status) quoting an error body that is not HIL's JSON, or
  `UpstreamUnavailableError` naming the endpoint when it cannot be reached at all; errors of a 5xx,
  408 or 429 answer, and unreachable endpoints, are ``transient`` (worth trying again), others not.

It must not know any route: the resource modules (`projects`, `nodes`, ...) do.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from rhaas.errors import (
    ERRORS_BY_NAME,
    BadArgumentError,
    RhaasError,
    ServerError,
    UpstreamError,
    UpstreamUnavailableError,
)

#: Characters no name may hold. HIL's client allowed only [A-Za-z0-9 /$_.+!*'(),-]; rhaas names may be any
#: printable text (the server checks them), and everything else is percent-encoded.
_RESERVED = re.compile(r"[\x00-\x1f\x7f]")
_NO_BODY: Any = object()
#: Methods sent again, once, when the connection broke under them: reading twice changes nothing.
_RETRIED = frozenset({"GET", "HEAD"})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_unknown_error_classes: dict[str, type[RhaasError]] = {}


def check_name(kind: str, value: object, *, slashes: bool = False, empty_ok: bool = False) -> str:
    """Refuse a name that cannot be sent: control characters anywhere, and ``/`` except where ``slashes``
    (ports, channels, network ids). Raises BadArgumentError; returns the name."""
    if not isinstance(value, str):
        raise BadArgumentError(f"{kind} must be a string, not {type(value).__name__}.")
    if not value and not empty_ok:
        raise BadArgumentError(f"{kind} must not be empty.")
    bad = set(_RESERVED.findall(value))
    if "/" in value and not slashes:
        bad.add("/")
    if bad:
        shown = " ".join(repr(c) for c in sorted(bad))
        raise BadArgumentError(f"{kind} {value[:80]!r} may not contain: {shown}")
    return value


def segment(kind: str, value: object, *, slashes: bool = False) -> str:
    """A checked name, percent-encoded for use as one path segment (``/`` kept only if ``slashes``)."""
    name = check_name(kind, value, slashes=slashes)
    # "." and ".." would be folded away by URL normalisation and address another resource.
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BadArgumentError(f"{kind} {name[:80]!r} is not a usable name in a URL.")
    return quote(name, safe="/" if slashes else "")


def _error_class(type_name: str) -> type[RhaasError]:
    """The rhaas class for a wire error name; an unknown name gets a RhaasError subclass of that name,
    so callers can still catch RhaasError and messages still show the server's word."""
    if type_name in ERRORS_BY_NAME:
        return ERRORS_BY_NAME[type_name]
    if not _IDENTIFIER.match(type_name):
        return RhaasError
    if type_name not in _unknown_error_classes:
        _unknown_error_classes[type_name] = type(type_name, (RhaasError,), {"__module__": __name__})
    return _unknown_error_classes[type_name]


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text
    if "html" in response.headers.get("content-type", ""):
        text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def normalize_endpoint(endpoint: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing ``/`` or ``/v0`` (HIL users often add one)."""
    try:
        url = httpx.URL(endpoint.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise BadArgumentError(f"Endpoint {endpoint!r} is not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise BadArgumentError(f"Endpoint {endpoint!r} must look like http://host:port")
    text = str(url.copy_with(query=None, fragment=None)).rstrip("/")
    return text[: -len("/v0")] if text.endswith("/v0") else text


class Connection:
    """One endpoint, its credentials and its HTTP client; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.username = username
        self.timeout = timeout
        self._auth: httpx.BasicAuth | None = None
        if username is not None:
            self._auth = httpx.BasicAuth(username, password or "")
        self._owns_http = http is None
        self.http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=True,
            # Idle connections are dropped before a server's own keep-alive timeout (uvicorn: 5 s) would
            # close them under a request about to be sent.
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=2.0),
        )

    def url(self, path: str) -> str:
        return f"{self.endpoint}/v0/{path}"

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    # -- requests ---------------------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = _NO_BODY,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the parsed JSON body (None if empty) or raise an `rhaas.errors` class.

        ``timeout``: seconds for this request, when the server's work takes longer than usual."""
        request = self._build(method, path, json, params, timeout)
        response = self._send(request, stream=False)
        if not response.is_success:
            self._raise(response)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(
                f"{self.endpoint} answered {method} /v0/{path} with a body that is not JSON: "
                f"{_snippet(response)!r}"
            ) from None

    def put_bytes(self, path: str, content: Iterable[bytes]) -> Any:
        """PUT raw bytes (streamed, no read timeout while they go); return the parsed JSON answer."""
        request = self.http.build_request(
            "PUT", self.url(path), content=content, headers={"Content-Type": "application/octet-stream"}
        )
        request.extensions["timeout"] = httpx.Timeout(self.timeout, write=None).as_dict()
        response = self._send(request, stream=False)
        if not response.is_success:
            self._raise(response)
        return response.json()

    def get_bytes(self, path: str, headers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        """GET a raw body, yielding it in chunks as it arrives; errors are raised before the first one."""
        request = self.http.build_request("GET", self.url(path), headers=headers)
        return self._byte_chunks(self._open_stream(request), path)

    def _open_stream(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with no read timeout and return the open response; raise on an error answer."""
        request.extensions["timeout"] = httpx.Timeout(self.timeout, read=None).as_dict()
        response = self._send(request, stream=True)
        if not response.is_success:
            try:
                response.read()
            finally:
                response.close()
            self._raise(response)
        return response

    def _byte_chunks(self, response: httpx.Response, path: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._unavailable(exc, "GET", path) from exc
        finally:
            response.close()

    def stream(self, method: str, path: str) -> Generator[str, None, None]:
        """Send one request and return its body as text chunks, as they arrive (no read timeout).

        The request is made now, so errors are raised here rather than on the first iteration."""
        response = self._open_stream(self._build(method, path, _NO_BODY, None))
        return self._chunks(response, method, path)

    def _chunks(self, response: httpx.Response, method: str, path: str) -> Generator[str, None, None]:
        try:
            yield from response.iter_text()
        except httpx.TransportError as exc:
            raise self._unavailable(exc, method, path) from exc
        finally:
            response.close()

    def _build(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, str] | None,
        timeout: float | None = None,
    ) -> httpx.Request:
        kwargs: dict[str, Any] = {"params": params, "timeout": timeout or self.timeout}
        if json is not _NO_BODY:
            kwargs["json"] = json
        return self.http.build_request(method, self.url(path), **kwargs)

    def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        auth = self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT
        method, path = request.method, request.url.path
        try:
            try:
                return self.http.send(request, auth=auth, follow_redirects=True, stream=stream)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if method not in _RETRIED:
                    raise
                # A kept-alive connection the server closed as the request left: a new one, once.
                return self.http.send(request, auth=auth, follow_redirects=True, stream=stream)
        except httpx.TransportError as exc:
            raise self._unavailable(exc, method, path) from exc
        except httpx.RequestError as exc:  # too many redirects, undecodable body
            raise UpstreamError(f"{self.endpoint}: {method} {path} failed: {exc}") from exc

    def _unavailable(self, exc: httpx.TransportError, method: str, path: str) -> UpstreamUnavailableError:
        if isinstance(exc, httpx.TimeoutException):
            what = f"did not answer within {self.timeout:g} s ({type(exc).__name__})"
        else:
            what = f"cannot be reached: {exc or type(exc).__name__}"
        return UpstreamUnavailableError(f"{self.endpoint} {what} ({method} {path})")

    def _raise(self, response: httpx.Response) -> None:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        # A 5xx (a crash page, a proxy's 502/503/504, an upstream's own upstream away), a 408 or a 429 may
        # pass by itself; a 4xx in HIL's shape is the server's definite answer.
        transient = status >= 500 or status in (408, 429)
        if isinstance(data, dict) and isinstance(data.get("type"), str) and "msg" in data:
            raise _error_class(data["type"])(str(data["msg"]), transient=transient)
        # A bare 500 is the server's own crash page (HIL answers its ServerErrors that way); anything else
        # without an API body (a proxy's 502, a wrong endpoint's 404) says nothing about the call.
        request = response.request
        msg = (
            f"{self.endpoint} answered HTTP {status} {response.reason_phrase} to {request.method} "
            f"{request.url.path}: {_snippet(response)!r}"
        )
        if status == 500:
            raise ServerError(msg, transient=transient)
        error = UpstreamError(msg, transient=transient)
        error.http_status = status  # a HIL without the route: HTML 404 / 405
        raise error


class Resource:
    """Base of the resource groups (``client.node``, ``client.project``, ...)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
