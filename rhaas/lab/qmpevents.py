"""QEMU's own account of a node's resets: a thread that listens to the node's QMP events.

A firmware boot happens whenever QEMU resets the machine, whoever asked for it: the BMC (QMP
``system_reset``), or the guest itself (``reboot``, a triple fault, ``panic=N``, a watchdog). Counting
only what a BMC was asked to do misses the guest's own resets, and a node that rebooted by itself in the
middle of a fast return would look as if no firmware had run. QEMU reports every reset as a ``RESET``
event, with ``guest: true`` when the guest caused it.

A QMP socket serves one client at a time, so the events have a socket of their own, apart from the one
commands use (`rhaas.lab.qemu.qmp_command` connects once per command). The watcher reconnects whenever
QEMU restarts (a power cycle starts a new process on the same socket path).

This module is lab equipment: nothing in the service imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: How long a connection attempt or a read may block before the thread looks at its stop flag again.
_TICK = 0.5


class ResetWatcher:
    """Calls ``on_reset(data)`` for every ``RESET`` event QEMU sends on the socket at ``path``.

    `connected` is set while a connection is up and past the QMP handshake, so that a caller who has
    just started QEMU can wait until no reset would be missed.
    """

    def __init__(self, path: Path, on_reset: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_reset = on_reset
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            name = f"qmp-events-{self.path.name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            # QEMU is off, restarting, or not yet listening: try again shortly.
            with contextlib.suppress(OSError, EOFError, ValueError):
                self._listen()
            self.connected.clear()
            self._stop.wait(0.25)

    def _listen(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_TICK)
            sock.connect(str(self.path))
            lines = _Lines(sock)
            lines.next()  # the greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            while "return" not in lines.next():
                pass
            self.connected.set()
            while not self._stop.is_set():
                try:
                    message = lines.next()
                except TimeoutError:
                    continue
                if message.get("event") == "RESET":
                    data = message.get("data") or {}
                    log.info("%s: RESET %s", self.path.name, data)
                    with contextlib.suppress(Exception):  # a counter's bug must not stop the counting
                        self.on_reset(data)


class _Lines:
    """JSON messages, one a line, from a socket with a timeout (a file object over a socket is unusable
    after its first timeout; this buffer keeps a partial line across one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP socket closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        return message if isinstance(message, dict) else {}
