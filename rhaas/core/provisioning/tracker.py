"""The tracker of the agents' peer exchange (rhaas.agent.swarm): which agents deploy the same image, what
each holds, and which chunks an agent may take from the server.

The agents exchange *pieces* (slices of the image's chunks, see the agent's module); the server serves
whole chunks. Each agent deploying a whole-disk image announces itself every second or so: its address on
the provisioning network, the port it serves pieces on, the bit map of the pieces it has verified and
written. The answer lists up to `MAX_PEERS` other agents of the same swarm (the same image), picked at
random, those holding something this one lacks first, with what they hold (the agents ask each other by
what they want, so this is only a hint of whom to ask); and ``seed``: chunks this agent may fetch from the
server, because no agent holds them yet. The server hands each chunk out about once, at most
`SERVER_SLOTS` at a time across the swarm (one chunk that arrives soon spreads faster than several that
arrive slowly); a hand-out whose agent does not report the chunk within `GRANT_SECONDS` is handed out
again. So the server sends about one image per fleet deploy; agents that cannot reach their peers fall
back to it on their own (see the agent's module).

With ``multicast`` (a UDP port), the answer also names a multicast group of the swarm (`multicast_group`,
in the organisation-local scope 239.255.0.0/16), the address the agent joins it on (the one it
announced) and the rate to send at; and every chunk is handed out to one agent of the swarm, which passes
it on to the group, and every other agent takes it from there (see the agent's module).

State is in memory, per API server process: agents of one swarm that talk to different API servers form
one swarm per server. Agents not heard from for `PEER_SECONDS` are forgotten.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Chunks being sent by the server at once, per swarm: a few, so that its link stays busy while a hand-out
#: is being told (the agents pass a chunk on piece by piece as it arrives; bench/fleet.py measured 2 to 4).
SERVER_SLOTS = 4
#: A chunk handed out from the server and not reported held within this long is handed out again.
GRANT_SECONDS = 30.0
#: An agent not heard from for this long is no longer listed.
PEER_SECONDS = 15.0
#: The most peers one answer lists (each with its bit map): enough to keep an agent's fetches busy, few
#: enough that answers stay small and cheap to read in a fleet of hundreds.
MAX_PEERS = 16


@dataclass
class _Peer:
    address: str
    port: int
    have: int
    seen: float
    complete: bool


@dataclass
class _Swarm:
    #: The bit map of each chunk's pieces.
    chunks: list[int]
    full: int
    peers: dict[str, _Peer] = field(default_factory=dict)
    #: (address, port) of agents another agent dropped for a bad piece (one that did not match its digest,
    #: or was not asked for): not listed, and what they hold is handed out from the server all the same.
    suspects: set[tuple[str, int]] = field(default_factory=set)
    #: chunk index -> (agent, when) it was handed out from the server.
    grants: dict[int, tuple[str, float]] = field(default_factory=dict)
    #: With multicast: the one agent that takes every chunk from the server and sends it to the group.
    caster: str | None = None


def multicast_group(swarm: Hashable) -> str:
    """The multicast group of ``swarm``: the same in every API server process (a digest of its key, not
    Python's hash), different for different images but for a collision in 65536 (the agents then skip the
    other's datagrams by their tag)."""
    digest = hashlib.sha256(repr(swarm).encode()).digest()
    return f"239.255.{digest[0]}.{digest[1]}"


def layout_masks(pieces: Sequence[int]) -> list[int]:
    """The bit map of each chunk's pieces, from how many pieces each chunk has."""
    masks, at = [], 0
    for count in pieces:
        masks.append(((1 << count) - 1) << at)
        at += count
    return masks


class Tracker:
    """Every swarm of one server process (thread-safe)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, slots: int = SERVER_SLOTS,
        grant_seconds: float = GRANT_SECONDS, peer_seconds: float = PEER_SECONDS,
        max_peers: int = MAX_PEERS, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.slots = slots
        self.grant_seconds = grant_seconds
        self.peer_seconds = peer_seconds
        self.max_peers = max_peers
        self.rng = rng if rng is not None else random.Random()
        self._swarms: dict[Hashable, _Swarm] = {}
        self._lock = threading.Lock()

    def announce(
        self, swarm: Hashable, layout: Callable[[], Sequence[int]], agent: str, address: str, port: int,
        have: int, dropped: Sequence[tuple[str, int]] = (), multicast: tuple[int, float] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Record that ``agent`` (serving on ``address:port``) holds the pieces ``have`` (a bit map) of
        ``swarm`` and has dropped the peers ``dropped``; ``layout()``: how many pieces each of the image's
        chunks has (asked once per swarm). Answers the other agents, what they hold (hex bit maps), the
        chunks ``agent`` may fetch from the server (``seed``), and ``missing``: whether any agent of the
        swarm still lacks a piece. With ``multicast`` (a UDP port, and the rate in bytes per second the
        group is sent at), also the swarm's group on that port, ``address`` to join it on, and the rate;
        then one agent (the first to announce, and the next one once it is gone) is handed every chunk
        from the server, and sends it on to the group."""
        now = self.clock()
        with self._lock:
            self._forget(now)
            s = self._swarms.get(swarm)
            if s is None:
                masks = layout_masks(layout())
                s = self._swarms[swarm] = _Swarm(masks, sum(masks))
            held = have & s.full
            s.peers[agent] = _Peer(address, port, held, now, held == s.full)
            s.suspects |= {(a, p) for a, p in dropped if (a, p) != (address, port)}
            trusted = {k: p for k, p in s.peers.items() if (p.address, p.port) not in s.suspects}
            anywhere = 0
            for p in trusted.values():
                anywhere |= p.have
            for n, (who, when) in list(s.grants.items()):
                if now - when > self.grant_seconds or who not in s.peers or not s.chunks[n] & ~anywhere:
                    del s.grants[n]
            seed = [n for n, (who, _) in s.grants.items() if who == agent]
            share = 1  # one at a time: an agent alone takes everything from the server on its own
            if multicast is not None:
                # One sender: every other agent's link then carries the group's datagrams only, and its
                # own only the server's stream (two senders would each carry the other's datagrams too).
                if s.caster not in trusted:
                    s.caster = agent
                # One more chunk per announcement: chunks started together, sent at one pace, would all end
                # together, and the sender would be idle until its next announcement.
                share = min(self.slots, len(seed) + 1) if agent == s.caster else 0
            while len(seed) < share and len(s.grants) < self.slots:
                free = next((n for n, m in enumerate(s.chunks) if m & ~anywhere and n not in s.grants), None)
                if free is None:
                    break
                s.grants[free] = (agent, now)
                seed.append(free)
            others = [p for name, p in trusted.items() if name != agent]
            # Those holding something this one lacks first; the rest only to fill (an agent with no peer
            # listed at all is alone, and takes everything from the server).
            useful = [p for p in others if p.have & ~held]
            rest = [p for p in others if not p.have & ~held]
            listed = self.rng.sample(useful, min(len(useful), self.max_peers))
            listed += self.rng.sample(rest, min(len(rest), self.max_peers - len(listed)))
            peers = [{"address": p.address, "port": p.port, "have": format(p.have, "x")} for p in listed]
            missing = any(not p.complete for p in s.peers.values())
        answer: dict[str, Any] = {"peers": peers, "seed": sorted(seed), "missing": missing}
        if multicast is not None:
            port, rate = multicast
            answer["multicast"] = {"group": multicast_group(swarm), "port": port, "interface": address,
                                   "rate": rate}  # fmt: skip
        return answer

    def leave(self, swarm: Hashable, agent: str) -> None:
        """``agent`` is done with ``swarm`` (its deploy ended)."""
        with self._lock:
            s = self._swarms.get(swarm)
            if s is not None:
                s.peers.pop(agent, None)

    def _forget(self, now: float) -> None:
        for key, s in list(self._swarms.items()):
            for name, p in list(s.peers.items()):
                if now - p.seen > self.peer_seconds:
                    del s.peers[name]
            if not s.peers:
                del self._swarms[key]
