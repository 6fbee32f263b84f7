"""Processes the lab starts in the background, and how it finds and ends them again by PID.

A lab process is *ours* when its command line names the lab's work directory (every one the lab makes
does: the database path, a pidfile, ``--workdir``, a config file), or when its environment has
``RHAAS_LAB=<work directory>`` (a user's command run as a headnode service). PIDs get reused, so a
recorded PID is only signalled after that check; a zombie counts as gone. `ours_in` finds every
process of a work directory even when the records of it were lost (a crash, a deleted ``lab.json``).

This module knows nothing of what the processes are. Ending a child (`end`) is `rhaas.procs`'s, which
production code uses too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rhaas.procs import end as end  # the lab ends its children with the same helper

_POLL = 0.02
#: The environment variable that marks a process as the lab's when its command line cannot.
MARK_ENV = "RHAAS_LAB"


def cmdline(pid: int) -> list[str] | None:
    """The command line of a live (not zombie) process, or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z" or not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_ours(pid: int | None, workdir: Path) -> bool:
    """True if ``pid`` runs and its command line names ``workdir`` (or something inside it)."""
    if pid is None or pid <= 0 or pid == os.getpid():
        return False
    argv = cmdline(pid)
    if argv is None:
        return False
    root = str(workdir)
    if any(root in arg for arg in argv):
        return True
    # A command of the user's, run as a headnode service, carries the mark in its environment.
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK_ENV}={root}".encode() in environ


def ours_in(workdir: Path) -> list[int]:
    """Every live process (not this one) whose command line names ``workdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_ours(int(entry.name), workdir):
            found.append(int(entry.name))
    return sorted(found)


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` detached (own session, stdin from /dev/null, output appended to ``log``); its PID.

    The lab outlives the command that starts it, and a Ctrl-C in that command's terminal must not
    reach the lab's processes.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    _children.append(proc)
    return proc.pid


#: Children started by this process: polled so that they do not linger as zombies when they end.
_children: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Collect the exit status of children that ended (a zombie holds no resources but its PID)."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is gone). Not from the command line: while a process execs
    (``ip netns exec`` does), its command line reads empty for a moment."""
    reap()
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def stop(pid: int | None, workdir: Path, timeout: float = 10.0) -> bool:
    """End process ``pid`` if it is ours: SIGTERM, then SIGKILL. True if it was running."""
    if pid is None or not is_ours(pid, workdir):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return True
    raise RuntimeError(f"process {pid} survived SIGKILL")


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
