"""A minimal HTTP/1.1 client over a socket, for the agent (standard library only).

Why not ``http.client``: it imports the ``email`` package, which imports ``random``, which reads
``os.urandom`` at import time. In an FPBL that has just booted, the kernel's random pool is not ready yet
and that read waits for it (about a second under TCG; see docs/fast-provisioning.md), and the imports
alone cost another quarter of a second there. The agent needs a status, a few headers and a body
(``Content-Length``, chunked, or until the server closes), which is this module.

`request` sends one request on its own connection (``Connection: close``). A `Pool` keeps connections
open between requests (HTTP/1.1 keep-alive): a deploy fetches its image as a hundred or more chunks, and
on a node's emulated or slow CPU a new TLS handshake for each of them costs more than the chunk's bytes.

With a pin (the SHA-256 of the server's certificate, which the FPBL is booted with) the connection is
TLS, and nothing is sent before the server has shown that certificate: the pin, not a certificate
authority, says who the server is (docs/fast-provisioning.md, "Trust").
"""

from __future__ import annotations

import hashlib
import hmac
import select
import socket
import threading
import time
from typing import Any

MAX_LINE = 65536
MAX_HEADERS = 100
# A kept connection is dropped after this many idle seconds, before the server's own keep-alive timeout
# (uvicorn's: 5 s) would close it under a request in flight.
KEEP_IDLE_SECONDS = 2.0


class HttpError(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class NoAnswer(HttpError):
    """The server closed the connection before the first byte of an answer."""


class ImpostorError(OSError):
    """The server's TLS certificate is not the pinned one: it is not this instance. Nothing was sent."""


_tls: list[Any] = []  # the one client context, made on first use (importing ssl loads OpenSSL)

# Without the CPU's AES instructions, AES-GCM is several times slower than ChaCha20-Poly1305 (under QEMU's
# default vCPU here, 33 against 209 MB/s), and a deploy decrypts every byte of its image. TLS 1.3 in
# Python leaves the suite to the server's order (AES first), so such a CPU asks for TLS 1.2 with
# ECDHE and ChaCha20-Poly1305 only: forward secrecy and an AEAD cipher all the same.
NO_AES_CIPHERS = "ECDHE+CHACHA20"


def has_aes(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists the AES instructions (x86 ``aes``; ARMv8 ``aes`` as well)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            return "aes" in value.split()
    return True  # not known: keep the default


def _cpu_has_aes() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return has_aes(f.read())
    except OSError:
        return True


def client_context(aes: bool) -> Any:
    """The agent's TLS client context: no certificate authority (the pin vouches for the server; see
    `pinned`), TLS 1.2 at least; on a CPU without AES instructions, ChaCha20-Poly1305 (see above)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not aes:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(NO_AES_CIPHERS)
    return context


def _tls_context() -> Any:
    if not _tls:
        _tls.append(client_context(_cpu_has_aes()))
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

    def __init__(
        self, sock: socket.socket, method: str, rfile: Any = None, release: Any = None
    ) -> None:  # fmt: skip
        self._sock = sock
        self._file = rfile if rfile is not None else sock.makefile("rb")
        self._release = release  # called with (sock, file) instead of closing them, when reusable
        line = self._line(NoAnswer)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP status line: {line[:80]!r}")
        self.status = int(parts[1])
        self._http11 = parts[0] == b"HTTP/1.1"
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

    def _line(self, closed: type[HttpError] = HttpError) -> bytes:
        """The next line; ``closed`` is raised if the connection ended before it."""
        line = self._file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HttpError("header line too long")
        if not line:
            raise closed("the server closed the connection before answering")
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

    @property
    def reusable(self) -> bool:
        """The whole body was read, its end was not the connection's end, and the server keeps it open."""
        if not self._http11 or "close" in self.headers.get("connection", "").lower():
            return False
        return self._done and (self._chunked or self._left is not None)

    def close(self) -> None:
        if self._release is not None and self.reusable:
            release, self._release = self._release, None
            release(self._sock, self._file)
            return
        self._release = None
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
    sock = connect(host, port, timeout, pin)
    try:
        sock.sendall(_head(method, host, port, target, headers, body, keep=False))
        return Response(sock, method)
    except BaseException:
        sock.close()
        raise


def connect(host: str, port: int, timeout: float, pin: str | None = None) -> socket.socket:
    """A new connection to ``host:port``: TLS to the pinned server with ``pin`` (see `pinned`)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if pin is None:
        return sock
    try:
        return pinned(sock, f"{host}:{port}", pin)
    except BaseException:
        sock.close()
        raise


def _head(
    method: str, host: str, port: int, target: str, headers: dict[str, str], body: bytes | None, keep: bool
) -> bytes:  # fmt: skip
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    if not keep:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Pool:
    """Connections kept open between requests (HTTP/1.1 keep-alive), by server and pin; thread-safe:
    concurrent requests each take their own connection.

    A connection goes back to the pool only when its answer's body was read to its end and the server did
    not say it closes; an idle one is dropped after `KEEP_IDLE_SECONDS`, or when the server closed it
    meanwhile. If a kept connection turns out closed before any answer arrives (the server's idle timeout
    won the race), the request is sent again once, on a new connection.
    """

    def __init__(self, idle_seconds: float = KEEP_IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int, str | None], list[tuple[socket.socket, Any, float]]] = {}
        self.opened = 0  # connections made, for tests and figures

    def request(
        self, method: str, host: str, port: int, target: str, headers: dict[str, str],
        body: bytes | None = None, timeout: float = 30.0, pin: str | None = None,
    ) -> Response:  # fmt: skip
        """As `request`, on a kept connection when one is open; `close` the answer to give it back."""
        key = (host, port, pin)
        message = _head(method, host, port, target, headers, body, keep=True)
        kept = self._take(key)
        if kept is not None:
            try:
                return self._send(key, *kept, message, method, timeout)
            except (HttpError, ConnectionError) as exc:
                if not _unanswered(exc):
                    raise
        sock = connect(host, port, timeout, pin)
        with self._lock:
            self.opened += 1
        return self._send(key, sock, sock.makefile("rb"), message, method, timeout)

    def _send(
        self, key: tuple[str, int, str | None], sock: socket.socket, rfile: Any, message: bytes, method: str,
        timeout: float,
    ) -> Response:  # fmt: skip
        """Send ``message`` on the connection and read the answer's head; the connection closed if that
        fails."""
        try:
            sock.settimeout(timeout)
            sock.sendall(message)
            return Response(sock, method, rfile, lambda s, f: self._give(key, s, f))
        except BaseException:
            rfile.close()
            sock.close()
            raise

    def _take(self, key: tuple[str, int, str | None]) -> tuple[socket.socket, Any] | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                sock, rfile, since = idle.pop()
            if now - since <= self.idle_seconds and not _closed_meanwhile(sock):
                return sock, rfile
            rfile.close()
            sock.close()

    def _give(self, key: tuple[str, int, str | None], sock: socket.socket, rfile: Any) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append((sock, rfile, time.monotonic()))

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for sock, rfile, _ in conns:
                rfile.close()
                sock.close()


def _closed_meanwhile(sock: socket.socket) -> bool:
    """An idle connection is readable only if the server closed it (or sent what it should not have)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _unanswered(exc: BaseException) -> bool:
    """The kept connection was closed before any byte of an answer: the server never took the request."""
    return isinstance(exc, (ConnectionError, NoAnswer))
