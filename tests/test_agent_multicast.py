"""The peer exchange's multicast (rhaas.agent.swarm, the tracker's ``multicast``): several agents in this
process, joined to a group on loopback. One agent takes the image from the server and sends it to the
group; the others take it from there, and their peers repair what the group lost or what did not match.
Every node must end with the image exactly."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest

from rhaas.agent import swarm
from rhaas.core.provisioning.tracker import Tracker, multicast_group
from tests.test_agent_swarm import Server, deliver_into, run_fleet

#: Bytes per second the group is sent at: the 3 MiB test image in about a second.
RATE = 3 << 20


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multicast_announcer(tracker: Tracker, name: str, layout: list[int], port: int) -> swarm.Announce:
    def announce(have: str, peer_port: int, dropped: list[tuple[str, int]]) -> dict[str, object]:
        return tracker.announce(
            "image", lambda: layout, name, "127.0.0.1", peer_port, int(have or "0", 16), dropped, (port, RATE)
        )

    return announce


def run_group(
    tmp_path: Path, server: Server, names: list[str], kind: type[swarm.Exchange] = swarm.Exchange,
    port: int | None = None,
) -> dict[str, swarm.Stats]:  # fmt: skip
    """Every agent delivers the image into a file of its own, all at once, with a multicast group (on
    ``port``, else a free one); their stats, once every disk has been checked."""
    tracker, port = Tracker(), port or free_udp_port()

    def make(name: str) -> swarm.Exchange:
        announce = multicast_announcer(tracker, name, server.layout, port)
        return kind(server.extents, server.fetch, announce, "127.0.0.1", announce_every=0.1, peer_timeout=1.0)

    return run_fleet(tmp_path, server, tracker, names, make)


def slow_server() -> Server:
    """The image's chunks, each taking a while on the wire (the agents join the group meanwhile)."""
    server = Server()
    server.delay = 0.2
    return server


def test_one_agent_takes_the_image_from_the_server_and_the_others_take_it_from_the_group(tmp_path):
    server = slow_server()
    stats = run_group(tmp_path, server, [f"n{i}" for i in range(4)])
    size = len(server.image)
    senders = [n for n, s in stats.items() if s.multicast_sent]
    assert len(senders) == 1, f"one agent sends to the group, not {senders}"
    assert stats[senders[0]].multicast_sent == size == stats[senders[0]].from_server
    assert server.sent == size, f"the server sent {server.sent / size:.2f} images"
    for name, s in stats.items():
        if name != senders[0]:
            assert s.from_server == 0, f"{name} took from the server"
            # Loopback loses nothing, but an agent may join a moment after the first pieces were sent.
            assert s.from_multicast >= size // 2, f"{name}: {s.from_multicast} of {size} bytes from the group"


class Lossy(swarm.Exchange):
    """Sends every fifth datagram nowhere: a network that loses them."""

    def _send_datagram(self, tx: socket.socket, datagram: bytes) -> None:
        self.count = getattr(self, "count", 0) + 1
        if self.count % 5:
            super()._send_datagram(tx, datagram)


def test_pieces_the_group_lost_are_repaired_by_the_peers(tmp_path):
    server = slow_server()
    stats = run_group(tmp_path, server, [f"n{i}" for i in range(3)], Lossy)
    size = len(server.image)
    receivers = [s for s in stats.values() if not s.multicast_sent]
    assert len(receivers) == 2
    for s in receivers:
        assert s.multicast_lost > 0, "no piece lost a datagram: the loss was not injected"
        assert s.from_multicast < size, "every piece came whole from the group although datagrams were lost"
        assert s.from_peers > s.from_multicast, "the peers repaired nothing"
    assert server.sent == size, "the repairs came from the server, not the peers"


def forger(server: Server, port: int, stop: threading.Event) -> None:
    """Sends datagrams for every piece, with the swarm's tag (seen on the wire) and bytes of its own:
    whoever is on the network can, without the key."""
    key = swarm.MulticastKey([e.chunk.sha256 for e in server.extents])
    group = multicast_group("image")
    pieces = [p for e in server.extents for p in e.pieces]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        while not stop.is_set():
            for k, piece in enumerate(pieces):
                for at in range(0, piece.length, 8192):
                    head = (
                        swarm.MULTICAST_MAGIC
                        + key.tag
                        + b"evil"
                        + k.to_bytes(4, "big")
                        + at.to_bytes(4, "big")
                    )
                    tx.sendto(head + os.urandom(min(8192, piece.length - at)), (group, port))
            stop.wait(0.3)


def test_forged_datagrams_are_never_written(tmp_path):
    server = slow_server()
    port = free_udp_port()
    stop = threading.Event()
    thread = threading.Thread(target=forger, args=(server, port, stop), daemon=True)
    thread.start()
    try:
        stats = run_group(tmp_path, server, [f"n{i}" for i in range(3)], port=port)  # checks every disk
    finally:
        stop.set()
        thread.join()
    assert sum(s.multicast_lost for s in stats.values()) > 0, "no forged datagram was heard"


