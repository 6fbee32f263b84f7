"""Peer exchange of a whole-disk image between the agents deploying it (standard library only).

Deploying one image to N nodes from the server alone costs the server N images, and the time grows with
N. Here each deploying agent also serves what it has already verified and written to the other agents
deploying the same image, over plain HTTP on the provisioning network, and fetches from them first; the
server seeds the swarm and is the fallback.

- **Pieces.** The unit of exchange is a *piece*: a slice of one of the image's chunks (`PIECE_SIZE` on the
  server, 256 KiB), each with its own SHA-256 in the (authenticated) work answer. A chunk from the server
  is passed on piece by piece as it streams in, not once the whole chunk has arrived: on a slow link a
  4 MiB chunk takes seconds, and a fleet is as slow as the number of hops times that.
- **No peer is trusted.** Every piece, from a peer or from the server, is checked against its digest
  before it is written, and so before it is served onward (a chunk from the server is checked whole as
  well). A peer that serves a piece that does not match, one it was not asked for, or stalls in the middle
  of one, is dropped for the rest of the deploy; so is one that cannot be connected to or does not answer
  (a per-request timeout) `STRIKES` times in a row and never served this agent (one that did is busy:
  it is asked again after a while, longer at each failure).
- **Asking by what is wanted.** An agent asks a peer for *any* of the pieces it still wants (a bit map in
  the request), and the peer answers with one it holds, picked at random. So the asker needs no up-to-date
  view of what each peer holds (pieces arrive every few tens of milliseconds; the tracker's view is a
  second old), and different askers get different pieces, so they soon have something to give. Each open
  request of one agent asks first for pieces the others do not (a piece that comes from two peers at once
  is cut off at its head).
- **Waiting at the peer, not asking again.** On a busy link a request takes a few tenths of a second there
  and back, about as long as a piece takes to send; a "busy" or "none of them" asked again costs that
  each time. So a request may ask the peer to hold it (``wait``) until it has a wanted piece and a free
  upload slot: a peer known to hold a wanted piece is asked to wait for a slot, and a few of an agent's
  requests wait at peers not known to hold any for what they will gain, which then leaves as soon as it
  has arrived and been checked.
- **Upload slots are real.** A peer sends at most `UPLOAD_SLOTS` pieces at once, and a piece's slot is
  free once the piece has left (``TCP_NOTSENT_LOWAT``), not once it is in the kernel's send buffer: else
  every asker shares the link at once and each piece crawls.
- **A tracker** on the server (``POST {agent}/agent/v1/nodes/{node}/peers``, authenticated like the other
  agent calls) is told, every `ANNOUNCE_EVERY` seconds and when a chunk from the server is done, which
  pieces this agent holds (a bit map, hex), and answers with some of the other agents deploying the same
  image (what they held then: a hint of whom to ask), and which chunks this agent may take from the server
  (``seed``): the tracker hands each chunk out from the server about once, a few at a time, so the server
  sends about one image per fleet.
- The chunks the tracker hands out are fetched first (the server's link is the one every chunk must cross
  once). Otherwise a peer is picked at random among those believed to hold a wanted piece (else among
  all: they may have gained some since). A peer whose upload slots stayed full answers 503, one that
  holds nothing wanted 404; either is left alone for a while, longer at each time in a row.
- **Multicast.** Where the tracker names a multicast group (``multicast``: group, UDP port, this agent's
  address to join it on, and the rate to send at), the tracker hands every chunk to one agent, which
  passes each piece it took from the server (and checked) on once more, to the group, paced at the rate:
  every agent of the deploy that hears it has it after one hop, at the cost of one upload, whatever the
  fleet's size. The pieces are encrypted (`MulticastKey`: a key only the agents deploying the image can
  derive from the work answer; the group is open to any host of the network) and checked against their
  digests like any other. While pieces arrive that way an agent asks its peers for nothing (a TCP stream
  beside the datagrams fills the links' queues, which then drop datagrams); once the group has been
  quiet for `MULTICAST_QUIET`, the peers repair what it lost (or sent before this agent joined). A
  network that does not carry multicast costs each piece one wasted upload, nothing else.
- A node that cannot reach the tracker, or gets nothing from anyone for `STALL_SECONDS`, fetches what it
  lacks from the server (plain HTTP(S) from the server, as without the exchange).

`Exchange` is the whole mechanism: ``deliver`` writes every extent of the image into a file descriptor
and returns once all are written; peers keep being served until `close`. The deploy path
(`rhaas.agent.extents.write_image`) and the fleet benchmark (bench/fleet.py) both drive it.

The peer protocol is HTTP/1.1, connections kept open between requests::

    GET /pieces?want=<hex bit map>[&wait=<ms, at most MAX_WAIT_MS>] HTTP/1.1
    X-Swarm: <token: a digest of the image's chunk list, see `swarm_token`>
        -> 200 with one piece, its index in ``X-Piece`` | 404 none of them held | 503 busy (slots full),
           the last two only once ``wait`` is over; each with ``X-Have: <hex bit map>``, what the peer
           holds now | 403 without the token | 400 a malformed request
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
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

#: Seconds between two announcements to the tracker; sooner when this agent gained a piece or has nothing
#: to fetch, but never more often than every `ANNOUNCE_AT_MOST` seconds.
ANNOUNCE_EVERY = 1.0
ANNOUNCE_AT_MOST = 0.3
#: Bytes read from the disk and sent to a peer at a time.
SEND_PIECE = 1 << 20
#: A connection from a peer is closed after this long without a request (the asker drops an idle one
#: sooner: `wire.KEEP_IDLE_SECONDS`).
KEEP_SECONDS = 5.0
#: A peer that sends nothing for this long is dropped (the socket timeout of a peer request).
PEER_TIMEOUT = 5.0
#: A peer must deliver a whole piece within `PEER_TIMEOUT` plus this many seconds per MiB (64 KiB/s), or is
#: dropped (a trickling peer). Generous: a busy peer on a slow link shares it among its uploads.
PEER_SECONDS_PER_MIB = 16.0
#: A chunk from the server that fails (the connection, not its digest) is fetched again, up to this many
#: times in a row, a second later for each failure; then the deploy fails.
SERVER_TRIES = 3
#: With nothing done for this long although some pieces are missing, fetch from the server regardless.
STALL_SECONDS = 20.0
#: Pieces fetched from peers at the same time by one agent, and served at the same time to other agents:
#: enough to keep a link busy between one piece and the next (bench/fleet.py: 4 and 8 alike at N = 8).
FETCH_SLOTS = 4
UPLOAD_SLOTS = 4
#: The longest an agent keeps serving peers once it has everything (see `Exchange.close`).
LINGER_SECONDS = 60.0
#: A peer that answered "busy" or "nothing you want" is not asked again for this long, doubled at each
#: such answer in a row (to `BACKOFF_MAX`).
BACKOFF = 0.1
BACKOFF_MAX = 2.0
#: With at most this many pieces missing and all of them being fetched, ask other peers for them too.
ENDGAME = 8
#: Of how many pieces, picked at random among those a peer may have, the rarest is sent.
OFFER_SAMPLE = 6
#: With no peer listed by the tracker for this long, this agent is alone: it fetches from the server with
#: every worker (not at once: the others of a fleet deploy may not have announced themselves yet).
ALONE_SECONDS = 2.0
#: A peer that cannot be connected to or does not answer is not asked again for a second, doubled at each
#: failure in a row (to `NO_ANSWER_BACKOFF_MAX`): on a busy link, queues are full and drop packets. One
#: that has never sent this agent a piece is dropped at `STRIKES` failures in a row.
STRIKES = 3
NO_ANSWER_BACKOFF_MAX = 30.0
#: The longest ``want`` bit map a peer accepts, in hex digits (a million pieces: 256 GiB at 256 KiB).
MAX_WANT_HEX = 1 << 18
#: How long a peer may hold a request (``wait``, milliseconds; at most `MAX_WAIT_MS`) until it has one of
#: the pieces asked for and a free upload slot: a request on a busy link takes a few tenths of a second
#: there and back, as long as sending a piece; a 404 or 503 asked again costs that each time. A peer not
#: known to hold anything wanted is asked to wait `WAIT_SECONDS` for what it will gain (by up to `HELD`
#: workers at a time: the piece then leaves as soon as it has arrived and been checked, not after the
#: tracker's next word); one known to hold some, `SLOT_WAIT_SECONDS` for a free slot.
WAIT_SECONDS = 2.0
SLOT_WAIT_SECONDS = 1.0
MAX_WAIT_MS = 10_000
HELD = 2
#: A piece is counted sent, and its upload slot freed, once at most this many of its bytes are still
#: unsent (``TCP_NOTSENT_LOWAT``): else a send returns as soon as the piece is in the kernel's buffer
#: (megabytes), and every asker at once shares the link, each slower than the pieces' turnover needs.
SEND_LOWAT = 16 << 10
#: Multicast: a datagram is a head (`MULTICAST_MAGIC`, the swarm's tag, the sender's id, the piece's
#: index and the offset in it: 24 bytes) and at most this many bytes of a piece. The kernel cuts it into
#: frames of the link's MTU and puts them together again, so Python's cost is paid once per 32 KiB, not
#: once per frame: on the lab (MTU 1500, agents under TCG), datagrams of one frame each made a 461 MB
#: deploy take 183 s, 32 KiB ones 58 s. A frame lost loses the datagram, and its piece, which one frame
#: would have lost all the same.
MULTICAST_MAGIC = b"RHMC"
MULTICAST_HEAD = 24
MULTICAST_PAYLOAD = 32 << 10
#: Since the last piece from the group, for how long multicast counts as flowing (longer at a slow rate:
#: see `Exchange.multicast_flowing`).
MULTICAST_QUIET = 2.0
#: Seconds between two announcements while multicast flows (and no sooner for a piece gained from it): the
#: agent needs no news of its peers then, and a fleet's announcements share the server's link with the
#: chunks the group is sent.
MULTICAST_ANNOUNCE_EVERY = 3.0
#: A piece being assembled from datagrams that gets none for this long lost some: the peers repair it.
MULTICAST_STALE = 1.0
#: The multicast socket's send buffer: a sender blocks once this much is queued, so that its link's queue
#: (a few hundred ms at its rate) takes its bursts whole instead of dropping their tails.
MULTICAST_SEND_BUFFER = 64 << 10
#: Bytes a sender may send faster than its rate after a stall (a thread not scheduled for a while).
MULTICAST_CATCH_UP = 64 << 10
MULTICAST_RECEIVE_BUFFER = 4 << 20
#: Pieces being assembled from datagrams at once (the oldest is given up past that).
MULTICAST_PARTIAL = 64


class Chunk(NamedTuple):
    """A piece, or a chunk from the server: where it goes and its digest."""

    offset: int
    length: int
    sha256: str


class Extent(NamedTuple):
    """One chunk of the image as the server serves it, and its pieces (in order, covering it)."""

    chunk: Chunk
    pieces: tuple[Chunk, ...]


class Peer(NamedTuple):
    address: str
    port: int


class MulticastKey:
    """The encryption of the pieces multicast for one image: a keystream of SHAKE-256 under a key derived
    from the image's chunk list (which the agents have from their authenticated work answer, and which is
    not sent anywhere: the peers' token is a different digest of it), per datagram from the piece and the
    offset, XORed with the bytes. Each (piece, offset) always carries the same bytes, so reusing its stream
    reveals nothing; a datagram forged or from another swarm decrypts to bytes that fail the piece's
    digest."""

    def __init__(self, digests: Sequence[str]) -> None:
        self.key = hashlib.sha256("\n".join(["rhaas multicast key", *digests]).encode()).digest()
        #: Which swarm a datagram is of (not secret): lets an agent skip other deploys' datagrams cheaply.
        self.tag = hashlib.sha256(b"tag" + self.key).digest()[:8]

    def apply(self, k: int, at: int, data: bytes) -> bytes:
        """``data`` encrypted (or decrypted: the same) as the bytes at ``at`` of piece ``k``."""
        stream = hashlib.shake_256(self.key + k.to_bytes(8, "big") + at.to_bytes(8, "big")).digest(len(data))
        n = len(data)
        return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


class Stats(NamedTuple):
    from_server: int
    from_peers: int
    #: Bytes this agent served to peers.
    served: int
    #: Peers dropped: they served a piece that did not match, stalled, or could not be reached.
    dropped: tuple[str, ...]
    #: Bytes received twice (two peers answered with the same piece at the same time), not counted above.
    twice: int = 0
    #: Requests this agent sent to peers, how many of them were answered "none of them", and "busy".
    asked: int = 0
    refused: int = 0
    busy: int = 0
    #: Answers cut off at their head: the piece was on its way from another peer already.
    cut: int = 0
    #: Bytes of pieces taken from multicast (in ``from_peers`` too), and sent to the group.
    from_multicast: int = 0
    multicast_sent: int = 0
    #: Pieces that lost a datagram on the way here (left to the peers).
    multicast_lost: int = 0


#: ``announce(have, port, dropped) -> {"peers": [{"address", "port", "have": hex}...], "seed": [index...],
#: "missing": bool}``: ``have`` the bit map (hex) of the pieces held, ``dropped`` the (address, port) of
#: the peers dropped for sending a bad piece; ``seed`` lists indices of chunks (`Extent`) to take from the
#: server.
Announce = Callable[[str, int, list[tuple[str, int]]], dict[str, Any]]
#: ``fetch(chunk, sink) -> sha256``: a chunk from the server (authenticated), streamed into ``sink``; the
#: digest of the bytes it gave ``sink``.
ServerFetch = Callable[[Chunk, Callable[[bytes], object]], str]


def swarm_token(digests: Sequence[str]) -> str:
    """The token of the exchange of an image made of the chunks ``digests``."""
    return hashlib.sha256("\n".join(["rhaas peer exchange", *digests]).encode()).hexdigest()


def mask_hex(mask: int) -> str:
    """A bit map as the wire carries it: bit n is piece n."""
    return format(mask, "x")


def parse_mask(text: object, width: int) -> int:
    """A bit map from the wire, cut to ``width`` bits. ValueError if it is not hex."""
    if not isinstance(text, str) or len(text) > MAX_WANT_HEX:
        raise ValueError("a bit map is a string of hex digits")
    return int(text, 16) & ((1 << width) - 1) if text else 0


class Picker:
    """Picks at random, well enough to spread agents over pieces and peers (xorshift64*; not for secrets).

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

    def bit(self, mask: int) -> int:
        """The index of a set bit of ``mask`` (> 0), from a random place on (nearly uniform when the set
        bits are spread)."""
        start = self.below(mask.bit_length())
        high = mask >> start
        low = high if high else mask
        return (start if high else 0) + (low & -low).bit_length() - 1


