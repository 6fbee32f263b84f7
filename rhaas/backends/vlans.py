"""The ``vlan_pool`` network allocator: VLAN numbers handed out from a configured pool.

Allocation is a conditional UPDATE (``… WHERE available``), so two servers sharing one database can never
hand out the same VLAN. The hardware backend (`rhaas.backends.hardware`) uses it; core reaches it only
through the backend's ``allocate_network``/``release_network``. It touches the ``vlan`` table only.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rhaas.db.models import Vlan
from rhaas.errors import AllocationError, BadArgumentError, BlockedError


def populate(db: Session, numbers: list[int]) -> int:
    """Add the VLANs of the pool that are not in the table yet; returns how many were added."""
    existing = set(db.scalars(select(Vlan.vlan_no)))
    new = [Vlan(vlan_no=n, available=True) for n in numbers if n not in existing]
    db.add_all(new)
    return len(new)


def allocate(db: Session) -> int:
    for _attempt in range(20):
        vlan_no = db.scalar(select(Vlan.vlan_no).where(Vlan.available).order_by(Vlan.vlan_no).limit(1))
        if vlan_no is None:
            raise AllocationError("No more networks: the VLAN pool is exhausted.")
        taken = db.execute(
            update(Vlan).where(Vlan.vlan_no == vlan_no, Vlan.available).values(available=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return vlan_no
    raise AllocationError("Could not allocate a VLAN under contention; try again.")


def claim_explicit(db: Session, net_id: str) -> int:
    """An admin's explicit VLAN: must be 1-4094; if it is in the pool it must be free, and is claimed."""
    # isdigit() alone admits '²' (int() then raises) and other scripts' digits ('١٠٠' reads as 100).
    if not (net_id.isascii() and net_id.isdigit()) or not 1 <= int(net_id) <= 4094:
        raise BadArgumentError(f"net_id {net_id[:40]!r} is not a legal VLAN id (1-4094).")
    vlan_no = int(net_id)
    in_pool = db.scalar(select(Vlan).where(Vlan.vlan_no == vlan_no))
    if in_pool is not None:
        taken = db.execute(
            update(Vlan).where(Vlan.vlan_no == vlan_no, Vlan.available).values(available=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise BlockedError(f"VLAN {vlan_no} is already claimed.")
    return vlan_no


def release(db: Session, vlan_no: int) -> None:
    db.execute(update(Vlan).where(Vlan.vlan_no == vlan_no).values(available=True))


def release_explicit(db: Session, net_id: str) -> None:
    """An explicit VLAN that happens to be in the pool goes back to it."""
    if net_id.isdigit():
        release(db, int(net_id))
