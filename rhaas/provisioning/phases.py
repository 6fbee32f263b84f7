"""How long each phase of a provisioning job took, from the job's own records.

A job's view (``GET /provision_job/<id>``, `rhaas.core.provisioning.job_view`) lists its ``phases`` as
events ``{"phase", "state": "start"|"done"|"error", "at", "detail", "progress"?}``. The server stamps its
own steps (``handed-out``, ``nmi``, ``checkin``); the agent stamps the rest with the node's clock. Many
phases have only a ``done`` event (the server's, ``verify``, ``write-disk``, ``ready``), and what a node
does between two reports (boot the return FPBL after an NMI, say) has no event of its own. So a phase
lasts from the end of the one before it (the job's creation, for the first) until its last ``done``:
the phases add up to the job's whole time, and a boot is counted in the phase that ends it.

A kexec'd kernel reads its clock again from the RTC (whole seconds): a phase that crosses a boot may be
off by up to a second, and one that seems to end before the previous one counts as 0 s.

Used by ``rhaas demo`` and ``bench/provision.py``; it reads a job's view and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

#: The name of the second check-in of a job: the full FPBL's, after the return FPBL restored memory.
FULL_FPBL_CHECKIN = "checkin (full FPBL)"


def phase_durations(job: Mapping[str, Any], end: float | None = None, last: str = "") -> dict[str, float]:
    """Seconds per phase of one job's view, in the order the server recorded them.

    With ``end`` (a Unix time) and ``last``, a final entry ``last`` counts from the last phase to
    ``end`` (for a deploy: from the kexec until the customer OS says it is up).
    """
    created = dt.datetime.fromisoformat(job["created_at"].rstrip("Z")).replace(tzinfo=dt.UTC)
    previous = created.timestamp()
    times: dict[str, float] = {}
    for event in job["phases"]:
        if event["state"] != "done":
            continue
        name = str(event["phase"])
        if name == "checkin" and name in times:
            name = FULL_FPBL_CHECKIN
        times[name] = times.get(name, 0.0) + max(0.0, event["at"] - previous)
        previous = max(previous, event["at"])
    if end is not None and last:
        times[last] = max(0.0, end - previous)
    return times
