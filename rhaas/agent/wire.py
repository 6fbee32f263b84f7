"""A minimal HTTP/1.1 client over a socket, for the agent (standard library only).

Why not ``http.client``: it imports the ``email`` package, which imports ``random``, which reads
``os.urandom`` at import time. In an FPBL that has just booted, the kernel's random pool is not ready yet
and that read waits for it (about a second under TCG; see docs/fast-provisioning.md), and the imports
alone cost another quarter of a second there. The agent needs one request per connection, a status, a
few headers and a body (``Content-Length``, chunked, or until the server closes), which is this module.

With a pin (the SHA-256 of the server's certificate, which the FPBL is booted with) the connection is
TLS, and nothing is sent before the server has shown that certificate: the pin, not a certificate
authority, says who the server is (docs/fast-provisioning.md, "Trust").
"""

from __future__ import annotations

import hashlib
import hmac
import socket
from typing import Any

MAX_LINE = 65536
MAX_HEADERS = 100


class HttpError(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class ImpostorError(OSError):
    """The server's TLS certificate is not the pinned one: it is not this instance. Nothing was sent."""


_tls: list[Any] = []  # the one client context, made on first use (importing ssl loads OpenSSL)


def _tls_context() -> Any:
    if not _tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # No certificate authority vouches for the server: the pin does, checked in `pinned`.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _tls.append(context)
    return _tls[0]


def pinned(sock: socket.socket, where: str, pin: str) -> socket.socket:
    """``sock`` wrapped in TLS, once the server has proven it holds the key of the certificate whose
    SHA-256 is ``pin`` (the handshake checks the proof; this checks the certificate). Raises
    `ImpostorError` (the socket closed, nothing sent) for any other certificate."""
    tls = _tls_context().wrap_socket(sock)
    der = tls.getpeercert(binary_form=True)
    seen = hashlib.sha256(der).hexdigest() if der else "none"
    if not hmac.compare_digest(seen, pin.lower()):
        tls.close()
        raise ImpostorError(
            f"REFUSED {where}: its certificate has SHA-256 {seen}, this FPBL pins {pin}; it is not this"
            " instance's agents' listener (nothing was sent to it)"
        )
    return tls


class Response:
    """An answer whose body is read as it arrives; `close` it (or use ``with``)."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        line = self._line()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP status line: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if not line.strip():
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HttpError(f"malformed header line {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()
        else:
            raise HttpError(f"more than {MAX_HEADERS} header lines")
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._chunk_left = 0
        self._left: int | None = None  # bytes left of a Content-Length body; None: until close
        if method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            self._left = 0
        elif not self._chunked and "content-length" in self.headers:
            try:
                self._left = int(self.headers["content-length"])
            except ValueError:
                raise HttpError(f"bad Content-Length {self.headers['content-length']!r}") from None
            if self._left < 0:
                raise HttpError(f"bad Content-Length {self._left}")
        self._done = self._left == 0

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HttpError("header line too long")
        if not line:
            raise HttpError("the server closed the connection before answering")
        return line

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all of it if ``size`` < 0); b"" at its end."""
        if size < 0:
            out = bytearray()
            while chunk := self.read(1 << 20):
                out += chunk
            return bytes(out)
        if self._done or size == 0:
            return b""
        if self._chunked:
            return self._read_chunked(size)
        if self._left is None:
            data = self._file.read(size)
            self._done = not data
            return data
        data = self._file.read(min(size, self._left))
        if not data:
            raise HttpError(f"the body ended {self._left} bytes early")
        self._left -= len(data)
        self._done = self._left == 0
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            text = self._line().split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {text[:20]!r}") from None
            if self._chunk_left == 0:
                while self._line().strip():  # trailers, then the blank line
                    pass
                self._done = True
                return b""
        data = self._file.read(min(size, self._chunk_left))
        if not data:
            raise HttpError("the body ended inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._file.read(2) != b"\r\n":
            raise HttpError("a chunk does not end with CRLF")
        return data

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    method: str, host: str, port: int, target: str, headers: dict[str, str], body: bytes | None = None,
    timeout: float = 30.0, pin: str | None = None,
) -> Response:  # fmt: skip
    """Send one request (``Connection: close``) and return the answer with its status and headers read;
    with ``pin``, over TLS to the server holding that certificate only (see `pinned`).

    Raises OSError: the connection failed or timed out, `ImpostorError` for a server that is not the
    pinned one, or `HttpError` for an answer that is not HTTP."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if pin is not None:
            sock = pinned(sock, f"{host}:{port}", pin)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return Response(sock, method)
    except BaseException:
        sock.close()
        raise
