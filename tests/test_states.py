"""The node lifecycle's transition table, as data: every (state, event) pair, its move or its refusal.

The matrix below is the specification, written out by hand: one row per from-state ("(none)": not
enrolled), one column per event; a cell is the state the event moves the node to, ``-`` for a refused
move, and a trailing ``*`` for a move that only concurrent transactions bring about
(`rhaas.states.AFTER_A_RACE`).
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from pathlib import Path

import pytest

from rhaas import states
from rhaas.db.models import Node, NodeProvisioning
from rhaas.errors import IllegalStateError
from rhaas.states import Event

MATRIX = """
state     enrol   checkin boot-failed provision kexec     deploy-failed detach    rebuild   returned deadline
(none)    booting -       -           -         -         -             -         -         -        -
booting   booting ready   error       -         -         -             -         -         -        error*
ready     booting -       -           deploying -         -             -         -         -        error*
deploying -       -       -           -         deployed  error         returning -         -        error
deployed  -       -       -           -         deployed* error*        returning returning -        error*
returning -       -       -           -         -         -             -         -         ready    error
error     booting -       -           -         deployed* error*        returning returning ready*   error*
"""


def _cases() -> list[tuple[str | None, Event, str | None, bool]]:
    header, *rows = MATRIX.split("\n")[1:-1]
    events = [Event(name) for name in header.split()[1:]]
    cases = []
    for line in rows:
        state, *cells = line.split()
        assert len(cells) == len(events), line
        for event, cell in zip(events, cells, strict=True):
            to = None if cell == "-" else cell.rstrip("*")
            cases.append((None if state == "(none)" else state, event, to, cell.endswith("*")))
    return cases


CASES = _cases()


def _row(state: str | None) -> NodeProvisioning:
    return NodeProvisioning(node_id=7, state=state, secret_sha256="", node=Node(id=7, label="n7"))


def test_the_matrix_covers_every_state_and_event_once() -> None:
    pairs = [(state, event) for state, event, _, _ in CASES]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(s, e) for s in (states.NOT_ENROLLED, *states.STATES) for e in Event}
    assert set(states.TRANSITIONS) <= set(pairs)


@pytest.mark.parametrize(("state", "event", "to", "race"), CASES, ids=lambda v: str(v))
def test_a_move_is_made_or_refused_as_the_matrix_says(
    state: str | None, event: Event, to: str | None, race: bool
) -> None:
    row = _row(state)
    assert states.next_state(state, event) == to
    assert states.allows(state, event) is (to is not None)
    if to is None:
        with pytest.raises(IllegalStateError) as refused:
            states.transition(row, event)
        was = state or "not enrolled"
        said = f"Node n7 is {was}: the node lifecycle has no move on {event.value} from there."
        assert str(refused.value) == said
        assert row.state == state
        return
    assert states.transition(row, event) == to
    assert row.state == to
    table = states.AFTER_A_RACE if race else states.LIFECYCLE
    assert table[(state, event)] == to


def _reachable(start: str | None) -> set[str | None]:
    seen, todo = {start}, deque([start])
    while todo:
        state = todo.popleft()
        for (src, _), to in states.LIFECYCLE.items():
            if src == state and to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


def test_every_state_is_reachable_from_enrolment_in_the_drawn_lifecycle() -> None:
    assert _reachable(states.NOT_ENROLLED) == {states.NOT_ENROLLED, *states.STATES}


@pytest.mark.parametrize("state", states.STATES)
def test_every_state_has_a_way_out_and_back_to_ready(state: str) -> None:
    """No state is terminal: a node always has a move to another state, and a way back to the pool."""
    assert any(src == state and to != state for (src, _), to in states.LIFECYCLE.items())
    assert states.READY in _reachable(state)


def test_race_moves_do_not_shadow_the_drawn_lifecycle() -> None:
    assert not set(states.LIFECYCLE) & set(states.AFTER_A_RACE)
    assert states.TRANSITIONS == {**states.LIFECYCLE, **states.AFTER_A_RACE}


def test_the_guards_of_the_callers_are_the_table() -> None:
    """`start_return` leaves idle nodes alone and `provision` wants a ready node: both ask the table, so
    the states those events leave from are exactly what the code has always checked."""
    assert {s for s in states.STATES if states.allows(s, Event.DETACH)} == {
        states.DEPLOYING,
        states.DEPLOYED,
        states.FAILED,
    }
    assert {s for s in states.STATES if states.allows(s, Event.PROVISION)} == {states.READY}
    assert {s for s in states.STATES if states.allows(s, Event.CHECKIN)} == {states.BOOTING}
    assert {s for s in states.STATES if states.allows(s, Event.BOOT_FAILED)} == {states.BOOTING}
    assert {s for s in states.STATES if states.allows(s, Event.ENROL)} == {
        states.BOOTING,
        states.READY,
        states.FAILED,
    }


def _state_writes(path: Path) -> list[int]:
    """Lines of ``path`` that assign a ``.state`` attribute or pass ``state=`` to a call."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and any(k.arg == "state" for k in node.keywords):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("NodeProvisioning", "values"):
                lines.append(node.lineno)
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute) and target.attr == "state":
                lines.append(node.lineno)
    return lines


def test_no_code_but_the_state_machine_assigns_a_node_state() -> None:
    package = Path(states.__file__).parent
    writes = {
        str(path.relative_to(package.parent)): lines
        for path in sorted(package.rglob("*.py"))
        if "migrations" not in path.parts and (lines := _state_writes(path))
    }
    assert writes == {"rhaas/states.py": writes.get("rhaas/states.py", [])}, writes
    assert writes["rhaas/states.py"], "the state machine itself assigns the state"


def test_the_docs_show_the_machine_as_drawn_in_the_code() -> None:
    doc = states.__doc__ or ""
    drawing = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    page = (Path(__file__).parent.parent / "docs" / "fast-provisioning.md").read_text()
    assert textwrap.dedent(drawing) in page
