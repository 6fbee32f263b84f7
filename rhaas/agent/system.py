"""The node the agent runs on: its console, files, facts, and kexec (standard library only).

`System` is the seam tests replace: every path is under a root directory they choose, and a fake can
record kexec instead of jumping. Nothing here talks to the server.
"""

from __future__ import annotations

import os
import subprocess

from rhaas.agent import disk as disks
from rhaas.agent import kexec
from rhaas.agent.disk import Disk


def log(message: str) -> None:
    """One line on the console: there is nowhere else to log to in an FPBL."""
    print(f"RHAAS-AGENT {message}", flush=True)


def run(cmd: list[str]) -> None:
    """Run a tool of the FPBL; OSError, with what it said, if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{cmd[0]} {cmd[1]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


def new_boot_id() -> str:
    """An id of this boot: the kernel's own, which, unlike ``os.urandom``, does not wait for the random
    pool to be ready (seconds after boot under TCG)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return os.urandom(8).hex()


class System:
    """The node: its files, facts, and kexec. Paths are parameters so tests can use a directory."""

    def __init__(self, root: str = "/", tmp: str = "/tmp/rhaas") -> None:
        self.root = root
        self.tmp = tmp
        self.fpbl_dir = os.path.join(root, kexec.FPBL_DIR.lstrip("/"))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def cmdline(self) -> str:
        with open(self.path("proc", "cmdline")) as f:
            return f.read().strip()

    def _meminfo(self, key: str) -> int | None:
        """A /proc/meminfo line's kB (None if this kernel does not say)."""
        with open(self.path("proc", "meminfo")) as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
        return None

    def memory_kb(self) -> int:
        return self._meminfo("MemTotal") or 0

    def iomem(self) -> str:
        with open(self.path("proc", "iomem")) as f:
            return f.read()

    def memory_available_kb(self) -> int | None:
        """MemAvailable: what this kernel can still give (None if it does not say)."""
        return self._meminfo("MemAvailable")

    def kernel(self) -> str:
        return os.uname().release

    def disks(self) -> list[disks.Disk]:
        return disks.list_disks(self.path("sys"), self.path("dev"))

    def sector_size(self, disk: Disk) -> int:
        """The disk's logical sector size (512 where the kernel does not say)."""
        try:
            with open(self.path("sys", "block", disk.name, "queue", "logical_block_size")) as f:
                return int(f.read().strip() or 512)
        except (OSError, ValueError):
            return 512

    def memmap(self) -> list[kexec.MemRange]:
        return kexec.read_firmware_memmap(self.path("sys"))

    def publish_memmap(self, ranges: list[kexec.MemRange]) -> None:
        """Show ``ranges`` as /sys/firmware/memmap (a tmpfs over it), where kexec-tools reads the map it
        gives the next kernel: after a return, the real one shows the crash kernel's small map."""
        target = self.path("sys", "firmware", "memmap")
        run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "rhaas-memmap", target])
        kexec.write_memmap_dir(target, ranges)

    def kexec_load(self, kernel: str, initrd: str, cmdline: str) -> None:
        run(["kexec", "-i", "-l", kernel, f"--initrd={initrd}", f"--append={cmdline}"])

    def kexec_exec(self) -> None:
        os.sync()
        run(["kexec", "-e"])  # returns only if the jump failed
        raise OSError("kexec -e returned")
