"""The programs rhaas runs beside itself (dnsmasq, ip, Open vSwitch's tools): finding and ending them;
and ending this program so that it ends what it started.

Production code (the boot service) and the lab share these. This module must stay small and know nothing
of what the programs are, nor of the lab (`rhaas.lab.procs` tracks the lab's own processes).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def find_binary(name: str) -> str | None:
    """The path of program ``name``, also looking in the sbin directories when PATH lacks them (a
    user's PATH often does, and dnsmasq, ip and the Open vSwitch daemons live there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def end(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """End a child started here: SIGTERM, SIGKILL after ``timeout``; its exit status, reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def cleanup_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within: SIGTERM or SIGHUP (``kill``, a closed terminal) raise SystemExit(128 + signal) in the main
    thread, as Ctrl-C raises KeyboardInterrupt, so that ``finally`` blocks and context managers stop what
    this program started. By default those signals end Python at once and leave it all running. Once one
    has arrived, further ones are ignored until the block is left: the cleanup is not cut short."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for each in signums:
            signal.signal(each, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = {each: signal.signal(each, on_signal) for each in signums}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
