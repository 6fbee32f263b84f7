"""The node lifecycle under fast provisioning, as one state machine: states, events, one transition table.

A node under fast provisioning has a row in ``node_provisioning``; its ``state`` is one of `STATES`. The
only way to change it is `transition`, which looks the move up in `TRANSITIONS` and raises
`rhaas.errors.IllegalStateError` on a move the table does not have. The lifecycle::

    (not enrolled) ──enrol──► booting ──checkin──► ready ◄───────────── returned ────────────┐
                                 │                   │                                       │
                            boot-failed          provision                                   │
                                 │                   ▼                                       │
                                 │               deploying ───────kexec──────► deployed      │
                                 │                   │  │                          │         │
                                 │    deploy-failed, │  └────────detach────────┐   │ detach  │
                                 ▼        deadline   │                         ▼   ▼         │
                               error ◄───────────────┘                        returning ─────┘
                                 │ ▲                                            ▲  │
                                 │ └──────────deadline (return by reboot)───────┼──┘
                                 └─────────────────────detach───────────────────┘

    enrol again from booting, ready or error: back to booting, with a new agent secret.
    rebuild takes detach's moves out of deployed and error; once returned, its waiting deploy starts
    (ready ──provision──► deploying) with no call from the project.

What each event is (the code that fires it):

- ``enrol``: an administrator puts a free node under fast provisioning (`core.provisioning.enroll`).
- ``checkin``: the full FPBL's agent checks in with no job open (`core.provisioning.checkin`).
- ``boot-failed``: the BMC refused the network boot into the FPBL (the worker's ticker).
- ``provision``: a project deploys an image on its ready node (`core.provisioning.provision`).
- ``kexec``: the agent reports ``kexec`` done, its last words before the customer's kernel runs.
- ``deploy-failed``: the agent reports an error, restarts mid-deploy, or the image is gone.
- ``detach``: the node leaves its project and its return starts (`core.provisioning.start_return`).
- ``rebuild``: a project provisions its node that already runs an OS (or failed): the node's return
  starts and a deploy waits for it (`core.provisioning.provision`); the node stays in its project.
- ``returned``: the return's wipe was verified and the full FPBL is up (check-in or ``ready`` report).
- ``deadline``: the worker's ticker ends a job past its deadline with nothing left to try.

Moves beyond the drawing (`AFTER_A_RACE`) exist because the code that fires them acts on the *job* it
finds open and does not read the node's state, so rows written by concurrent transactions on PostgreSQL
can show it another state; those moves are what the code has always done there.

This module knows nothing of the database, HTTP or BMCs: it is data and one function over a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

from rhaas.errors import IllegalStateError

if TYPE_CHECKING:
    from rhaas.db.models import NodeProvisioning

BOOTING, READY, DEPLOYING, DEPLOYED, RETURNING, FAILED = (
    "booting",
    "ready",
    "deploying",
    "deployed",
    "returning",
    "error",
)
#: Every state a ``node_provisioning`` row can hold (the strings are stored and shown in the API).
STATES = (BOOTING, READY, DEPLOYING, DEPLOYED, RETURNING, FAILED)
#: The state of a node that has no ``node_provisioning`` row (never stored): only ``enrol`` leaves it.
NOT_ENROLLED = None


class Event(StrEnum):
    """What moves a node from one state to the next (see the module's docstring)."""

    ENROL = "enrol"
    CHECKIN = "checkin"
    BOOT_FAILED = "boot-failed"
    PROVISION = "provision"
    KEXEC = "kexec"
    DEPLOY_FAILED = "deploy-failed"
    DETACH = "detach"
    REBUILD = "rebuild"
    RETURNED = "returned"
    DEADLINE = "deadline"


#: The lifecycle as drawn: (from state, event) → to state.
LIFECYCLE: Mapping[tuple[str | None, Event], str] = {
    (NOT_ENROLLED, Event.ENROL): BOOTING,
    (BOOTING, Event.ENROL): BOOTING,
    (READY, Event.ENROL): BOOTING,
    (FAILED, Event.ENROL): BOOTING,
    (BOOTING, Event.CHECKIN): READY,
    (BOOTING, Event.BOOT_FAILED): FAILED,
    (READY, Event.PROVISION): DEPLOYING,
    (DEPLOYING, Event.KEXEC): DEPLOYED,
    (DEPLOYING, Event.DEPLOY_FAILED): FAILED,
    (DEPLOYING, Event.DEADLINE): FAILED,
    (DEPLOYING, Event.DETACH): RETURNING,
    (DEPLOYED, Event.DETACH): RETURNING,
    (FAILED, Event.DETACH): RETURNING,
    (DEPLOYED, Event.REBUILD): RETURNING,
    (FAILED, Event.REBUILD): RETURNING,
    (RETURNING, Event.RETURNED): READY,
    (RETURNING, Event.DEADLINE): FAILED,
}

#: Moves that only concurrent transactions (PostgreSQL; SQLite runs one writer at a time) bring about.
AFTER_A_RACE: Mapping[tuple[str | None, Event], str] = {
    # Two provisions of one node at once both pass the "ready" check: two deploy jobs are open, the
    # agent takes the newer, and the other one is left over. The agent may be handed it after the first
    # failed (or after a failed kexec jump), and it may reach its deadline after the first deployed.
    (FAILED, Event.KEXEC): DEPLOYED,
    (DEPLOYED, Event.KEXEC): DEPLOYED,
    (FAILED, Event.DEPLOY_FAILED): FAILED,
    (DEPLOYED, Event.DEPLOY_FAILED): FAILED,
    # The ticker reads a job past its deadline, then the node's row: a report, a check-in, an enrolment
    # or a detach committed in between has moved the node on, and the ticker fails it all the same.
    (BOOTING, Event.DEADLINE): FAILED,
    (READY, Event.DEADLINE): FAILED,
    (DEPLOYED, Event.DEADLINE): FAILED,
    (FAILED, Event.DEADLINE): FAILED,
    # ... and when that was a detach, the node's return goes on and ends in ready.
    (FAILED, Event.RETURNED): READY,
}

#: The whole transition table: every move `transition` accepts.
TRANSITIONS: Mapping[tuple[str | None, Event], str] = {**LIFECYCLE, **AFTER_A_RACE}


def next_state(state: str | None, event: Event) -> str | None:
    """The state ``event`` moves a node in ``state`` to, or None if the table has no such move."""
    return TRANSITIONS.get((state, event))


def allows(state: str | None, event: Event) -> bool:
    """Whether ``event`` is a legal move from ``state``."""
    return (state, event) in TRANSITIONS


def transition(row: NodeProvisioning, event: Event) -> str:
    """Move ``row`` on ``event``; returns its new state. IllegalStateError on a move not in the table.

    A row just created (not flushed yet) has no state: it is `NOT_ENROLLED`.
    """
    to = next_state(row.state, event)
    if to is None:
        node = row.node.label if row.node is not None else f"#{row.node_id}"
        was = row.state or "not enrolled"
        raise IllegalStateError(
            f"Node {node} is {was}: the node lifecycle has no move on {event} from there."
        )
    row.state = to
    return to
