"""The obmd OBM driver: a node whose BMC is reached through obmd, HIL master's power daemon.

obmd (CCI-MOC/obmd) holds each node's BMC address and credentials itself; rhaas holds only the node's
URL in obmd (``uri``, e.g. ``https://obmd:8080/node/n1``) and obmd's admin token. What each method sends:

    enable          POST   <uri>/token, basic auth ``admin:<admin_token>`` -> {"token": "<node token>"}
    disable         DELETE <uri>/token, same auth (obmd then refuses the old token, drops its console)
    power_on/off    POST   <uri>/power_on, <uri>/power_off                      ?token=<node token>
    power_cycle     POST   <uri>/power_cycle {"force": bool}                    ?token=
    power_status    GET    <uri>/power_status -> {"power_status": "on"|"off"}   ?token=
    set_bootdev     PUT    <uri>/boot_device {"bootdev": "pxe"|"disk"|"none"}   ?token=
    console         GET    <uri>/console (a stream until the reader closes it)  ?token=

The node token is obtained when the node's OBM is enabled and stored with the node's settings (as HIL
stores ``obmd_node_token``); it is ``None`` while the OBM is disabled. obmd has no NMI call: `send_nmi`
raises OBMError. Both tokens are secrets: no error message holds them, and the ``httpx`` logger's
request lines (which print whole URLs at INFO) have the node token blanked out by `RedactTokens`.
Every failure (no answer, a refusal, garbage) raises `OBMError` naming ``uri``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rhaas.drivers.obm.base import OBMDriver
from rhaas.errors import OBMError

#: Seconds a call waits for obmd (which waits for the BMC) before raising OBMError.
DEFAULT_TIMEOUT = 30.0

_TOKEN_QUERY = re.compile(r"([?&]token=)[^&\s\"']*")


class RedactTokens(logging.Filter):
    """Blanks ``token=…`` query values in log records (httpx logs every request's URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_redact(a) for a in args)
        record.msg = _redact(record.msg)
        return True


def _redact(value: Any) -> Any:
    if isinstance(value, str | httpx.URL):
        text = str(value)
        if "token=" in text:
            return _TOKEN_QUERY.sub(r"\1<redacted>", text)
    return value


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, RedactTokens) for f in _httpx_log.filters):
    _httpx_log.addFilter(RedactTokens())


class ObmdSettings(BaseModel):
    """HIL master's ``{"obmd": {"uri", "admin_token"}}``, plus the node token while the OBM is enabled."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, max_length=2048, description="the node's URL in obmd")
    admin_token: str = Field(min_length=1, max_length=1024, repr=False)
    token: str | None = Field(default=None, max_length=1024, repr=False)

    @field_validator("uri")
    @classmethod
    def _http_url(cls, uri: str) -> str:
        try:
            url = httpx.URL(uri)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError("uri is not a URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("uri must be an http or https URL with a host")
        if url.query or url.fragment or url.userinfo:
            raise ValueError("uri must have no query, fragment or credentials")
        return uri.rstrip("/")


class ObmdOBM(OBMDriver):
    name = "obmd"
    settings_model = ObmdSettings
    registration_form = "obmd"
    has_credentials = False
    settings: ObmdSettings

    def __init__(self, settings: ObmdSettings, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(settings)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))

    @property
    def address(self) -> str:
        return f"obmd at {self.settings.uri}"

    # -- enable / disable (obmd's admin calls) -----------------------------------------------------

    def enable(self) -> ObmdSettings:
        data = self._json(self._admin("POST", "getting a node token"), "getting a node token")
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise OBMError(f"{self.address} answered a token request without a token")
        return self.settings.model_copy(update={"token": token})

    def disable(self) -> ObmdSettings:
        self._admin("DELETE", "invalidating the node token")
        return self.settings.model_copy(update={"token": None})

    def _admin(self, method: str, what: str) -> httpx.Response:
        auth = ("admin", self.settings.admin_token)
        return self._request(method, "/token", what, auth=auth)

    # -- token calls ---------------------------------------------------------------------------------

    def power_on(self) -> None:
        self._node("POST", "/power_on", "powering on")

    def power_off(self) -> None:
        self._node("POST", "/power_off", "powering off")

    def power_cycle(self, force: bool = False) -> None:
        self._node("POST", "/power_cycle", "power-cycling", json={"force": force})

    def power_status(self) -> str:
        data = self._json(self._node("GET", "/power_status", "reading power status"), "power status")
        status = data.get("power_status") if isinstance(data, dict) else None
        if not isinstance(status, str) or status.lower() not in ("on", "off"):
            raise OBMError(f"{self.address} answered a power status that is neither on nor off")
        return status.lower()

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        self._node("PUT", "/boot_device", "setting the boot device", json={"bootdev": bootdev})

    def send_nmi(self) -> None:
        raise OBMError(f"{self.address}: obmd has no call to send an NMI.")

    def nmi_unavailable(self) -> str:
        """obmd has no NMI: a fast-provisioning return of this node takes the reboot path from the start."""
        return f"{self.address}: obmd has no call to send an NMI"

    def console(self) -> Iterator[bytes]:
        """obmd's console stream; it opens at the first ``next`` and closes with the iterator."""
        token = self._token("reading the console")
        return self._console(token)

    def _console(self, token: str) -> Iterator[bytes]:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as client,
                client.stream("GET", self.settings.uri + "/console", params={"token": token}) as response,
            ):
                self._check(response, "reading the console")
                yield b""  # connected: from here on, closing the iterator closes obmd's console
                yield from response.iter_raw()
        except httpx.HTTPError as exc:
            raise OBMError(f"{self.address} failed reading the console: {type(exc).__name__}") from None

    # -- plumbing ------------------------------------------------------------------------------------

    def _token(self, what: str) -> str:
        if not self.settings.token:
            raise OBMError(f"{self.address}: no node token for {what}; enable the node's OBM first.")
        return self.settings.token

    def _node(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        return self._request(method, path, what, params={"token": self._token(what)}, **kwargs)

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = httpx.request(method, self.settings.uri + path, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            # The exception's text may hold the URL with the node token: name only its class.
            raise OBMError(f"{self.address} failed {what}: {type(exc).__name__}") from None
        self._check(response, what)
        return response

    def _check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 300:
            return
        why = {
            400: "refused the request",
            401: "refused the node token (disable and enable the node's OBM)",
            404: "does not know this node (or refused the admin token)",
        }.get(code, f"answered HTTP {code}")
        raise OBMError(f"{self.address} {why} when {what}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise OBMError(f"{self.address} answered {what} with something that is not JSON") from None