def test_the_group_carries_no_byte_of_the_image_in_the_clear(tmp_path):
    server = slow_server()
    port = free_udp_port()
    heard: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:  # anyone on the network may join
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((multicast_group("image"), port))
        group = socket.inet_aton(multicast_group("image")) + socket.inet_aton("127.0.0.1")
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.settimeout(0.5)
        run_group(tmp_path, server, ["n0", "n1"], port=port)
        while True:
            try:
                heard.append(rx.recv(65536))
            except TimeoutError:
                break
    heard_bytes = sum(len(d) - swarm.MULTICAST_HEAD for d in heard)
    assert heard_bytes >= len(server.image) // 2, f"the listener heard {heard_bytes} bytes: (almost) nothing"
    image = server.image
    pieces = [p for e in server.extents for p in e.pieces]
    for datagram in heard:
        k, at = int.from_bytes(datagram[16:20], "big"), int.from_bytes(datagram[20:24], "big")
        body = datagram[swarm.MULTICAST_HEAD :]
        clear = image[pieces[k].offset + at :][: len(body)]
        assert body != clear and body[:64] not in image, f"piece {k} at {at} went in the clear"


def test_an_agent_alone_sends_nothing_to_the_group(tmp_path):
    server = Server()
    tracker, port = Tracker(), free_udp_port()
    announce = multicast_announcer(tracker, "n0", server.layout, port)
    exchange = swarm.Exchange(server.extents, server.fetch, announce, "127.0.0.1", alone=0.0)
    stats = deliver_into(exchange, tmp_path / "n0")
    assert (tmp_path / "n0").read_bytes() == server.image
    assert exchange.mc_joined and stats.multicast_sent == 0


def test_the_tracker_hands_every_chunk_to_one_agent_one_more_at_each_announcement():
    tracker = Tracker(slots=3, peer_seconds=5.0, clock=lambda: now[0])
    now = [0.0]
    layout = [2] * 6

    def announce(name: str, have: int = 0) -> dict[str, object]:
        return tracker.announce(
            "image", lambda: layout, name, f"10.0.0.{name[1:]}", 7070, have, (), (7071, 1e6)
        )

    first = announce("n1")
    assert first["seed"] == [0] and announce("n2")["seed"] == [], "one sender: the first to announce"
    assert announce("n1")["seed"] == [0, 1] and announce("n1")["seed"] == [0, 1, 2], "one more each time"
    assert announce("n1")["seed"] == [0, 1, 2], "at most the tracker's slots"
    group = first["multicast"]
    assert group == {"group": multicast_group("image"), "port": 7071, "interface": "10.0.0.1", "rate": 1e6}
    assert announce("n2")["multicast"]["interface"] == "10.0.0.2", "each joins on the address it announced"
    now[0] = 6.0  # n1 is gone: the next to announce sends
    assert announce("n2")["seed"] == [0]
    assert multicast_group(("image", 1)) != multicast_group(("image", 2))
    assert int(multicast_group("image").split(".")[0]) == 239


def test_a_multicast_key_is_its_own_inverse_and_differs_per_image_and_place():
    key, other = swarm.MulticastKey(["a" * 64]), swarm.MulticastKey(["b" * 64])
    data = hashlib.sha256(b"x").digest() * 100
    sealed = key.apply(3, 0, data)
    assert sealed != data and key.apply(3, 0, sealed) == data
    assert key.apply(3, 8192, data) != sealed and key.apply(4, 0, data) != sealed, "one stream per place"
    assert other.apply(3, 0, data) != sealed and other.tag != key.tag


UNUSABLE = [
    None, {}, {"group": "10.0.0.1", "port": 1, "interface": "127.0.0.1"},
    {"group": "239.255.1.1", "port": 0, "interface": "127.0.0.1"},
    {"group": "239.255.1.1", "port": 7, "interface": "not an address"},
]  # fmt: skip


@pytest.mark.parametrize("spec", UNUSABLE)
def test_a_group_that_is_not_usable_leaves_the_peers_to_deliver(tmp_path, spec):
    server = Server()
    tracker = Tracker()

    def announce(have: str, port: int, dropped: list[tuple[str, int]]) -> dict[str, object]:
        answer = tracker.announce(
            "image", lambda: server.layout, "n0", "127.0.0.1", port, int(have or "0", 16)
        )
        return {**answer, "multicast": spec}

    exchange = swarm.Exchange(server.extents, server.fetch, announce, "127.0.0.1", alone=0.0)
    stats = deliver_into(exchange, tmp_path / "n0")
    assert (tmp_path / "n0").read_bytes() == server.image and stats.multicast_sent == 0
    assert exchange.mc_tx is None
