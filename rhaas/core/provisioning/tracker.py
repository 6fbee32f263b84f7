"""The tracker of the agents' peer exchange (rhaas.agent.swarm): which agents deploy the same image, what
each holds, and which chunks an agent may take from the server.

Each agent deploying a whole-disk image announces itself every second or so (its address on the
provisioning network, the port it serves chunks on, the indices of the extents it has verified and
written). The answer lists the other agents of the same swarm (the same image), with what they hold, and
``seed``: chunks this agent may fetch from the server, because no agent holds them yet. The server hands
each chunk out about once, at most `SERVER_SLOTS` at a time across the swarm (one chunk that arrives
whole soon spreads faster than several that arrive slowly); a hand-out whose agent does not report the
chunk within `GRANT_SECONDS` is handed out again. So the server sends about one image per fleet deploy;
agents that cannot reach their peers fall back to it on their own (see the agent's module).

State is in memory, per API server process: agents of one swarm that talk to different API servers form
one swarm per server. Agents not heard from for `PEER_SECONDS` are forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Chunks being sent by the server at once, per swarm (few: a chunk that arrives whole soon is passed on).
SERVER_SLOTS = 2
#: A chunk handed out from the server and not reported held within this long is handed out again.
GRANT_SECONDS = 30.0
#: An agent not heard from for this long is no longer listed.
PEER_SECONDS = 15.0


@dataclass
class _Peer:
    address: str
    port: int
    have: frozenset[int]
    seen: float
    complete: bool


@dataclass
class _Swarm:
    chunks: int
    peers: dict[str, _Peer] = field(default_factory=dict)
    #: (address, port) of agents another agent dropped (a bad chunk, a stall): not listed, and what they
    #: hold is handed out from the server all the same.
    suspects: set[tuple[str, int]] = field(default_factory=set)
    #: chunk index -> (agent, when) it was handed out from the server.
    grants: dict[int, tuple[str, float]] = field(default_factory=dict)


class Tracker:
    """Every swarm of one server process (thread-safe)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, slots: int = SERVER_SLOTS,
        grant_seconds: float = GRANT_SECONDS, peer_seconds: float = PEER_SECONDS,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.slots = slots
        self.grant_seconds = grant_seconds
        self.peer_seconds = peer_seconds
        self._swarms: dict[Hashable, _Swarm] = {}
        self._lock = threading.Lock()

    def announce(
        self, swarm: Hashable, chunks: int, agent: str, address: str, port: int, have: list[int],
        dropped: Sequence[tuple[str, int]] = (),
    ) -> dict[str, Any]:  # fmt: skip
        """Record that ``agent`` (serving on ``address:port``) holds the chunks ``have`` of ``swarm`` (an
        image of ``chunks`` chunks) and has dropped the peers ``dropped``; the other agents, what they
        hold, and the chunks ``agent`` may fetch from the server (``seed``); ``missing``: whether any agent
        of the swarm still lacks a chunk."""
        now = self.clock()
        held = frozenset(n for n in have if 0 <= n < chunks)
        with self._lock:
            self._forget(now)
            s = self._swarms.get(swarm)
            if s is None or s.chunks != chunks:
                s = self._swarms[swarm] = _Swarm(chunks)
            s.peers[agent] = _Peer(address, port, held, now, len(held) == chunks)
            s.suspects |= {(a, p) for a, p in dropped if (a, p) != (address, port)}
            for n in held:
                if n in s.grants:
                    del s.grants[n]
            trusted = {k: p for k, p in s.peers.items() if (p.address, p.port) not in s.suspects}
            anywhere: set[int] = set()
            for p in trusted.values():
                anywhere |= p.have
            for n, (who, when) in list(s.grants.items()):
                if now - when > self.grant_seconds or who not in s.peers or n in anywhere:
                    del s.grants[n]
            seed = [n for n, (who, _) in s.grants.items() if who == agent]
            if not seed and len(s.grants) < self.slots:
                free = next((n for n in range(chunks) if n not in anywhere and n not in s.grants), None)
                if free is not None:
                    s.grants[free] = (agent, now)
                    seed.append(free)
            peers = [
                {"address": p.address, "port": p.port, "have": sorted(p.have)}
                for name, p in trusted.items()
                if name != agent
            ]
            missing = any(not p.complete for p in s.peers.values())
        return {"peers": peers, "seed": sorted(seed), "missing": missing}

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