class Exchange:
    """The peer exchange of one deploy: ``deliver`` the image into a file, serve peers meanwhile."""

    def __init__(
        self, extents: list[Extent], server: ServerFetch, announce: Announce | None, listen: str = "0.0.0.0",
        port: int = 0, *, peer_timeout: float = PEER_TIMEOUT, stall: float = STALL_SECONDS,
        announce_every: float = ANNOUNCE_EVERY, alone: float = ALONE_SECONDS, rng: Picker | None = None,
    ) -> None:  # fmt: skip
        self.extents = extents
        self.pieces: list[Chunk] = [p for e in extents for p in e.pieces]
        #: The bit map of each extent's pieces.
        #: The index of each extent's first piece, and the bit map of its pieces.
        self.first: list[int] = []
        self.extent_mask: list[int] = []
        at = 0
        for e in extents:
            self.first.append(at)
            self.extent_mask.append(((1 << len(e.pieces)) - 1) << at)
            at += len(e.pieces)
        self.full = (1 << at) - 1
        #: What a peer shows to be served: a digest of the image's chunk list, which only the agents
        #: deploying it (and whoever may read the image) know.
        self.token = swarm_token([e.chunk.sha256 for e in extents])
        self.server = server
        self.announce_fn = announce
        self.peer_timeout = peer_timeout
        self.stall = stall
        self.announce_every = announce_every
        self.alone = alone
        self.rng = rng if rng is not None else Picker()
        self.cond = threading.Condition()
        self.have = 0  # bit map of the pieces verified and written
        self.busy = 0  # bit map of the pieces being fetched
        self.done_bytes = 0
        self.loading: set[int] = set()  # extents being fetched from the server
        self.seed: set[int] = set()  # the tracker's leave to fetch these extents from the server
        self.peers: dict[Peer, int] = {}  # what each held when the tracker last said
        self.asking: dict[Peer, int] = {}  # peers a request of this agent is open to, and its want
        self.dropped: dict[Peer, str] = {}
        self.bad: set[Peer] = set()  # dropped for what they sent: reported to the tracker
        self.served_us: set[Peer] = set()  # peers that have sent this agent a piece
        self.server_failures = 0  # chunks from the server that failed in a row
        self.backoff: dict[Peer, float] = {}
        self.refusals: dict[Peer, int] = {}
        self.strikes: dict[Peer, int] = {}
        self.tracker_ok = announce is not None
        self.alone_since: float | None = None  # since when the tracker has listed no peer
        self.probing = 0  # workers asking a peer not known to hold anything wanted (held requests)
        self.uploading = 0  # pieces being sent to peers
        self.others_missing = True  # whether the tracker last said some peer still lacks pieces
        self.from_server = self.from_peers = self.served = self.twice = 0
        self.asked = self.refused = self.busy_answers = self.cut = 0
        self.last_done = time.monotonic()
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self._read_fd: int | None = None
        self._wake_announcer = threading.Event()
        self._listener = socket.create_server((listen, port), backlog=64, reuse_port=False)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        #: Connections to peers, kept open between requests.
        self.pool = wire.Pool()
        # Multicast, once the tracker names a group (`_join`).
        self.mc_key = MulticastKey([e.chunk.sha256 for e in extents])
        self.mc_id = self.rng.below(1 << 32).to_bytes(4, "big")  # skips its own datagrams (loopback)
        self.mc_joined = False
        self.mc_heard: float | None = None  # when the last piece from the group (that matched) arrived
        self.mc_tx: socket.socket | None = None
        self.from_multicast = self.multicast_sent = self.multicast_lost = 0
        self.mc_rate = 0.0  # bytes per second this agent sends to the group at
        self.mc_next = 0.0  # when it may send its next datagram
        self._write_fd: int | None = None
        self._hearing: threading.Thread | None = None

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
        """Answer the requests of one connection, kept open between them (HTTP/1.1 keep-alive: on a busy
        link a new connection's handshake waits in the queues, and may be dropped there) until the asker
        closes it, says ``Connection: close``, or sends nothing for `KEEP_SECONDS`."""
        with conn:
            buf = b""
            try:
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), SEND_LOWAT)
                while not self.closed.is_set():
                    conn.settimeout(KEEP_SECONDS if not buf else self.peer_timeout)
                    while b"\r\n\r\n" not in buf:
                        if len(buf) > MAX_WANT_HEX + 8192:
                            return
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                        conn.settimeout(self.peer_timeout)
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    if not self._answer_one(conn, head):
                        return
            except OSError:
                return

    def _answer_one(self, conn: socket.socket, head: bytes) -> bool:
        """Answer one request; whether the connection stays open."""
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        keep = fields.get(b"connection", b"").lower() != b"close"
        path, _, query = parts[1].partition(b"?") if len(parts) >= 2 else (b"", b"", b"")
        if len(parts) < 2 or parts[0] != b"GET" or path != b"/pieces":
            conn.sendall(_status(400, "Bad Request", close=True))
            return False
        if not hmac.compare_digest(fields.get(b"x-swarm", b""), self.token.encode()):
            conn.sendall(_status(403, "Forbidden", close=True))
            return False
        try:
            params = dict(item.partition(b"=")[::2] for item in query.split(b"&"))
            want = parse_mask(params[b"want"].decode("ascii"), len(self.pieces))
            wait = int(params.get(b"wait", b"0"))
            if not 0 <= wait <= MAX_WAIT_MS:
                raise ValueError(f"wait {wait} ms")
        except (KeyError, ValueError, UnicodeDecodeError):
            conn.sendall(_status(400, "Bad Request", close=True))
            return False
        deadline = time.monotonic() + wait / 1000
        with self.cond:
            while True:  # a piece wanted and a slot to send it: at once, or once both are there
                n = self._offer(want & self.have) if self._read_fd is not None else None
                # Sending to the group, this agent's link is the group's: no peer is served meanwhile.
                free = self.uploading < UPLOAD_SLOTS and not (self.mc_tx is not None and self.loading)
                left = deadline - time.monotonic()
                if n is not None and free or left <= 0 or self.closed.is_set():
                    break
                self.cond.wait(left)
            held = f"X-Have: {mask_hex(self.have)}\r\n"  # news for the asker's next choice
            source_fd = None
            if n is not None and free and self._read_fd is not None:
                source_fd = os.dup(self._read_fd)
                self.uploading += 1
        if n is None or source_fd is None:
            conn.sendall(_status(*((404, "Not Found") if n is None else (503, "Busy")), held, close=not keep))
            return keep
        try:
            piece = self.pieces[n]
            end = "\r\n" if keep else "Connection: close\r\n\r\n"
            conn.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {piece.length}\r\nX-Piece: {n}\r\n{held}"
                f"Content-Type: application/octet-stream\r\n{end}".encode()
            )
            sent = _send_range(conn, source_fd, piece.offset, piece.length)
            with self.cond:
                self.served += sent
        finally:
            os.close(source_fd)
            with self.cond:
                self.uploading -= 1
                self.cond.notify_all()
        return keep

    def _offer(self, offer: int) -> int | None:
        """Which of the pieces ``offer`` to send a peer: of a few picked at random, the one the fewest
        peers held when last heard of (so the rare ones spread first). Called with the lock held."""
        if not offer:
            return None
        best, fewest = -1, len(self.peers) + 1
        for _ in range(OFFER_SAMPLE):
            n = self.rng.bit(offer)
            holders = sum(held >> n & 1 for held in self.peers.values())
            if holders < fewest:
                best, fewest = n, holders
        return best

    # --- the tracker ---

    def _announce_once(self) -> None:
        assert self.announce_fn is not None
        with self.cond:
            have = self.have
            dropped = sorted(self.bad)
        try:
            answer = self.announce_fn(mask_hex(have), self.port, [(p.address, p.port) for p in dropped])
            peers: dict[Peer, int] = {}
            for item in answer.get("peers", []):
                peers[Peer(str(item["address"]), int(item["port"]))] = parse_mask(
                    item.get("have", ""), len(self.pieces)
                )
            seed = {n for n in answer.get("seed", []) if isinstance(n, int) and 0 <= n < len(self.extents)}
            missing = bool(answer.get("missing", True))
            multicast = answer.get("multicast")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            with self.cond:
                if self.tracker_ok:
                    log(f"peer exchange: the tracker does not answer ({exc}); fetching from the server")
                self.tracker_ok = False
                self.cond.notify_all()
            return
        if multicast is not None and not self.mc_joined:  # before taking chunks: they go to the group too
            self._join(multicast)
        with self.cond:
            self.tracker_ok = True
            self.peers = {p: h for p, h in peers.items() if p not in self.dropped}
            if self.peers:
                self.alone_since = None
            elif self.alone_since is None:
                self.alone_since = time.monotonic()
            self.seed |= {n for n in seed if self.extent_mask[n] & ~self.have}
            self.others_missing = missing
            self.cond.notify_all()

    def _announcer(self) -> None:
        while not self.closed.is_set():
            started = time.monotonic()
            self._announce_once()
            flowing = self.multicast_flowing(time.monotonic())
            self._wake_announcer.wait(MULTICAST_ANNOUNCE_EVERY if flowing else self.announce_every)
            self._wake_announcer.clear()
            self.closed.wait(min(self.announce_every, ANNOUNCE_AT_MOST) - (time.monotonic() - started))

    # --- fetching ---

    def _pick(self) -> tuple[int, None, int, bool] | tuple[None, Peer, int, bool] | None:
        """What to fetch next: ``(extent, None, 0, False)`` from the server, ``(None, peer, want, held)``
        any piece of the bit map ``want`` from ``peer`` (``held``: a peer not known to hold any, asked to
        wait for one); None if there is nothing to do now. Called with the lock held."""
        missing = self.full & ~self.have
        wanted = missing & ~self.busy
        if not wanted and missing.bit_count() <= ENDGAME:
            wanted = missing  # the last few: ask others too, the first answer wins
        if not wanted:
            return None
        seeds = sorted(n for n in self.seed if n not in self.loading and self.extent_mask[n] & wanted)
        if seeds:  # first: the server's link is the one every chunk must cross once
            return seeds[0], None, 0, False
        now = time.monotonic()
        ready = [p for p in self.peers if p not in self.asking and self.backoff.get(p, 0) <= now]
        flowing = self.multicast_flowing(now)
        # While the group's datagrams flow, the links are theirs: the peers repair what was lost once they
        # stop (a TCP stream beside them fills the queues, which then drop datagrams, which costs more
        # repairs: seen on the bench, a node that lost most of the pieces).
        ask = 0 if flowing else wanted
        if ready and ask:
            # Whom to ask, at random (the uploads are what is scarce: spread the asking over them), among
            # those that held something wanted when the tracker last said (they may hold more by now);
            # else any: the tracker's view is a second old, and a peer gains a piece every few tenths.
            # Ask first for what no other open request of this agent asks for: two peers answering the same
            # piece at once would send it twice.
            asked = 0
            for mask in self.asking.values():
                asked |= mask
            fresh = ask & ~asked
            likely = sorted(p for p in ready if self.peers[p] & fresh)
            if likely:
                return None, self.rng.choice(likely), fresh, False
            likely = sorted(p for p in ready if self.peers[p] & ask)
            if likely:
                return None, self.rng.choice(likely), ask, False
            if self.probing < HELD and not flowing:  # a few workers wait at peers for what they will gain
                self.probing += 1
                return None, self.rng.choice(sorted(ready)), fresh or ask, True
        # No peer to wait for (alone, every peer dropped, or no tracker and none known): the server, with
        # every worker, as without the exchange. No progress for a while, or a tracker that stopped
        # answering: the server, one chunk at a time, the known peers all the same (in a large fleet, many
        # agents may be slow at once; all of them on the server with every worker would swamp its link).
        alone = self._alone(now)
        alone = alone or not self.tracker_ok and not self.peers
        slow = (now - self.last_done > self.stall or not self.tracker_ok) and not self.loading
        if alone or slow:
            todo = [n for n, m in enumerate(self.extent_mask) if m & wanted and n not in self.loading]
            if todo:
                return self.rng.choice(todo), None, 0, False
        return None

    def _alone(self, now: float) -> bool:
        """Whether the tracker has listed no peer for `alone` seconds."""
        return self.alone_since is not None and now - self.alone_since > self.alone

    def _from_server(self, fd: int, n: int) -> None:
        """Stream extent ``n`` from the server, writing each piece once it is whole and checked."""
        extent = self.extents[n]
        buf = bytearray()
        index = self.first[n]
        queue = list(enumerate(extent.pieces, index))

        def sink(data: bytes) -> None:
            buf.extend(data)
            while queue and len(buf) >= queue[0][1].length:
                k, piece = queue.pop(0)
                part = bytes(buf[: piece.length])
                del buf[: piece.length]
                if hashlib.sha256(part).hexdigest() != piece.sha256:
                    raise _BadChunk(f"the server's chunk {extent.chunk.sha256} does not match the digest of "
                                  f"its piece {k - index}")  # fmt: skip
                self._write(fd, k, part, None)
                # To the group if the tracker handed the chunk out (not a fallback's), unless alone (the
                # first announcements of a fleet list no peer yet: not alone for `alone` seconds).
                if self.mc_tx is not None and n in self.seed and not self._alone(time.monotonic()):
                    self._multicast(k, part)

        digest = self.server(extent.chunk, sink)
        if digest != extent.chunk.sha256 or queue or buf:
            raise _BadChunk(f"the server's chunk {extent.chunk.sha256} does not match its digest")

    def _write(self, fd: int, k: int, data: bytes, peer: Peer | None, multicast: bool = False) -> None:
        """Write piece ``k`` (checked) and count it held (from the server unless from ``peer`` or
        ``multicast``)."""
        with self.cond:
            if self.have >> k & 1:  # the same piece came twice at once
                self.twice += len(data)
                return
        piece = self.pieces[k]
        view, at = memoryview(data), 0
        while at < len(view):
            at += os.pwrite(fd, view[at:], piece.offset + at)
        with self.cond:
            if self.have >> k & 1:
                self.twice += len(data)
                return
            self.have |= 1 << k
            self.done_bytes += piece.length
            self.last_done = time.monotonic()
            if multicast:
                self.from_multicast += piece.length
            if peer is None and not multicast:
                self.from_server += piece.length
            else:
                self.from_peers += piece.length
            self.cond.notify_all()
        if not multicast:
            self._wake_announcer.set()  # at most every ANNOUNCE_AT_MOST seconds all the same

    def _from_peer(self, fd: int, peer: Peer, want: int, wait: float = 0.0) -> None:
        """Ask ``peer`` for any piece of ``want`` (held up to ``wait`` seconds for one to arrive there);
        write it if it is one of them and matches."""
        try:
            target = f"/pieces?want={mask_hex(want)}"
            if wait:
                target += f"&wait={round(wait * 1000)}"
            response = self.pool.request(
                "GET", peer.address, peer.port, target, {"X-Swarm": self.token},
                timeout=self.peer_timeout + wait,
            )  # fmt: skip
        except OSError as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from exc
        with response:
            try:  # what the peer holds now: fresher than the tracker's word
                held = parse_mask(response.headers.get("x-have", ""), len(self.pieces))
            except ValueError:
                held = 0
            refused = response.status in (404, 503)
            with self.cond:
                if peer in self.peers:
                    self.peers[peer] |= held
                self.asked += 1
                self.refused += response.status == 404
                self.busy_answers += response.status == 503
            if refused:
                raise _Refused()
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
            try:
                k = int(response.headers.get("x-piece", ""))
            except ValueError:
                raise _BadPiece("its answer names no piece") from None
            if not 0 <= k < len(self.pieces) or not want >> k & 1:
                raise _BadPiece(f"it sent piece {k}, which was not asked for")
            piece = self.pieces[k]
            with self.cond:
                mine = not self.busy >> k & 1  # else another worker is fetching it too: leave its mark
                endgame = (self.full & ~self.have).bit_count() <= ENDGAME
                if self.have >> k & 1 or not mine and not endgame:
                    self.cut += 1
                    return  # coming from another peer already: cut this answer off (closes the connection)
                self.busy |= 1 << k
            try:
                allowed = self.peer_timeout + PEER_SECONDS_PER_MIB * piece.length / (1 << 20)
                deadline = time.monotonic() + allowed
                buf = bytearray()
                while len(buf) <= piece.length and (data := response.read(1 << 20)):
                    buf += data
                    if len(buf) < piece.length and time.monotonic() > deadline:
                        raise TimeoutError(f"{len(buf)} of {piece.length} bytes in {allowed:.0f} s")
                if len(buf) != piece.length or hashlib.sha256(buf).hexdigest() != piece.sha256:
                    raise _BadPiece(f"piece {k} does not match its digest")
                self._write(fd, k, bytes(buf), peer)
            finally:
                if mine:
                    with self.cond:
                        self.busy &= ~(1 << k)

    def _worker(self, fd: int) -> None:
        mine = 0
        while True:
            with self.cond:
                while True:
                    if self.error is not None or self.have == self.full:
                        return
                    choice = self._pick()
                    if choice is not None:
                        break
                    if not self.multicast_flowing(time.monotonic()):
                        self._wake_announcer.set()  # nothing to do: news of the peers, please
                    self.cond.wait(0.25)
                n, peer, want, probe = choice
                if peer is None:
                    assert n is not None
                    self.loading.add(n)
                    mine = self.extent_mask[n] & ~self.have & ~self.busy
                    self.busy |= mine
                else:
                    self.asking[peer] = want
            try:
                if peer is None:
                    assert n is not None
                    try:
                        self._from_server(fd, n)
                        with self.cond:
                            self.server_failures = 0
                    finally:
                        with self.cond:
                            self.loading.discard(n)
                            self.seed.discard(n)
                            self.busy &= ~mine
                            self.cond.notify_all()
                    continue
                self._from_peer(fd, peer, want, WAIT_SECONDS if probe else SLOT_WAIT_SECONDS)
            except _Refused:
                self._back_off(peer)
                continue
            except _NoAnswer as exc:
                assert peer is not None
                with self.cond:
                    strikes = self.strikes[peer] = self.strikes.get(peer, 0) + 1
                    # One that has served this agent before is busy, not broken: it is asked again later.
                    drop = strikes >= STRIKES and peer not in self.served_us
                    self.backoff[peer] = time.monotonic() + min(NO_ANSWER_BACKOFF_MAX, 2.0 ** (strikes - 1))
                if drop:
                    self._drop(peer, f"{strikes} times no answer, the last: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - the last one is handed to `deliver`, which raises it
                if peer is not None and isinstance(exc, OSError):
                    self._drop(peer, f"{type(exc).__name__}: {exc}", bad=isinstance(exc, _BadPiece))
                    continue
                with self.cond:
                    # The server's chunk failed (the deploy's fetch may say so as an AgentError): again, a
                    # few times in a row, unless it did not match its digest.
                    if peer is None:
                        self.server_failures += 1
                    if peer is not None or isinstance(exc, _BadChunk) or self.server_failures >= SERVER_TRIES:
                        self.error = exc
                        self.cond.notify_all()
                        return
                log(f"peer exchange: a chunk from the server failed ({exc}); trying again")
                self.closed.wait(self.server_failures)
                continue
            finally:
                if peer is not None:
                    with self.cond:
                        self.asking.pop(peer, None)
                        if probe:
                            self.probing -= 1
                        self.cond.notify_all()
            with self.cond:
                self.refusals.pop(peer, None)
                self.strikes.pop(peer, None)
                self.served_us.add(peer)

    def _back_off(self, peer: Peer | None) -> None:
        """``peer`` is busy or holds nothing wanted: leave it alone for a while, longer each time."""
        assert peer is not None
        with self.cond:
            count = self.refusals[peer] = self.refusals.get(peer, 0) + 1
            self.backoff[peer] = time.monotonic() + min(BACKOFF_MAX, BACKOFF * 2 ** (count - 1))
            self.cond.notify_all()

    def _drop(self, peer: Peer, why: str, bad: bool = False) -> None:
        """Ask ``peer`` no more; with ``bad`` (it sent what it must not have), tell the tracker too: a peer
        that is only slow or unreachable from here may serve others well."""
        log(f"peer exchange: dropping peer {peer.address}:{peer.port} ({why})")
        with self.cond:
            self.dropped[peer] = why
            if bad:
                self.bad.add(peer)
            self.peers.pop(peer, None)
            self.cond.notify_all()

    # --- multicast ---

    def multicast_flowing(self, now: float) -> bool:
        """Whether pieces arrive by multicast: one came whole and matched lately (`MULTICAST_QUIET`, or
        the time 4 pieces take at the group's rate if longer). Only a matching piece counts: forged
        datagrams must not hold the repairs back."""
        if self.mc_heard is None:
            return False
        quiet = (
            max(MULTICAST_QUIET, 4 * self.pieces[0].length / self.mc_rate)
            if self.mc_rate
            else MULTICAST_QUIET
        )
        return now - self.mc_heard < quiet

    def _join(self, spec: object) -> None:
        """Join the multicast group the tracker named (``{"group", "port", "interface"}``: this agent's
        address), and send the pieces from the server to it; once. A group that cannot be joined is only
        logged: the peers and the server deliver all the same."""
        self.mc_joined = True
        try:
            assert isinstance(spec, dict)
            group, port, interface = str(spec["group"]), int(spec["port"]), str(spec["interface"])
            rate = float(spec.get("rate", 0))
            group_b, interface_b = socket.inet_aton(group), socket.inet_aton(interface)
            if not 224 <= group_b[0] <= 239 or not 0 < port < 65536:
                raise ValueError(f"{group}:{port} is not a multicast group and port")
        except (AssertionError, KeyError, TypeError, ValueError, OSError) as exc:
            log(f"peer exchange: the tracker's multicast group is not usable ({exc}); none")
            return
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rx.bind((group, port))
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group_b + interface_b)
            for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):  # the first as root
                with contextlib.suppress(OSError):
                    rx.setsockopt(socket.SOL_SOCKET, option, MULTICAST_RECEIVE_BUFFER)
                    break
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface_b)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # the provisioning network only
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MULTICAST_SEND_BUFFER)
            tx.connect((group, port))
        except OSError as exc:
            rx.close()
            tx.close()
            log(f"peer exchange: cannot join the multicast group {group}:{port} on {interface} ({exc}); none")
            return
        with self.cond:
            self.mc_tx = tx
            self.mc_rate = rate if rate > 0 else 0.0
        self._hearing = threading.Thread(target=self._hear, args=(rx,), name="swarm-hear", daemon=True)
        self._hearing.start()

    def _multicast(self, k: int, data: bytes) -> None:
        """Send piece ``k`` (from the server, checked) to the group, paced at the tracker's ``rate``: the
        server's stream to this agent then runs at that pace too, and the group's datagrams, from every
        agent sending at once, stay below the links' rate, which a burst would overflow (a datagram lost is
        a piece the peers must repair). Errors are logged, not raised: the peers repair."""
        head = MULTICAST_MAGIC + self.mc_key.tag + self.mc_id
        tx = self.mc_tx
        try:
            for at in range(0, len(data), MULTICAST_PAYLOAD):
                part = data[at : at + MULTICAST_PAYLOAD]
                if self.mc_rate:  # the pace is this agent's, over every chunk it streams
                    now = time.monotonic()
                    with self.cond:  # a token bucket: a short stall is made up for, by at most its size
                        start = max(now - MULTICAST_CATCH_UP / self.mc_rate, self.mc_next)
                        self.mc_next = start + len(part) / self.mc_rate
                    if start > now:
                        time.sleep(start - now)
                if tx is None:
                    return
                self._send_datagram(
                    tx, head + k.to_bytes(4, "big") + at.to_bytes(4, "big") + self.mc_key.apply(k, at, part)
                )
            with self.cond:
                self.multicast_sent += len(data)
        except OSError as exc:
            log(f"peer exchange: sending piece {k} to the multicast group failed ({exc})")

    def _send_datagram(self, tx: socket.socket, datagram: bytes) -> None:
        tx.send(datagram)

    def _hear(self, rx: socket.socket) -> None:
        """Take pieces from the group: assemble each from its datagrams, check it, write it. A piece that
        lost a datagram (its last one came, or none for `MULTICAST_STALE`) is left to the peers."""
        # piece -> its bytes so far, the offsets of the datagrams received, [bytes received, when last]
        partial: dict[int, tuple[bytearray, set[int], list[float]]] = {}
        tag = MULTICAST_MAGIC + self.mc_key.tag
        rx.settimeout(0.25)
        swept = time.monotonic()

        def lost(k: int) -> None:
            partial.pop(k, None)
            with self.cond:
                self.multicast_lost += 1

        with rx:
            while not self.closed.is_set() and self.error is None and self.have != self.full:
                now = time.monotonic()
                if now - swept > MULTICAST_STALE / 4:
                    swept = now
                    for k in [k for k, got in partial.items() if now - got[2][1] > MULTICAST_STALE]:
                        lost(k)
                try:
                    data = rx.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if len(data) <= MULTICAST_HEAD or data[:12] != tag or data[12:16] == self.mc_id:
                    continue
                k, at = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
                body = data[MULTICAST_HEAD:]
                if k >= len(self.pieces) or at + len(body) > self.pieces[k].length:
                    continue
                piece = self.pieces[k]
                with self.cond:
                    if self.have >> k & 1:
                        partial.pop(k, None)
                        continue
                got = partial.get(k)
                if got is None:
                    if len(partial) >= MULTICAST_PARTIAL:
                        lost(next(iter(partial)))
                    got = partial[k] = (bytearray(piece.length), set(), [0, now])
                buf, offsets, count = got
                if at in offsets:
                    continue
                offsets.add(at)
                buf[at : at + len(body)] = self.mc_key.apply(k, at, body)
                count[0] += len(body)
                count[1] = now
                if count[0] < piece.length:
                    if at + len(body) == piece.length:  # its last datagram, and some before it lost
                        lost(k)
                    continue
                del partial[k]
                whole = bytes(buf)
                fd = self._write_fd
                good = count[0] == piece.length and fd is not None  # else overlapping datagrams: forged
                if good and hashlib.sha256(whole).hexdigest() == piece.sha256:
                    assert fd is not None
                    with self.cond:
                        self.mc_heard = now  # a piece that matched: datagrams that do not say nothing
                    self._write(fd, k, whole, None, multicast=True)
                    continue
                lost(k)

    def deliver(self, fd: int, path: str, progress: Callable[[int, int], None] | None = None) -> Stats:
        """Write every piece at its offset into ``fd`` (the disk, or a file, at ``path``: reopened to serve
        peers from), each checked against its digest first; return once all are written. Raises what the
        server fetch raised if it fails, or OSError if the server's chunk does not match (peers failing
        only costs time)."""
        self._read_fd = os.open(path, os.O_RDONLY)
        self._write_fd = fd
        total = sum(p.length for p in self.pieces)
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
                done = self.done_bytes
                if self.error is not None or self.have == self.full:
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
            return Stats(
                self.from_server, self.from_peers, self.served, dropped, self.twice, self.asked, self.refused,
                self.busy_answers, self.cut, self.from_multicast, self.multicast_sent, self.multicast_lost,
            )  # fmt: skip

    def close(self, linger: float = LINGER_SECONDS) -> None:
        """Stop serving peers: at once, or once the tracker says no peer lacks a chunk, or ``linger``
        seconds from now, whichever is first."""
        deadline = time.monotonic() + linger
        with self.cond:
            while self.tracker_ok and self.others_missing and time.monotonic() < deadline:
                self.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self.closed.set()
        with self.cond:
            self.cond.notify_all()  # held requests end
        self._wake_announcer.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for t in [*self._threads, *([self._hearing] if self._hearing else [])]:
            t.join(timeout=2.0)
        self.pool.close()
        with self.cond:
            tx, self.mc_tx = self.mc_tx, None
        if tx is not None:
            tx.close()
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


class _Refused(Exception):
    """The peer's upload slots are full, or it holds nothing wanted: ask someone else."""


class _BadChunk(OSError):
    """The server's chunk does not match its digest, or its pieces theirs: the deploy fails."""


class _BadPiece(OSError):
    """The peer sent a piece that does not match its digest, or one that was not asked for."""


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


def _status(code: int, reason: str, headers: str = "", close: bool = False) -> bytes:
    end = "Connection: close\r\n\r\n" if close else "\r\n"
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n{headers}{end}".encode()
