"""The docs' shell blocks: parsed from README.md and docs/*.md, and run (the runnable ones) with bash.

The convention is in docs/developers.md (Conventions, Runnable docs). In short: a fenced ``sh``/``bash``
or ``console`` block runs when the line just before its fence is ``<!-- runnable -->``; a *hidden* one
sits inside an HTML comment that opens with ``<!-- runnable …`` and closes with ``-->`` on the line after
the fence. A command is a line, or more while bash finds it unfinished (a trailing backslash, an open
quote or loop); blank and comment lines are skipped. In a ``console`` block commands start with ``$ `` and
the other lines are output the command must print, in order (other lines may come between; ``...`` is
for readers). `DocShell` runs one file's commands one at a time, carrying exported variables and the
working directory on, as one terminal would; ports 5000-5009 stand for free ports of this machine, the
same one throughout a file; what commands leave running in the background is ended, by PID, at the end.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rhaas.lab.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_INFOS = ("sh", "bash", "console")
FENCE = re.compile(r"^```(?P<info>[\w-]*)\s*$")
MARKER = re.compile(r"^<!-- runnable\b.*?(?P<end>-->)?\s*$")
EXAMPLE_PORT = re.compile(r"\b500\d\b")


def _name(doc: Path) -> str:
    return str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else str(doc)


@dataclass
class Command:
    doc: Path
    line: int  # of the command's first line in the doc, from 1
    text: str  # as bash gets it (continuation lines kept)
    expected: list[str] = field(default_factory=list)  # console blocks: output lines shown after it
    unfinished: bool = False  # the block ended before bash found the command whole

    @property
    def where(self) -> str:
        return f"{_name(self.doc)}:{self.line}"

    @property
    def one_line(self) -> str:
        return self.text.replace("\\\n", " ")


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence
    info: str
    runnable: bool
    hidden: bool
    commands: list[Command]


@functools.cache
def _complete(text: str) -> bool:
    """Whether ``text`` is whole commands for bash (no open quote, loop or ``\\`` continuation)."""
    if text.endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def _commands(doc: Path, first: int, lines: list[str], console: bool) -> list[Command]:
    """The commands of a block whose body (``lines``) starts on line ``first`` of ``doc``."""
    commands: list[Command] = []
    pending: Command | None = None  # a command that goes on on the next line
    for number, raw in enumerate(lines, start=first):
        if pending is not None:
            pending.text += "\n" + raw
            if _complete(pending.text):
                pending = None
            continue
        text = raw.strip()
        if console and not text.startswith("$ "):
            if commands and text:
                commands[-1].expected.append(text)
            continue
        text = text.removeprefix("$ ") if console else text
        if not text or text.startswith("#"):
            continue
        commands.append(Command(doc, number, text))
        if not _complete(text):
            pending = commands[-1]
    if pending is not None:
        pending.unfinished = True
    return commands


@functools.cache
def parse(doc: Path) -> tuple[list[Block], list[str]]:
    """The shell blocks of ``doc`` and what is wrong with its runnable markers."""
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    name = _name(doc)
    marker: tuple[int, bool] | None = None  # (line index, hidden) of a marker that waits for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        found = MARKER.match(line)
        opening = FENCE.match(line)
        if marker is not None and opening is None and (found or not marker[1] or "-->" in line):
            problems.append(f"{name}:{marker[0] + 1}: a runnable marker without its block")
            marker = None
        if found:
            marker = (i, found["end"] is None)
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{name}:{i + 1}: a fence that is never closed")
            break
        info = opening["info"]
        hidden = marker is not None and marker[1]
        if marker is not None and info not in SHELL_INFOS:
            problems.append(f"{name}:{i + 1}: a runnable ```{info} block (runnable blocks are sh or console)")
        if hidden and (end + 1 >= len(lines) or lines[end + 1].strip() != "-->"):
            problems.append(f"{name}:{end + 2}: a hidden runnable block must end its comment: '-->'")
        if info in SHELL_INFOS:
            commands = _commands(doc, i + 2, lines[i + 1 : end], console=info == "console")
            blocks.append(Block(doc, i + 1, info, marker is not None, hidden, commands))
            if marker is not None and not commands:
                problems.append(f"{name}:{i + 1}: a runnable block without commands")
            problems += [f"{c.where}: bash finds this command unfinished" for c in commands if c.unfinished]
        marker = None
        i = end + 1 + hidden
    if marker is not None:
        problems.append(f"{name}:{marker[0] + 1}: a runnable marker without its block")
    return blocks, problems


def all_blocks() -> Iterator[Block]:
    for doc in DOCS:
        yield from parse(doc)[0]


def missing_output(expected: list[str], output: str) -> str | None:
    """The first expected line not found (in order) in ``output``; None if all are."""
    printed = iter(line.strip() for line in output.splitlines())
    for line in expected:
        if line in ("...", "…"):
            continue
        if not any(got == line for got in printed):
            return line
    return None


def _stat(pid: int) -> tuple[int, str] | None:
    """(process group, start time) of ``pid``, None if it is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(rest[2]), rest[19]


class DocShell:
    """Runs a file's commands with bash, one at a time, in ``workdir``; exported variables and the working
    directory carry from one command to the next. ``close()`` ends what the commands left running."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.state = workdir.parent / (workdir.name + ".state")
        self.state.mkdir()
        self.cwd = str(workdir)
        self.env = dict(env)
        self.ports: dict[str, str] = {}
        self.left_running: dict[int, str] = {}  # pid → start time, of processes commands left behind
        self.count = 0
        self.timings: list[tuple[float, Command]] = []  # seconds each command took

    def _port(self, match: re.Match[str]) -> str:
        return self.ports.setdefault(match.group(), str(free_port()))

    def run(self, command: Command, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``command``; its exit status and what it printed (stdout and stderr together)."""
        self.count += 1
        out = self.state / f"{self.count}.out"
        env_file, cwd_file = self.state / "env", self.state / "cwd"
        env_file.unlink(missing_ok=True)
        text = EXAMPLE_PORT.sub(self._port, command.text)
        script = f'{text}\n__rc=$?\nenv -0 > "{env_file}"; pwd > "{cwd_file}"\nexit $__rc\n'
        started = time.monotonic()
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = -1
        self.timings.append((time.monotonic() - started, command))
        self._remember_background(proc.pid)
        if env_file.exists():
            self.env = dict(
                item.split("=", 1) for item in env_file.read_bytes().decode().split("\0") if "=" in item
            )
            self.cwd = cwd_file.read_text().strip() or self.cwd
        output = out.read_text(errors="replace")
        if rc == -1:
            output += f"\n(killed after {timeout:g} s)"
        return rc, output

    def _remember_background(self, group: int) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] == group:
                self.left_running[int(entry.name)] = stat[1]

    def _alive(self) -> list[int]:
        return [pid for pid, start in self.left_running.items() if (s := _stat(pid)) and s[1] == start]

    def close(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self._alive():
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
