"""The agent's HTTP client (`rhaas.agent.wire`) against raw answers, what importing the agent costs, and
that the FPBL ships every module of it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhaas.agent import wire
from rhaas.provisioning import fpbl
from rhaas.provisioning.fpbl_python import AGENT_MODULES


class RawServer:
    """Answers each connection with the next canned bytes, after reading the request's head."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answers: list[bytes] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """One request on ``conn``, answered, and the connection closed."""
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(65536)
                if not got:
                    break
                data += got
            head, _, rest = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    want = int(line.split(b":")[1])
                    while len(rest) < want:
                        rest += conn.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + rest)
            conn.sendall(self.answers.pop(0))

    def close(self) -> None:
        """Stop the thread before the socket goes: a thread still blocked in accept() on a closed socket
        would accept on whatever socket reuses its file descriptor (seen: a later test's server lost a
        connection to it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.thread.join(5)
        self.sock.close()
        assert not self.thread.is_alive()

    def get(self, answer: bytes, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        self.answers.append(answer)
        with wire.request(method, "127.0.0.1", self.port, "/x?y=1", {"Authorization": "Bearer s"}, body,
                          timeout=5) as response:  # fmt: skip
            return response.status, response.read()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


def test_content_length_body_and_the_request_sent(raw):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert raw.get(answer, "POST", b'{"a":1}') == (200, b"hello")
    request = raw.requests[0]
    assert request.startswith(b"POST /x?y=1 HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer s\r\n" in request and b"\r\nConnection: close\r\n" in request
    assert request.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


def test_chunked_body_with_extensions_and_trailers(raw):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = head + b"4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n"
    assert raw.get(answer) == (200, b"wikipedia")


def test_body_until_close_and_no_body_on_204(raw):
    assert raw.get(b"HTTP/1.0 404 Not Found\r\n\r\nmissing") == (404, b"missing")
    assert raw.get(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"")


def test_streamed_reads_in_pieces(raw):
    body = bytes(range(256)) * 4096
    raw.answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with wire.request("GET", "127.0.0.1", raw.port, "/", {}, timeout=5) as response:
        pieces = []
        while piece := response.read(100_000):
            assert len(piece) <= 100_000
            pieces.append(piece)
    assert b"".join(pieces) == body


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP status line"),
        (b"", "closed the connection before answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended 5 bytes early"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "ended inside a chunk"),
    ],
)
def test_answers_that_are_not_http_raise_an_oserror(raw, answer, message):
    with pytest.raises(wire.HttpError, match=message) as caught:
        raw.get(answer)
    assert isinstance(caught.value, OSError), "the agent treats it like any failed connection"


def test_a_refused_connection_is_an_oserror():
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    with pytest.raises(OSError):
        wire.request("GET", "127.0.0.1", free, "/", {}, timeout=5)


class KeepServer(RawServer):
    """Answers requests one after another on each connection (HTTP/1.1 keep-alive) with the next canned
    answer; an answer of None closes the connection instead of answering. Records each connection's
    requests."""

    def __init__(self) -> None:
        self.connections: list[list[bytes]] = []
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        super().__init__()
        self.answers: list[bytes | None] = []  # type: ignore[assignment]

    def _accepted(self, conn: socket.socket) -> None:
        self.conns.append(conn)
        self.threads.append(threading.Thread(target=self._answer, args=(conn,), daemon=True))
        self.threads[-1].start()

    def _answer(self, conn: socket.socket) -> None:
        seen: list[bytes] = []
        self.connections.append(seen)
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    try:
                        got = conn.recv(65536)
                    except OSError:  # shut down by the test
                        return
                    if not got:
                        return
                    data += got
                head, _, data = data.partition(b"\r\n\r\n")
                seen.append(head)
                answer = self.answers.pop(0)
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        super().close()
        for conn in self.conns:  # shut down, not closed: each thread closes its own when it ends
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in self.threads)


@pytest.fixture
def keep() -> Iterator[KeepServer]:
    server = KeepServer()
    yield server
    server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _get(pool: wire.Pool, server: KeepServer, size: int = -1) -> bytes:
    with pool.request("GET", "127.0.0.1", server.port, "/c", {}, timeout=5) as response:
        assert response.status == 200
        return response.read(size)


def test_a_pool_sends_requests_one_after_another_on_one_kept_connection(keep):
    pool = wire.Pool()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    keep.answers += [OK, chunked, OK]
    assert [_get(pool, keep) for _ in range(3)] == [b"ok"] * 3
    assert pool.opened == 1 and len(keep.connections) == 1 and len(keep.connections[0]) == 3
    assert all(b"Connection: close" not in head for head in keep.connections[0])
    pool.close()


@pytest.mark.parametrize(
    "first, why",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "the server closes it"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.0"),
        (b"HTTP/1.1 200 OK\r\n\r\nok", "the body ends with the connection"),
    ],
)
def test_a_connection_that_cannot_be_reused_is_not_kept(keep, first, why):
    pool = wire.Pool()
    keep.answers += [first, OK]
    with pool.request("GET", "127.0.0.1", keep.port, "/c", {}, timeout=5) as response:
        if b"Content-Length" not in first:
            response.read(2)  # a body until close: read what was sent, the end is not known
        else:
            assert response.read() == b"ok"
    with contextlib.suppress(OSError):  # closed already unless the server still waits for a request
        keep.conns[0].shutdown(socket.SHUT_RDWR)  # the end of a body read until close
    assert _get(pool, keep) == b"ok"
    assert pool.opened == 2, why


def test_an_answer_not_read_to_its_end_does_not_give_its_connection_back(keep):
    pool = wire.Pool()
    keep.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nokok", OK]
    assert _get(pool, keep, 2) == b"ok"
    assert _get(pool, keep) == b"ok"
    assert pool.opened == 2, "the rest of the first body would have been read as the second answer"


def test_a_kept_connection_the_server_closed_while_idle_is_replaced(keep):
    pool = wire.Pool()
    keep.answers += [OK, OK]
    assert _get(pool, keep) == b"ok"
    keep.conns[0].shutdown(socket.SHUT_RDWR)
    assert _get(pool, keep) == b"ok"
    assert pool.opened == 2 and [len(c) for c in keep.connections] == [1, 1]


def test_a_request_the_server_dropped_on_a_kept_connection_is_sent_again_once(keep):
    """The server's idle timeout can close a kept connection just as a request is sent on it: nothing was
    answered, so the pool sends it again on a new connection."""
    pool = wire.Pool()
    keep.answers += [OK, None, OK]
    assert _get(pool, keep) == b"ok"
    assert _get(pool, keep) == b"ok"
    assert pool.opened == 2 and [len(c) for c in keep.connections] == [2, 1]


def test_a_new_connection_that_is_closed_unanswered_is_an_error_not_a_retry(keep):
    pool = wire.Pool()
    keep.answers += [None, OK]
    with pytest.raises(wire.NoAnswer):
        _get(pool, keep)
    assert pool.opened == 1 and len(keep.connections) == 1


def test_an_idle_connection_is_dropped_after_the_idle_limit(keep):
    pool = wire.Pool(idle_seconds=0.0)
    keep.answers += [OK, OK]
    assert _get(pool, keep) == b"ok" and _get(pool, keep) == b"ok"
    assert pool.opened == 2


def test_concurrent_requests_each_take_their_own_connection(keep):
    pool = wire.Pool()
    keep.answers += [OK, OK, OK]
    first = pool.request("GET", "127.0.0.1", keep.port, "/c", {}, timeout=5)  # not yet read: in use
    assert _get(pool, keep) == b"ok"
    assert first.read() == b"ok"
    first.close()
    assert _get(pool, keep) == b"ok"
    assert pool.opened == 2
    pool.close()


def test_importing_the_agent_reads_no_randomness_and_loads_nothing_heavy():
    """In a just-booted FPBL, anything that reads os.urandom waits for the kernel's random pool (about a
    second under TCG) and every module costs milliseconds: the agent must not import them at start. Every
    module the FPBL ships is imported, and the agent imports no rhaas module the FPBL does not ship."""
    code = f"import sys, {', '.join(AGENT_MODULES)}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": ".", "PYTHONHASHSEED": "0"})  # fmt: skip
    loaded = set(done.stdout.split())
    assert "rhaas.agent.agent" in loaded
    heavy = {"random", "email", "http.client", "dataclasses", "inspect", "ast", "tempfile"}
    assert not loaded & heavy, sorted(loaded & heavy)
    ours = {name for name in loaded if name == "rhaas" or name.startswith("rhaas.")}
    assert ours == set(AGENT_MODULES), sorted(ours ^ set(AGENT_MODULES))


def test_a_peer_exchange_reads_no_randomness():
    """The FPBL ships no ``random`` (it would wait for the kernel's pool): the exchange picks with its
    own generator. Found on the lab: a deploy through the exchange failed on ``import random``."""
    code = ("import sys; from rhaas.agent import swarm; e = swarm.Exchange([], lambda n, c: b'', None, "
            "'127.0.0.1'); e.close(0); print('random' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": ".", "PYTHONHASHSEED": "0"})  # fmt: skip
    assert done.stdout.split() == ["False"], done.stdout + done.stderr


def test_the_exchange_s_picks_spread_and_differ_from_one_agent_to_the_next():
    from rhaas.agent.swarm import Picker

    picker = Picker(seed=12345)
    counts = [0] * 4
    for _ in range(4000):
        counts["abcd".index(picker.choice("abcd"))] += 1
    assert all(800 < c < 1200 for c in counts), counts
    assert [Picker().below(1 << 30) for _ in range(3)] != [Picker().below(1 << 30)] * 3
    with pytest.raises(IndexError):
        picker.choice([])


def test_the_fpbl_ships_every_module_of_the_agent():
    """The FPBL's list of the agent's modules is the package's: a new module there ships."""
    on_disk = {
        "rhaas.agent."
        + ".".join(p.relative_to("rhaas/agent").with_suffix("").parts).removesuffix(".__init__")
        for p in Path("rhaas/agent").rglob("*.py")
        if p != Path("rhaas/agent/__init__.py")
    }
    assert {"rhaas.agent.agent", "rhaas.agent.cpio", "rhaas.agent.fs", "rhaas.agent.fs.ext4"} <= on_disk
    assert set(AGENT_MODULES) == {"rhaas", "rhaas.agent", *on_disk}


def test_the_fpbl_runs_the_agent_module_the_agent_is():
    """The FPBL's init starts ``python3.11 -m rhaas.agent.agent``: that module is the agent's main."""
    from rhaas.agent import agent

    assert "-m rhaas.agent.agent" in fpbl.render_init("r", []) and callable(agent.main)


@pytest.mark.parametrize(
    "cpuinfo, aes",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 ssse3 aes avx\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 pni\n", False),  # QEMU's default vCPU (qemu64)
        ("flags\t\t: fpu vaes\n", False),  # a word containing it is not it
        ("Features\t: fp asimd aes pmull sha1\n", True),  # ARMv8
        ("no such line\n", True),  # not known: the default suites
    ],
)
def test_the_cpu_s_aes_instructions_are_read_from_cpuinfo(cpuinfo, aes):
    assert wire.has_aes(cpuinfo) is aes
