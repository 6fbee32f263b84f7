"""Boot images from Debian packages: the product's own image building, shared by the FPBL builder
(`rhaas.provisioning.fpbl`) and the lab's test OS (`rhaas.lab.images`).

- `debs`: Debian packages at exact versions (``apt-cache show``, ``apt-get download``, ``dpkg-deb -x``);
- `kernel`: the Debian cloud kernel, its modules and their load order (from the kernel's own data);
- `elf`: the shared libraries a program needs, found in the packages its package depends on;
- `initramfs`: initramfs members, written with the agent's cpio writer (`rhaas.agent.cpio`), and read back;
- `cache`: the cache directory, its locks and manifests, keyed by package versions.

Everything here builds files; nothing starts a machine, serves a file or knows of the lab or the API.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path


class ImageBuildError(RuntimeError):
    """A build step failed: apt could not resolve or download a package, or a tool failed."""


def run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    """Run a build tool; its standard output. Raises `ImageBuildError` if it is missing or fails."""
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    if done.returncode != 0:
        raise ImageBuildError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout
