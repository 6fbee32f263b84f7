"""Helpers for the lab's end-to-end tests: the ``rhaas`` CLI as a subprocess, skip marks, a lab fixture
that always ends with ``rhaas lab down``, and console polling."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rhaas.lab import procs
from rhaas.lab.polling import wait_for
from rhaas.lab.site import missing

RHAAS = [sys.executable, "-m", "rhaas.cli.main"]


MISSING = missing()
if MISSING:
    print(f"lab tests will be skipped: {MISSING}")

LAB_MARKS = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.ovs,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]


def rhaas(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    """Run the ``rhaas`` CLI; its stdout, or an assertion error with everything it printed."""
    done = subprocess.run(
        [*RHAAS, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"rhaas {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def parse_exports(output: str) -> dict[str, str]:
    """The variables of the ``export A=1 B=2`` line that ``rhaas lab up`` prints."""
    line = next(x for x in output.splitlines() if x.startswith("export "))
    return dict(item.split("=", 1) for item in line.split()[1:])


@pytest.fixture(name="lab_dir")
def lab_dir_fixture() -> Iterator[Path]:
    """A fresh lab directory (short: sockets live in it); ``rhaas lab down`` runs however the test ends,
    and then nothing of the lab may be left running."""
    workdir = Path(tempfile.mkdtemp(prefix="rl-"))
    try:
        yield workdir
    finally:
        try:
            subprocess.run([*RHAAS, "lab", "down", "--workdir", str(workdir)], timeout=120, check=False)
            leftover = procs.ours_in(workdir)
            for pid in leftover:  # down failed: end them here, by PID, and fail
                procs.stop(pid, workdir)
            assert not leftover, f"lab down left processes {leftover}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def lab_status(workdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(rhaas("lab", "status", "--json", "--workdir", str(workdir)))
    return data


def wait_console(path: Path, regex: str, timeout: float, offset: int = 0) -> re.Match[str]:
    """Poll a console log from byte ``offset`` until ``regex`` matches; TimeoutError with its tail."""
    pattern = re.compile(regex, re.MULTILINE)
    text = ""

    def found() -> re.Match[str] | None:
        nonlocal text
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("latin-1").replace("\r", "")
        except FileNotFoundError:
            text = ""
        return pattern.search(text)

    try:
        return wait_for(f"{regex!r} in {path}", found, timeout, every=0.2)
    except TimeoutError as exc:
        tail = "\n".join(text.splitlines()[-15:])
        raise TimeoutError(f"{exc}; last lines:\n{tail}") from None
