"""The agents' peer exchange (rhaas.agent.swarm) with its tracker (rhaas.core.provisioning.tracker):
several agents in this process over loopback, each writing a file; the server is a function that counts
what it sends. Every node must end with the image exactly, whatever its peers do."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rhaas.agent import swarm, wire
from rhaas.agent.disk import Disk
from rhaas.agent.extents import DiskImage, Extent, exchange_for, write_image
from rhaas.agent.work import AgentError, Artifact
from rhaas.core.provisioning.tracker import Tracker

CHUNK = 256 << 10
#: Pieces per chunk: the agents exchange pieces, the server serves whole chunks.
PIECES = 2
PIECE = CHUNK // PIECES
COUNT = 12


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extent(offset: int, data: bytes) -> swarm.Extent:
    pieces = tuple(
        swarm.Chunk(offset + at, len(data[at : at + PIECE]), sha(data[at : at + PIECE]))
        for at in range(0, len(data), PIECE)
    )
    return swarm.Extent(swarm.Chunk(offset, len(data), sha(data)), pieces)


class Server:
    """The image's chunks as the server holds them; counts the bytes it sends."""

    def __init__(self, count: int = COUNT) -> None:
        self.data = [os.urandom(CHUNK) for _ in range(count)]
        self.extents = [extent(n * CHUNK, d) for n, d in enumerate(self.data)]
        self.by_sha = {e.chunk.sha256: d for e, d in zip(self.extents, self.data, strict=True)}
        self.sent = 0
        self.lock = threading.Lock()
        self.delay = 0.0
        self.at_once = self.most_at_once = 0

    @property
    def image(self) -> bytes:
        return b"".join(self.data)

    @property
    def layout(self) -> list[int]:
        return [len(e.pieces) for e in self.extents]

    def fetch(self, chunk: swarm.Chunk, sink: Callable[[bytes], object]) -> str:
        data = self.by_sha.get(chunk.sha256, bytes(chunk.length))
        with self.lock:
            self.sent += chunk.length
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            for at in range(0, len(data), PIECE // 2):  # streamed, half a piece at a time
                time.sleep(self.delay / (2 * PIECES))  # a chunk on the wire, so that fetches can overlap
                sink(data[at : at + PIECE // 2])
        finally:
            with self.lock:
                self.at_once -= 1
        return sha(data)


def announcer(tracker: Tracker, name: str, layout: list[int]) -> swarm.Announce:
    def announce(have: str, port: int, dropped: list[tuple[str, int]]) -> dict[str, object]:
        return tracker.announce(
            "image", lambda: layout, name, "127.0.0.1", port, int(have or "0", 16), dropped
        )

    return announce


def deliver_into(exchange: swarm.Exchange, path: Path, linger: float = 0) -> swarm.Stats:
    """Deliver the image into the new file ``path`` as a disk; the exchange serves peers ``linger`` s more."""
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        return exchange.deliver(fd, str(path))
    finally:
        os.close(fd)
        exchange.close(linger=linger)


def run_fleet(
    tmp_path: Path, server: Server, tracker: Tracker, names: list[str],
    make: Callable[[str], swarm.Exchange] | None = None,
) -> dict[str, swarm.Stats]:  # fmt: skip
    """Every agent delivers the image into a file of its own, all at once (each agent's exchange made by
    ``make(name)``, else a plain one); their stats, once all have delivered and stopped serving (each
    serves until no peer lacks a chunk)."""
    stats: dict[str, swarm.Stats] = {}
    errors: list[BaseException] = []
    exchanges = {
        n: make(n) if make is not None else swarm.Exchange(
            server.extents, server.fetch, announcer(tracker, n, server.layout), "127.0.0.1",
            announce_every=0.1, peer_timeout=1.0,
        )
        for n in names
    }  # fmt: skip

    def run(name: str) -> None:
        try:
            stats[name] = deliver_into(exchanges[name], tmp_path / name, linger=10)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an agent did not finish"
    if errors:
        raise errors[0]
    for name in names:
        assert (tmp_path / name).read_bytes() == server.image, f"{name}'s disk is not the image"
    return stats


def test_a_fleet_gets_the_image_with_about_one_image_from_the_server(tmp_path):
    server, tracker = Server(), Tracker()
    names = [f"n{i}" for i in range(6)]
    stats = run_fleet(tmp_path, server, tracker, names)
    size = len(server.image)
    assert server.sent <= 2 * size, f"the server sent {server.sent / size:.2f} images for 6 nodes"
    assert sum(s.from_peers for s in stats.values()) >= 3 * size, "the peers did not carry the fleet"
    assert sum(s.from_server + s.from_peers for s in stats.values()) == len(names) * size
    assert all(not s.dropped for s in stats.values()), "no peer misbehaved, none should be dropped"


@contextmanager
def rogue_peer(mode: str) -> Iterator[int]:
    """A peer on loopback that claims every piece and serves the first one asked for ``corrupt`` (random
    bytes) or ``stall`` (accepts, reads the request, sends nothing); its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            request = conn.recv(65536).split(b" ")[1].decode()
            if mode == "stall":
                held.append(conn)  # kept open, silent, until the test ends
                continue
            want = int(request.partition("want=")[2].partition("&")[0] or "0", 16)
            n = (want & -want).bit_length() - 1
            body = os.urandom(PIECE)
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Piece: {n}\r\nConnection: close\r\n\r\n"
            )
            try:
                conn.sendall(head.encode() + body)
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)
        for conn in held:
            conn.close()


@pytest.mark.parametrize("mode", ["corrupt", "stall"])
def test_a_peer_that_serves_bad_chunks_or_stalls_is_dropped_and_every_node_is_right(tmp_path, mode):
    server = Server()
    tracker = Tracker()
    with rogue_peer(mode) as port:
        # It announces everything: every agent finds it likely to hold what it wants, early.
        tracker.announce(
            "image", lambda: server.layout, "rogue", "127.0.0.1", port, (1 << COUNT * PIECES) - 1
        )
        stats = run_fleet(tmp_path, server, tracker, ["n1", "n2", "n3"])
    for name, s in stats.items():
        assert any(f":{port}:" in why for why in s.dropped), f"{name} kept the {mode} peer"
    assert server.sent <= 3 * len(server.image)


def test_without_a_tracker_every_chunk_comes_from_the_server(tmp_path):
    server = Server()

    def unreachable(have: str, port: int, dropped: list[tuple[str, int]]) -> dict[str, object]:
        raise ConnectionRefusedError("no route to the tracker")

    exchange = swarm.Exchange(server.extents, server.fetch, unreachable, "127.0.0.1", announce_every=0.1)
    path = tmp_path / "disk"
    stats = deliver_into(exchange, path)
    assert path.read_bytes() == server.image
    assert stats.from_server == server.sent == len(server.image) and stats.from_peers == 0


def test_peers_that_cannot_be_reached_leave_the_node_to_the_server(tmp_path):
    """The tracker lists a peer that holds everything but cannot be connected to: the node leaves it alone
    (and drops it at the third failure) and fetches from the server once it has waited `stall` seconds
    without progress."""
    server = Server(count=4)
    tracker = Tracker()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more: connections are refused
    tracker.announce("image", lambda: server.layout, "gone", "127.0.0.1", port, (1 << 4 * PIECES) - 1)
    exchange = swarm.Exchange(
        server.extents, server.fetch, announcer(tracker, "n1", server.layout), "127.0.0.1",
        announce_every=0.1, stall=0.5,
    )  # fmt: skip
    path = tmp_path / "disk"
    stats = deliver_into(exchange, path)
    assert path.read_bytes() == server.image
    assert stats.from_server == len(server.image)
    gone = swarm.Peer("127.0.0.1", port)
    assert exchange.strikes.get(gone) or gone in exchange.dropped, "the unreachable peer was tried"


def test_a_server_chunk_that_does_not_match_fails_the_delivery(tmp_path):
    server = Server(count=2)
    bad = extent(0, os.urandom(CHUNK))  # its digests are of other bytes than the server's chunk 0
    server.by_sha[bad.chunk.sha256] = server.data[0]
    exchange = swarm.Exchange([bad, server.extents[1]], server.fetch, None, "127.0.0.1")
    path = tmp_path / "disk"
    with pytest.raises(OSError, match="does not match"):
        deliver_into(exchange, path)
    assert server.data[0][:PIECE] not in path.read_bytes(), "nothing unverified is written"


def test_a_server_chunk_whose_pieces_do_not_match_fails_the_delivery(tmp_path):
    """The chunk's own digest is right, one piece's is not: refused before the piece is written."""
    server = Server(count=1)
    good = server.extents[0]
    wrong = good._replace(pieces=(good.pieces[0], good.pieces[1]._replace(sha256=sha(b"other"))))
    exchange = swarm.Exchange([wrong], server.fetch, None, "127.0.0.1")
    path = tmp_path / "disk"
    with pytest.raises(OSError, match="piece 1"):
        deliver_into(exchange, path)
    assert server.data[0][PIECE:] not in path.read_bytes(), "the piece that does not match is not written"


@contextmanager
def half_delivered(
    tmp_path: Path,
) -> Iterator[tuple[Server, swarm.Exchange, threading.Event, threading.Thread, Path]]:
    """An agent delivering a one-chunk image whose server has sent the chunk's first piece and holds the
    second until ``gate`` is set: the server, the agent's exchange, the gate, the delivering thread and
    the agent's disk."""
    server = Server(count=1)
    gate = threading.Event()
    streamed = threading.Event()

    def slow(chunk: swarm.Chunk, sink: Callable[[bytes], object]) -> str:
        data = server.by_sha[chunk.sha256]
        sink(data[:PIECE])
        streamed.set()
        assert gate.wait(10), "the test never let the second piece through"
        sink(data[PIECE:])
        return sha(data)

    first = swarm.Exchange(server.extents, slow, None, "127.0.0.1")
    path = tmp_path / "first"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    runner = threading.Thread(target=first.deliver, args=(fd, str(path)), daemon=True)
    runner.start()
    try:
        assert streamed.wait(10)
        yield server, first, gate, runner, path
    finally:
        gate.set()
        runner.join(timeout=10)
        os.close(fd)
        first.close(linger=0)


def test_pieces_are_passed_on_while_the_chunk_still_streams_in(tmp_path):
    """A piece that has arrived whole is written and offered before the rest of its chunk: one agent's
    first piece is served to another while the server is still sending the chunk's second."""
    with half_delivered(tmp_path) as (server, first, gate, runner, path):
        deadline = time.monotonic() + 10
        while not first.have & 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        want = swarm.mask_hex(0b11)
        token = {"X-Swarm": swarm.swarm_token([server.extents[0].chunk.sha256])}
        with wire.request("GET", "127.0.0.1", first.port, f"/pieces?want={want}", {}, timeout=5) as answer:
            assert answer.status == 403, "only the image's agents, who know its chunk list, are served"
        answer = wire.request("GET", "127.0.0.1", first.port, f"/pieces?want={want}", token, timeout=5)
        with answer:
            assert answer.status == 200 and answer.headers["x-piece"] == "0", answer.status
            assert answer.read(PIECE + 1) == server.data[0][:PIECE]
            assert answer.headers["x-have"] == "1", "it says what it holds: the first piece only"
        for target, status in (("/pieces?want=2", 404), ("/pieces?want=zz", 400), ("/chunks/x", 400)):
            with wire.request("GET", "127.0.0.1", first.port, target, token, timeout=5) as answer:
                assert answer.status == status, target
        gate.set()
        runner.join(timeout=10)
        assert path.read_bytes() == server.data[0]


def test_the_tracker_hands_out_each_chunk_from_the_server_once_a_few_at_a_time():
    now = [0.0]
    tracker = Tracker(clock=lambda: now[0], slots=2, grant_seconds=30, peer_seconds=100)
    layout = [2, 2, 2, 2]  # four chunks of two pieces

    def announce(name: str, have: int) -> dict:
        return tracker.announce("img", lambda: layout, name, "10.0.0.1", 7070, have)

    seeds = [announce(f"n{i}", 0)["seed"] for i in range(4)]
    assert seeds == [[0], [1], [], []], "two slots: two chunks handed out, to two agents"
    assert announce("n0", 0b01)["seed"] == [0], "a hand-out stays with its agent until it holds it all"
    done = announce("n0", 0b11)
    assert done["seed"] == [2] and done["missing"]
    assert {p["address"] for p in done["peers"]} == {"10.0.0.1"} and len(done["peers"]) == 3
    now[0] = 31.0  # n1 never reported chunk 1: it is handed out again, to whoever asks
    assert announce("n2", 0)["seed"] == [1]
    assert announce("n3", 0)["seed"] == [2], "n0's expired too"
    assert announce("n0", 0b11)["seed"] == [], "both slots taken"


def test_the_tracker_lists_those_holding_what_an_agent_lacks_first_and_few():
    tracker = Tracker(max_peers=3)
    layout = [4]
    for i in range(5):
        tracker.announce("img", lambda: layout, f"empty{i}", f"10.0.0.{i}", 7070, 0)
    tracker.announce("img", lambda: layout, "full", "10.0.1.1", 7070, 0b1111)
    answer = tracker.announce("img", lambda: layout, "n", "10.0.2.1", 7070, 0b0001)
    assert len(answer["peers"]) == 3, "at most max_peers"
    assert answer["peers"][0] == {"address": "10.0.1.1", "port": 7070, "have": "f"}, answer["peers"]


def test_a_work_answer_without_peers_makes_no_exchange_and_one_with_peers_does(tmp_path):
    data = os.urandom(CHUNK)
    plain = DiskImage(CHUNK, (Extent(0, CHUNK, sha(data)),), False, "chunks/{sha256}")

    def fetch(artifact: Artifact, sink: object) -> str:
        raise AssertionError("not called")

    assert exchange_for(plain, fetch, lambda *a: {}) is None
    exchange = exchange_for(plain._replace(peers=("peers", 0)), fetch, lambda *a: {})
    assert exchange is not None
    exchange.close(linger=0)


def test_write_image_through_the_exchange_fails_as_a_write_disk_error(tmp_path):
    """A server that keeps failing mid-deploy is the deploy's error (phase write-disk), as without peers,
    once its chunk was tried `SERVER_TRIES` times."""
    data = os.urandom(CHUNK)
    image = DiskImage(CHUNK, (Extent(0, CHUNK, sha(data)),), False, "chunks/{sha256}", ("peers", 0))
    tries = []

    def failing(artifact: Artifact, sink: object) -> str:
        tries.append(artifact.url)
        raise OSError("connection reset")

    exchange = exchange_for(image, failing, lambda *a: {"peers": [], "seed": [0]})
    disk = tmp_path / "vda"
    disk.write_bytes(bytes(2 * CHUNK))
    with pytest.raises(AgentError, match="connection reset") as raised:
        write_image(image, Disk("vda", str(disk), 2 * CHUNK), failing, lambda d, t: None, exchange)
    assert raised.value.phase == "write-disk"
    assert len(tries) == swarm.SERVER_TRIES


def test_a_server_chunk_that_fails_once_is_fetched_again(tmp_path):
    """The deploy's fetch reports a failure as an AgentError; one failure costs a retry, not the deploy."""
    server = Server(count=2)
    failures = [AgentError("write-disk", "downloading chunks/x failed: timed out")]

    def flaky(chunk: swarm.Chunk, sink: Callable[[bytes], object]) -> str:
        if failures:
            raise failures.pop()
        return server.fetch(chunk, sink)

    exchange = swarm.Exchange(server.extents, flaky, None, "127.0.0.1")
    deliver_into(exchange, tmp_path / "disk")
    assert (tmp_path / "disk").read_bytes() == server.image and not failures


def test_the_tracker_lists_no_dropped_peer_and_hands_out_what_only_it_holds():
    tracker = Tracker()
    layout = [1, 1]
    tracker.announce("img", lambda: layout, "liar", "10.0.0.9", 7070, 0b11)
    first = tracker.announce("img", lambda: layout, "n1", "10.0.0.1", 7070, 0)
    assert first["seed"] == [] and [p["address"] for p in first["peers"]] == ["10.0.0.9"]
    after = tracker.announce("img", lambda: layout, "n1", "10.0.0.1", 7070, 0, [("10.0.0.9", 7070)])
    assert after["peers"] == [] and after["seed"] == [0]


def test_agents_of_different_images_are_not_each_others_peers():
    tracker = Tracker()
    layout = [1, 1]
    tracker.announce("a", lambda: layout, "n1", "10.0.0.1", 7070, 0b01)
    assert tracker.announce("b", lambda: layout, "n2", "10.0.0.2", 7070, 0)["peers"] == []
    third = tracker.announce("a", lambda: layout, "n3", "10.0.0.3", 7070, 0)
    assert [p["address"] for p in third["peers"]] == ["10.0.0.1"]


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[list[str]]:
    """Two loop devices (root) the size of the test image: nodes' disks are block devices, whose fstat
    size is 0."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup")
    loops: list[str] = []
    try:
        for name in ("n1", "n2"):
            backing = tmp_path / f"{name}.disk"
            backing.write_bytes(b"")
            os.truncate(backing, CHUNK * COUNT)
            loops.append(subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                                        capture_output=True, text=True).stdout.strip())  # fmt: skip
        yield loops
    finally:
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], check=False)


def test_peers_serve_chunks_read_from_block_devices(loop_devices):
    """Found on the lab: every answer from a peer ended right after its headers, because sendfile took
    the disk's size from fstat (0 for a block device). One agent delivers the image onto its block device
    from the server; the other takes it all from that one."""
    server, tracker = Server(), Tracker()
    first = swarm.Exchange(server.extents, server.fetch, announcer(tracker, "n1", server.layout),
                           "127.0.0.1", announce_every=0.1, peer_timeout=1.0)  # fmt: skip
    fd = os.open(loop_devices[0], os.O_WRONLY)
    try:
        assert first.deliver(fd, loop_devices[0]).from_server == len(server.image)
    finally:
        os.close(fd)
    assert os.stat(loop_devices[0]).st_size == 0, "a block device: what broke sendfile"
    sent = server.sent
    second = swarm.Exchange(server.extents, server.fetch, announcer(tracker, "n2", server.layout),
                            "127.0.0.1", announce_every=0.1, peer_timeout=1.0)  # fmt: skip
    fd = os.open(loop_devices[1], os.O_WRONLY)
    try:
        stats = second.deliver(fd, loop_devices[1])
    finally:
        os.close(fd)
        first.close(linger=0)
        second.close(linger=0)
    # Most from the peer (the tracker may not have heard of the first's last chunk yet: that one the
    # server may send), each chunk checked; a peer whose answers were empty would have been dropped.
    assert stats.from_peers >= len(server.image) - 2 * CHUNK and stats.dropped == (), stats
    assert server.sent - sent == stats.from_server
    with open(loop_devices[1], "rb") as disk:
        assert disk.read(len(server.image)) == server.image


def test_an_agent_with_no_peer_to_wait_for_fetches_from_the_server_with_every_worker(tmp_path):
    """Alone with the tracker (or with every peer dropped) for ``alone`` seconds, an agent has no one to
    share with: it fetches as without the exchange, with all its workers, not one chunk per grant of the
    tracker."""
    server, tracker = Server(count=8), Tracker()
    server.delay = 0.2
    exchange = swarm.Exchange(server.extents, server.fetch, announcer(tracker, "n1", server.layout),
                              "127.0.0.1", announce_every=0.1, stall=60, alone=0.3)  # fmt: skip
    stats = deliver_into(exchange, tmp_path / "disk")
    assert (tmp_path / "disk").read_bytes() == server.image
    assert stats.from_server == len(server.image)
    assert server.most_at_once == swarm.FETCH_SLOTS, "the workers fetched one at a time"


def ask(port: int, target: str, headers: dict[str, str]) -> wire.Response:
    return wire.request("GET", "127.0.0.1", port, target, headers, timeout=10)


def full_peer(tmp_path: Path, server: Server) -> tuple[swarm.Exchange, int]:
    """An agent that has delivered the whole image and serves it (no tracker); and its disk's fd."""
    peer = swarm.Exchange(server.extents, server.fetch, None, "127.0.0.1")
    path = tmp_path / "peer"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    peer.deliver(fd, str(path))
    return peer, fd


def test_a_held_request_is_answered_once_a_wanted_piece_arrives(tmp_path):
    """``wait``: a peer that holds none of the pieces asked for keeps the request until one arrives, and
    sends it then (not a 404 the asker would have to ask again after)."""
    with half_delivered(tmp_path) as (server, first, gate, runner, _):
        token = {"X-Swarm": swarm.swarm_token([server.extents[0].chunk.sha256])}
        released: list[float] = []
        threading.Timer(0.5, lambda: (released.append(time.monotonic()), gate.set())).start()
        started = time.monotonic()
        with ask(first.port, "/pieces?want=2&wait=8000", token) as answer:
            answered = time.monotonic()
            assert answer.status == 200 and answer.headers["x-piece"] == "1", answer.status
            assert answer.read(PIECE + 1) == server.data[0][PIECE:]
        assert released and released[0] <= answered < started + 5, "answered when the piece came"
        with ask(first.port, "/pieces?want=4&wait=300", token) as answer:
            assert answer.status == 404, "a piece not in the image never comes: 404 once the wait is over"
        for query in ("want=1&wait=10001", "want=1&wait=-1", "want=1&wait=x", "wait=1"):
            with ask(first.port, f"/pieces?{query}", token) as answer:
                assert answer.status == 400, query
        runner.join(timeout=10)


def test_an_upload_holds_its_slot_until_its_piece_has_left(tmp_path):
    """A peer sends at most `UPLOAD_SLOTS` pieces at once: a piece counts as sent once it has left the
    socket, not once it is in the kernel's send buffer (that takes megabytes, and the link would be shared
    by every asker at once). Askers that do not read keep their slots; the next one is told busy."""
    server = Server(count=4)
    peer, fd = full_peer(tmp_path, server)
    token = f"X-Swarm: {swarm.swarm_token([e.chunk.sha256 for e in server.extents])}"
    stuck = []
    try:
        for n in range(swarm.UPLOAD_SLOTS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            sock.connect(("127.0.0.1", peer.port))
            sock.sendall(f"GET /pieces?want={swarm.mask_hex(1 << n)} HTTP/1.1\r\n{token}\r\n\r\n".encode())
            stuck.append(sock)
        deadline = time.monotonic() + 5
        while peer.uploading < swarm.UPLOAD_SLOTS and time.monotonic() < deadline:
            time.sleep(0.01)
        want = swarm.mask_hex(0xFF)
        headers = {"X-Swarm": token.split(": ", 1)[1]}
        with ask(peer.port, f"/pieces?want={want}", headers) as answer:
            assert answer.status == 503, "every slot is taken by a piece still on its way"
        for sock in stuck:
            sock.close()
        deadline = time.monotonic() + 5
        while peer.uploading and time.monotonic() < deadline:
            time.sleep(0.01)
        with ask(peer.port, f"/pieces?want={want}", headers) as answer:
            assert answer.status == 200, "the slots are free again once those askers are gone"
            answer.read()
    finally:
        for sock in stuck:
            sock.close()
        os.close(fd)
        peer.close(linger=0)
