"""The programs rhaas runs beside itself (dnsmasq, ip, Open vSwitch's tools): finding and ending them.

Production code (the boot service) and the lab share these. This module must stay small and know nothing
of what the programs are, nor of the lab (`rhaas.lab.procs` tracks the lab's own processes).
"""

from __future__ import annotations

import shutil
import subprocess


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
