"""Files several processes share: the mock drivers' state and injected faults (tests run the API, the
networking worker and the lab's processes apart, and they must all see one mock switch or BMC).

One exclusive lock beside the file, and whole-file writes by atomic rename: a process killed while
writing (a worker's SIGKILL) leaves the previous state, never a truncated file the next reader takes for
garbage.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock beside ``path`` (``<name>.lock``), shared by every process using that file."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def replace_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON in one atomic rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def count_down(path: Path, data: dict[str, Any], key: str) -> bool:
    """Whether ``data[key]`` (a count of injected faults still to come) is above zero; if so, one is
    used up and ``path`` rewritten. Call it holding `exclusive` on ``path``."""
    if data.get(key, 0) <= 0:
        return False
    data[key] -= 1
    replace_json(path, data)
    return True
