"""Peer exchange of a whole-disk image's chunks between the agents deploying it (standard library only).

Deploying one image to N nodes from the server alone costs the server N images, and the time grows with
N. Here each deploying agent also serves the chunks it has already verified and written to the other
agents deploying the same image, over plain HTTP on the provisioning network, and fetches chunks from
them first; the server seeds the swarm and is the fallback.

- No peer is trusted: every chunk, from a peer or from the server, is checked against its SHA-256 from
  the (authenticated) work answer before it is written, and so before it is served onward. A peer that
  serves a chunk that does not match, or stalls in the middle of one, is dropped for the rest of the
  deploy and the chunk is fetched elsewhere; so is one that cannot be connected to or does not answer
  (a per-request timeout) `STRIKES` times in a row.
- A tracker on the server (``POST {agent}/agent/v1/nodes/{node}/peers``, authenticated like the other
  agent calls) is told, every `ANNOUNCE_EVERY` seconds and at every chunk done, which chunks this agent
  holds, and answers with the other agents deploying the same image and what they hold, and which chunks
  this agent may take from the server (``seed``): the tracker hands each chunk out from the server about
  once, a few at a time, so the server sends about one image per fleet.
- The chunks the tracker hands out from the server are fetched first (the server's link is the one
  every chunk must cross once). Otherwise a peer is picked at random among those holding a wanted chunk
  (uploads are the scarce resource: spread the asking over them), and of its chunks the rarest (ties
  broken at random), so that different agents fetch different chunks and soon have something to give.
  A peer whose upload slots are full answers 503 and is left alone for a while, longer at each 503.
- A node that cannot reach the tracker, or gets nothing from anyone for `STALL_SECONDS`, fetches what it
  lacks from the server (plain HTTP(S) from the server, as without the exchange).

`Exchange` is the whole mechanism: ``deliver`` writes every extent of the image into a file descriptor
and returns once all are written; peers keep being served until `close`. The deploy path
(`rhaas.agent.extents.write_image`) and the fleet benchmark (bench/fleet.py) both drive it.

The peer protocol is one request per connection::

    GET /chunks/<sha256> HTTP/1.1   -> 200 with the chunk | 404 not held | 503 busy (upload slots full)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from rhaas.agent import wire
from rhaas.agent.system import log

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Seconds between two announcements to the tracker; sooner when a chunk is done or this agent has nothing
#: to fetch, but never more often than every `ANNOUNCE_AT_MOST` seconds.
ANNOUNCE_EVERY = 1.0
ANNOUNCE_AT_MOST = 0.3
#: Bytes read from the disk and sent to a peer at a time.
SEND_PIECE = 1 << 20
#: A peer that sends nothing for this long is dropped (the socket timeout of a peer request).
PEER_TIMEOUT = 5.0
#: A peer must deliver a whole chunk within this many seconds per MiB, or is dropped (a trickling peer).
PEER_SECONDS_PER_MIB = 4.0
#: With no chunk done for this long although some are missing, fetch from the server regardless.
STALL_SECONDS = 20.0
#: Chunks fetched at the same time by one agent, and served at the same time to other agents (more makes
#: each chunk cross its link slower, and so later passed on: bench/fleet.py measured 1 to 8).
FETCH_SLOTS = 2
UPLOAD_SLOTS = 2
#: The longest an agent keeps serving peers once it has everything (see `Exchange.close`).
LINGER_SECONDS = 60.0
#: A peer that answered "busy" is not asked again for this long, doubled at each "busy" in a row (to
#: `BUSY_BACKOFF_MAX`): many agents after the few holders of a new chunk must not flood their links.
BUSY_BACKOFF = 0.2
BUSY_BACKOFF_MAX = 3.0
#: A peer that cannot be connected to or does not answer is dropped at this many failures in a row (one
#: may be a full queue on a busy link); before that, not asked again for a second per failure.
STRIKES = 3


class Chunk(NamedTuple):
    """One extent of the image: where it goes and its digest."""

    offset: int
    length: int
    sha256: str


class Peer(NamedTuple):
    address: str
    port: int


class Stats(NamedTuple):
    from_server: int
    from_peers: int
    #: Bytes this agent served to peers.
    served: int
    #: Peers dropped: they served a chunk that did not match, stalled, or could not be reached.
    dropped: tuple[str, ...]


#: ``announce(have, port, dropped) -> {"peers": [{"address", "port", "have": [index...]}...],
#: "seed": [index...], "missing": bool}``: ``dropped`` lists the (address, port) of the peers dropped.
Announce = Callable[[list[int], int, list[tuple[str, int]]], dict[str, Any]]
#: ``fetch(index, chunk) -> bytes``: a chunk from the server (authenticated; checked by the caller).
ServerFetch = Callable[[int, Chunk], bytes]


class Picker:
    """Picks at random, well enough to spread agents over chunks and peers (xorshift64*; not for secrets).

    Not ``random``: it seeds itself from os.urandom, which in a just-booted FPBL waits for the kernel's
    pool, and the FPBL does not ship it (tests/test_agent_wire.py keeps the agent free of it). The seed
    mixes the clock, the process and the object, which differ from node to node."""

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = time.time_ns() ^ time.monotonic_ns() << 17 ^ os.getpid() << 40 ^ id(self)
        self.word = seed & 0xFFFF_FFFF_FFFF_FFFF or 0x9E37_79B9_7F4A_7C15

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        x = self.word
        x ^= x >> 12
        x ^= x << 25 & 0xFFFF_FFFF_FFFF_FFFF
        x ^= x >> 27
        self.word = x
        return ((x * 0x2545_F491_4F6C_DD1D & 0xFFFF_FFFF_FFFF_FFFF) >> 11) % n

    def choice(self, items: Sequence[Any]) -> Any:
        if not items:
            raise IndexError("cannot choose from an empty sequence")
        return items[self.below(len(items))]


class Exchange:
    """The peer exchange of one deploy: ``deliver`` the image into a file, serve peers meanwhile."""

    def __init__(
        self, chunks: list[Chunk], server: ServerFetch, announce: Announce | None, listen: str = "0.0.0.0",
        port: int = 0, *, peer_timeout: float = PEER_TIMEOUT, stall: float = STALL_SECONDS,
        announce_every: float = ANNOUNCE_EVERY, rng: Picker | None = None,
    ) -> None:  # fmt: skip
        self.chunks = chunks
        self.index: dict[str, list[int]] = {}
        for n, c in enumerate(chunks):
            self.index.setdefault(c.sha256, []).append(n)
        self.server = server
        self.announce_fn = announce
        self.peer_timeout = peer_timeout
        self.stall = stall
        self.announce_every = announce_every
        self.rng = rng if rng is not None else Picker()
        self.cond = threading.Condition()
        self.have: set[int] = set()
        self.busy: set[int] = set()  # being fetched
        self.seed: set[int] = set()  # the tracker's leave to fetch these from the server
        self.peers: dict[Peer, frozenset[int]] = {}
        self.dropped: dict[Peer, str] = {}
        self.backoff: dict[Peer, float] = {}
        self.busy_count: dict[Peer, int] = {}
        self.strikes: dict[Peer, int] = {}
        self.tracker_ok = announce is not None
        self.answered = False  # whether the tracker has answered yet
        self.others_missing = True  # whether the tracker last said some peer still lacks chunks
        self.from_server = self.from_peers = self.served = 0
        self.last_done = time.monotonic()
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self.uploads = threading.BoundedSemaphore(UPLOAD_SLOTS)
        self._read_fd: int | None = None
        self._wake_announcer = threading.Event()
        self._listener = socket.create_server((listen, port), backlog=64, reuse_port=False)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    # --- serving peers ---

    def _serve(self) -> None:
        self._listener.settimeout(0.5)
        while not self.closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="swarm-upload", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.peer_timeout)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                parts = head.split(b"\r\n", 1)[0].split()
                if len(parts) < 2 or parts[0] != b"GET" or not parts[1].startswith(b"/chunks/"):
                    conn.sendall(_status(400, "Bad Request"))
                    return
                where = self.index.get(parts[1][len(b"/chunks/") :].decode("ascii", "replace"), [])
                with self.cond:
                    n = next((i for i in where if i in self.have), None)
                    source_fd = None if self._read_fd is None else os.dup(self._read_fd)
                if n is None or source_fd is None:
                    if source_fd is not None:
                        os.close(source_fd)
                    conn.sendall(_status(404, "Not Found"))
                    return
                if not self.uploads.acquire(blocking=False):
                    os.close(source_fd)
                    conn.sendall(_status(503, "Busy"))
                    return
                try:
                    chunk = self.chunks[n]
                    conn.sendall(
                        f"HTTP/1.1 200 OK\r\nContent-Length: {chunk.length}\r\nContent-Type: "
                        "application/octet-stream\r\nConnection: close\r\n\r\n".encode()
                    )
                    sent = _send_range(conn, source_fd, chunk.offset, chunk.length)
                    with self.cond:
                        self.served += sent
                finally:
                    os.close(source_fd)
                    self.uploads.release()
            except OSError:
                return

    # --- the tracker ---

    def _announce_once(self) -> None:
        assert self.announce_fn is not None
        with self.cond:
            have = sorted(self.have)
            dropped = sorted(self.dropped)
        try:
            answer = self.announce_fn(have, self.port, [(p.address, p.port) for p in dropped])
            peers: dict[Peer, frozenset[int]] = {}
            for item in answer.get("peers", []):
                held = frozenset(
                    n for n in item.get("have", []) if isinstance(n, int) and 0 <= n < len(self.chunks)
                )
                peers[Peer(str(item["address"]), int(item["port"]))] = held
            seed = {n for n in answer.get("seed", []) if isinstance(n, int) and 0 <= n < len(self.chunks)}
            missing = bool(answer.get("missing", True))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            with self.cond:
                if self.tracker_ok:
                    log(f"peer exchange: the tracker does not answer ({exc}); fetching from the server")
                self.tracker_ok = False
                self.cond.notify_all()
            return
        with self.cond:
            self.tracker_ok = self.answered = True
            self.peers = {p: h for p, h in peers.items() if p not in self.dropped}
            self.seed |= seed - self.have
            self.others_missing = missing
            self.cond.notify_all()

    def _announcer(self) -> None:
        while not self.closed.is_set():
            started = time.monotonic()
            self._announce_once()
            self._wake_announcer.wait(self.announce_every)
            self._wake_announcer.clear()
            self.closed.wait(min(self.announce_every, ANNOUNCE_AT_MOST) - (time.monotonic() - started))

    # --- fetching ---

    def _pick(self) -> tuple[int, Peer | None] | None:
        """The next chunk to fetch and where from (None: the server); None if there is nothing to do now.
        Called with the lock held."""
        wanted = [n for n in range(len(self.chunks)) if n not in self.have and n not in self.busy]
        if not wanted:
            return None
        now = time.monotonic()
        counts: dict[int, list[Peer]] = {}
        for peer, held in self.peers.items():
            if self.backoff.get(peer, 0) > now:
                continue
            for n in held:
                if n not in self.have and n not in self.busy:
                    counts.setdefault(n, []).append(peer)
        seeds = sorted(n for n in self.seed if n in wanted)
        if seeds:  # first: the server's link is the one every chunk must cross once
            return seeds[0], None
        if counts:
            # A peer at random among those that hold something wanted (the uploads are what is scarce:
            # spread the asking over them), then the rarest of what it holds, ties broken at random.
            offers: dict[Peer, list[int]] = {}
            for n, holders in counts.items():
                for peer in holders:
                    offers.setdefault(peer, []).append(n)
            peer = self.rng.choice(sorted(offers))
            rarest = min(len(counts[n]) for n in offers[peer])
            return self.rng.choice(sorted(n for n in offers[peer] if len(counts[n]) == rarest)), peer
        # No tracker, no peer left to wait for (alone, or every peer dropped), or no progress for a while:
        # the server, with every worker, as without the exchange.
        alone = self.answered and not self.peers
        if not self.tracker_ok or alone or now - self.last_done > self.stall:
            return self.rng.choice(wanted), None
        return None

    def _fetch_peer(self, peer: Peer, chunk: Chunk) -> bytes:
        deadline = time.monotonic() + max(self.peer_timeout, PEER_SECONDS_PER_MIB * chunk.length / (1 << 20))
        try:
            response = wire.request(
                "GET", peer.address, peer.port, f"/chunks/{chunk.sha256}", {}, timeout=self.peer_timeout
            )
        except OSError as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from exc
        with response:
            if response.status == 503:
                raise _Busy()
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
            buf = bytearray()
            while len(buf) <= chunk.length and (data := response.read(1 << 20)):
                buf += data
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(buf)} of {chunk.length} bytes in {deadline:.0f} s")
            return bytes(buf)

    def _worker(self, fd: int) -> None:
        while True:
            with self.cond:
                while True:
                    if self.error is not None or len(self.have) == len(self.chunks):
                        return
                    choice = self._pick()
                    if choice is not None:
                        break
                    self._wake_announcer.set()  # nothing to do: news of the peers, please
                    self.cond.wait(0.25)
                n, peer = choice
                self.busy.add(n)
            chunk = self.chunks[n]
            try:
                data = self.server(n, chunk) if peer is None else self._fetch_peer(peer, chunk)
                good = len(data) == chunk.length and hashlib.sha256(data).hexdigest() == chunk.sha256
                if not good and peer is None:
                    raise OSError(f"the server's chunk {chunk.sha256} does not match its digest")
                if good:
                    view, at = memoryview(data), 0
                    while at < len(view):
                        at += os.pwrite(fd, view[at:], chunk.offset + at)
            except _Busy:
                with self.cond:
                    self.busy.discard(n)
                    assert peer is not None
                    count = self.busy_count[peer] = self.busy_count.get(peer, 0) + 1
                    self.backoff[peer] = time.monotonic() + min(
                        BUSY_BACKOFF_MAX, BUSY_BACKOFF * 2 ** (count - 1)
                    )
                    self.cond.notify_all()
                continue
            except _NoAnswer as exc:
                assert peer is not None
                with self.cond:
                    strikes = self.strikes[peer] = self.strikes.get(peer, 0) + 1
                    if strikes < STRIKES:
                        self.busy.discard(n)
                        self.backoff[peer] = time.monotonic() + strikes
                        self.cond.notify_all()
                if strikes >= STRIKES:
                    self._drop(peer, n, f"{strikes} times no answer, the last: {exc}")
                continue
            except OSError as exc:
                if peer is None:
                    with self.cond:
                        self.error = exc
                        self.cond.notify_all()
                    return
                self._drop(peer, n, f"{type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - handed to `deliver`, which raises it
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                return
            if not good:
                assert peer is not None
                self._drop(peer, n, f"chunk {n} does not match its digest")
                continue
            with self.cond:
                self.busy.discard(n)
                self.seed.discard(n)
                self.have.add(n)
                if peer is not None:
                    self.busy_count.pop(peer, None)
                    self.strikes.pop(peer, None)
                self.last_done = time.monotonic()
                if peer is None:
                    self.from_server += chunk.length
                else:
                    self.from_peers += chunk.length
                self.cond.notify_all()
            self._wake_announcer.set()

    def _drop(self, peer: Peer, n: int, why: str) -> None:
        log(f"peer exchange: dropping peer {peer.address}:{peer.port} ({why})")
        with self.cond:
            self.busy.discard(n)
            self.dropped[peer] = why
            self.peers.pop(peer, None)
            self.cond.notify_all()

    def deliver(self, fd: int, path: str, progress: Callable[[int, int], None] | None = None) -> Stats:
        """Write every chunk at its offset into ``fd`` (the disk, or a file, at ``path``: reopened to serve
        peers from), each checked against its digest first; return once all are written. Raises what the
        server fetch raised if it fails, or OSError if the server's chunk does not match (peers failing
        only costs time)."""
        self._read_fd = os.open(path, os.O_RDONLY)
        total = sum(c.length for c in self.chunks)
        self._threads = [threading.Thread(target=self._serve, name="swarm-serve", daemon=True)]
        if self.announce_fn is not None:
            self._threads.append(threading.Thread(target=self._announcer, name="swarm-announce", daemon=True))
        for t in self._threads:
            t.start()
        workers = [
            threading.Thread(target=self._worker, args=(fd,), name=f"swarm-fetch-{i}", daemon=True)
            for i in range(FETCH_SLOTS)
        ]
        for t in workers:
            t.start()
        while True:
            with self.cond:
                done = sum(self.chunks[n].length for n in self.have)
                if self.error is not None or len(self.have) == len(self.chunks):
                    break
                self.cond.wait(1.0)
            if progress is not None:
                progress(done, total)
        for t in workers:
            t.join()
        if self.error is not None:
            self.close(linger=0)
            raise self.error
        self._wake_announcer.set()
        if progress is not None:
            progress(total, total)
        return self.stats()

    def stats(self) -> Stats:
        with self.cond:
            dropped = tuple(f"{p.address}:{p.port}: {why}" for p, why in self.dropped.items())
            return Stats(self.from_server, self.from_peers, self.served, dropped)

    def close(self, linger: float = LINGER_SECONDS) -> None:
        """Stop serving peers: at once, or once the tracker says no peer lacks a chunk, or ``linger``
        seconds from now, whichever is first."""
        deadline = time.monotonic() + linger
        with self.cond:
            while self.tracker_ok and self.others_missing and time.monotonic() < deadline:
                self.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self.closed.set()
        self._wake_announcer.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for t in self._threads:
            t.join(timeout=2.0)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


class _Busy(Exception):
    """The peer's upload slots are full: ask someone else."""


class _NoAnswer(OSError):
    """The peer could not be connected to, or sent no answer in time."""


def _send_range(conn: socket.socket, fd: int, offset: int, length: int) -> int:
    """Send ``length`` bytes of ``fd`` from ``offset``; the bytes sent. Not ``socket.sendfile``: it takes
    the file's size from fstat, which is 0 for a block device (a node's disk), and then sends nothing
    (found on the lab: every peer's answer ended right after its headers)."""
    sent = 0
    while sent < length:
        data = os.pread(fd, min(SEND_PIECE, length - sent), offset + sent)
        if not data:
            raise OSError(f"the disk ended {length - sent} bytes before the chunk's end")
        conn.sendall(data)
        sent += len(data)
    return sent


def _status(code: int, reason: str) -> bytes:
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
