"""The agent protocol, server side: what the FPBL agent's calls do to its node and its job.

The agent checks in (`checkin`), asks what to do next (`work`: deploy, wipe or wait), reports each
phase (`report`) and downloads the blobs of its deploy's image (`deploy_blobs` says which). A network
boot's iPXE script (`boot_script`) hands the FPBL a fresh secret; a deploy's hand-out hands the agent a
fresh secret and the deploy's return token, and ``kexec`` done revokes the secret (see
`rhaas.core.provisioning.enrolment`). A fast return counts as fast only with evidence: the return token
and ``elfcorehdr=`` (the crash kernel) in the check-in; anything else is recorded as an unexpected reset.
Every node state these calls change goes through `rhaas.states.transition`. The routes authenticate the
agent (`agent_row`, `checkin_row`) and commit; nothing here knows HTTP or calls a BMC.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rhaas import states
from rhaas.config import ProvisioningSettings
from rhaas.core import chunks
from rhaas.core.provisioning.enrolment import (
    agent_words,
    bump_node_generation,
    hand_over,
    issue_return_token,
    refuse,
    revoke_secret,
    rotate_secret,
    secret_hash,
)
from rhaas.core.provisioning.jobs import (
    DEPLOY,
    FAST,
    KEXEC,
    READY_PHASE,
    RETURN,
    RUNNING,
    UNEXPECTED_RESET,
    deadline_of,
    finish,
    open_job,
    stamp,
    start_queued_deploy,
    wiped,
)
from rhaas.core.provisioning.tracker import Tracker
from rhaas.db.models import DONE, ERROR, PENDING, Blob, Image, Nic, NodeProvisioning, ProvisionJob, utcnow
from rhaas.errors import BadArgumentError, IllegalStateError, NotFoundError

Event = states.Event
#: The detail of the check-in stamp that proves a fast return (see `_return_checkin`).
_EVIDENCE = "return FPBL checked in: the crash kernel armed for this deploy"
#: While a return FPBL reports a wipe going on, the return's deadline stays at least this far ahead: a
#: large disk the device cannot zero by itself takes hours to write, and that is work, not a hang. An agent
#: that falls silent still meets the deadline, and the reboot path.
WIPE_GRACE = dt.timedelta(seconds=120)
_WIPE_PHASES = ("wipe", "verify-wipe", "scrub-memory")
#: Wipe policies after which every block of the disks reads zeroes.
WHOLE_DISK_WIPES = ("full", "discard")
MAC_PATTERN = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
#: The script a network boot gets when the FPBL should not run: iPXE exits, the firmware boots the disk.
EXIT_SCRIPT = "#!ipxe\necho rhaas: not booting the FPBL: {why}\nexit\n"


def boot_script(
    db: Session, mac: str, base_url: str, agent_url: str, fpbl_cmdline: str, pin: str | None = None
) -> str:
    """The iPXE script for the network boot of the node with NIC ``mac``: the FPBL with a fresh secret.

    Each network boot gets its own secret (the previous one stops working), so the script is worth
    something only to the FPBL it boots. A deployed node (the customer rebooting their OS) or a node not
    under fast provisioning gets a script that exits, and its firmware boots the next device. The
    address comes from the DHCP lease iPXE holds (``${ip}``, ``${netmask}``, ``${gateway}``).
    """
    if not MAC_PATTERN.fullmatch(mac):
        raise BadArgumentError(f"{mac[:40]!r} is not a MAC address (aa:bb:cc:dd:ee:ff).")
    # NICs are registered as HIL takes them (aa:bb:…, AA-BB-…, aabb…); iPXE says aa:bb:cc:dd:ee:ff.
    digits = func.lower(func.replace(func.replace(Nic.macaddr, ":", ""), "-", ""))
    nic = db.scalar(select(Nic).where(digits == mac.replace(":", "").lower()))
    if nic is None:
        raise NotFoundError(f"No node has a NIC with MAC address {mac}.")
    row = db.get(NodeProvisioning, nic.node_id)
    if row is None:
        return EXIT_SCRIPT.format(why=f"node {nic.node.label} is not enrolled")
    if row.state == states.DEPLOYED:
        return EXIT_SCRIPT.format(why=f"node {nic.node.label} runs its customer's OS")
    secret, words = agent_words(agent_url, nic.node.label, pin)
    # A network boot: no crash kernel armed for a deploy survives it, nor does its return token.
    row.secret_sha256, row.return_sha256, row.boot_id = secret_hash(secret), None, None
    net = "rhaas.ip=${ip} rhaas.netmask=${netmask} rhaas.gw=${gateway}"
    # initrd=<name>: under UEFI, the kernel's EFI stub loads the initrd iPXE fetched by that name (iPXE
    # builds without the initrd-media protocol give it no other way); BIOS boots ignore it.
    return (
        f"#!ipxe\nkernel {base_url}/boot/v1/fpbl/vmlinuz initrd=initrd {fpbl_cmdline} {words} {net}\n"
        f"initrd {base_url}/boot/v1/fpbl/initrd\nboot\n"
    )


def checkin(
    db: Session, row: NodeProvisioning, facts: dict[str, Any], by_token: bool = False,
    settings: ProvisioningSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The agent says it runs: ``mode`` ready (the full FPBL) or return (the crash kernel after an NMI).

    ``by_token``: it presented its deploy's return token, which is good only while that node's return
    runs; it dies here, and the answer carries the agent's fresh secret (``{"secret"}``).
    """
    job = open_job(db, row.node, for_update=True)
    answer: dict[str, Any] = {}
    if by_token:
        if row.state != states.RETURNING or job is None or job.kind != RETURN:
            raise refuse()  # kept for the return: a customer's OS reading it early gets nothing
        row.return_sha256 = None
        answer["secret"] = rotate_secret(row)
    boot_id = str(facts.get("boot_id") or "")[:64] or None
    same_boot = boot_id is not None and boot_id == row.boot_id  # the agent restarted in the same kernel
    row.checked_in_at = utcnow()
    row.boot_id = boot_id
    row.facts = {k: facts[k] for k in ("mode", "kernel", "memory_kb", "disks", "elfcorehdr") if k in facts}
    mode = facts.get("mode")
    if job is not None and job.kind == RETURN:
        if mode == "return" or job.status == PENDING:
            job.status = RUNNING
        evidence = by_token and mode == "return" and facts.get("elfcorehdr") is True
        _return_checkin(job, str(mode), evidence, same_boot)
        if mode == "ready" and wiped(job):
            _returned(db, row, job, settings)
        return answer
    if job is not None and job.kind == DEPLOY and job.status == RUNNING and mode == "ready":
        if _restoring_memory(job):
            # The return FPBL found the image too big for its memory and booted the full FPBL, which
            # is handed the same deploy at its next poll.
            stamp(job, "checkin", "done", "the full FPBL checked in, with the node's memory")
            return answer
        # The FPBL booted again, or its agent was restarted, in the middle of a deploy: no kexec happened.
        reported = [p["phase"] for p in job.phases if p["phase"] != "handed-out"]
        where = f" during {reported[-1]}" if reported else ""
        finish(
            job,
            ERROR,
            f"The FPBL checked in again during the deploy (its agent restarted or the node rebooted{where}):"
            " the customer OS did not start.",
        )
        states.transition(row, Event.DEPLOY_FAILED)
        return answer
    if mode == "ready" and states.allows(row.state, Event.CHECKIN):
        states.transition(row, Event.CHECKIN)
        bump_node_generation(db)
    return answer


def _return_checkin(job: ProvisionJob, mode: str, evidence: bool, same_boot: bool) -> None:
    """Stamp a check-in on a return. A fast return stays fast only if the check-in proves it came from
    the crash kernel armed for the node's deploy (``evidence``: its return token, and ``elfcorehdr=``
    on its command line), or from the agent restarted in the kernel that proved it (``same_boot``: the
    boot id it checked in with last); any other FPBL booted in the middle of it (the guest rebooted
    itself, a reset nobody asked the BMC for) is recorded as what it was, and the return goes on."""
    proven = any(p["phase"] == "checkin" and p["detail"] == _EVIDENCE for p in job.phases)
    if job.path != FAST or wiped(job):
        stamp(job, "checkin", "done", f"{mode} FPBL checked in")
    elif evidence:
        stamp(job, "checkin", "done", _EVIDENCE)
    elif proven and same_boot:
        stamp(job, "checkin", "done", f"{mode} FPBL checked in again (its agent restarted, same boot)")
    else:
        job.path = UNEXPECTED_RESET
        why = "the full FPBL booted (a reset or reboot nobody asked the BMC for)" if mode == "ready" else (
            "a return FPBL without the deploy's return token or elfcorehdr=")  # fmt: skip
        stamp(job, UNEXPECTED_RESET, "done", f"unexpected reset: {why}; not a fast return. Wipe from here.")


def _restoring_memory(job: ProvisionJob) -> bool:
    """Whether the agent's last word on this job was that it boots the full FPBL to restore memory."""
    said = [p for p in job.phases if "progress" not in p]
    return bool(said) and (said[-1]["phase"], said[-1]["state"]) in (("restore-memory", "start"),
                                                                      ("restore-memory", "done"))  # fmt: skip


def _blob_ref(blob: Blob | None, base_url: str, node: str) -> dict[str, Any] | None:
    if blob is None:
        return None
    return {
        "url": f"{base_url}/agent/v1/nodes/{node}/blobs/{blob.sha256}",
        "sha256": blob.sha256,
        "size": blob.size,
    }


def work(db: Session, row: NodeProvisioning, base_url: str, settings: ProvisioningSettings) -> dict[str, Any]:
    """What the agent should do next: ``deploy``, ``wipe`` or ``wait``."""
    node = row.node
    job = open_job(db, node, for_update=True)
    wait = {"action": "wait", "poll_after": settings.agent_poll_seconds}
    if job is None:
        return wait
    if job.kind == RETURN:
        if wiped(job):
            return wait  # the agent restores memory and boots the full FPBL, which checks in
        job.status = RUNNING
        job.wipe_policy = settings.wipe_policy
        row.disk_zeroed = False  # until this wipe is read back clean
        return {
            "action": "wipe", "job": job.uuid, "policy": settings.wipe_policy,
            "verify": settings.wipe_verify, "scrub_memory": settings.memory_scrub,
        }  # fmt: skip
    image = job.image
    if image is None:
        finish(job, ERROR, "The image was deleted before the deploy started.")
        states.transition(row, Event.DEPLOY_FAILED)
        return wait
    if job.status == PENDING:
        job.status = RUNNING
        job.deadline = job.deadline or deadline_of(DEPLOY, FAST, settings)  # a rebuild's, if not set
        stamp(job, "handed-out", "done", f"image {image.label}")
        job.disk_zeroed, row.disk_zeroed = row.disk_zeroed, False  # this deploy writes the disk
    # Each hand-out: the secret this FPBL booted with dies, and the customer's OS will hold only the token.
    answer = {
        "action": "deploy",
        "job": job.uuid,
        "secret": rotate_secret(row),
        "return_token": issue_return_token(row),
        "cmdline": image.cmdline,
    }
    if image.manifest is not None:
        node_url = f"{base_url}/agent/v1/nodes/{node.label}"
        return {**answer, **_whole_disk(db, job, image, node_url, settings)}
    return {
        **answer,
        "kernel": _blob_ref(image.kernel, base_url, node.label),
        "initrd": _blob_ref(image.initrd, base_url, node.label),
        "disk": _blob_ref(image.disk, base_url, node.label),
    }


def _whole_disk(
    db: Session, job: ProvisionJob, image: Image, node_url: str, settings: ProvisioningSettings
) -> dict[str, Any]:
    """A whole-disk deploy's part of the work answer: the image's extents, which the agent fetches chunk by
    chunk (from its peers first, with ``peers``: see `peer_announce`); the boot entry overrides (the
    provision request's, else the image's command line); the seed cloud-init reads on first boot (host
    name = node name)."""
    assert image.manifest is not None
    seed = job.seed or {}
    boot = {k: seed[k] for k in ("kernel", "initrd", "cmdline") if k in seed}
    if "cmdline" not in boot and image.cmdline:
        boot["cmdline"] = image.cmdline
    first_boot = {"instance_id": job.uuid, "hostname": job.node.label}
    first_boot |= {k: seed[k] for k in ("ssh_keys", "user_data", "network_config") if k in seed}
    held = chunks.extents(db, image.id)
    listed: list[dict[str, Any]] = [
        {"offset": e.offset, "length": e.length, "sha256": e.sha256} for e in held
    ]
    whole: dict[str, Any] = {
        "virtual_size": image.manifest.virtual_size,
        "zeroed": bool(job.disk_zeroed),
        "chunk_url": f"{node_url}/chunks/{{sha256}}",
        "extents": listed,
    }
    if settings.peer_exchange:
        whole["peers"] = {
            "url": f"{node_url}/peers",
            "port": settings.peer_port,
            "piece_size": chunks.PIECE_SIZE,
        }
        digests = chunks.pieces(db, [e.sha256 for e in held])
        for e, item in zip(held, listed, strict=True):
            item["pieces"] = digests[e.sha256]
    return {
        "image": whole,
        "boot": boot,
        "seed": first_boot,
    }


def report(
    db: Session, row: NodeProvisioning, body: dict[str, Any], settings: ProvisioningSettings | None = None
) -> None:
    """Record a phase the agent reports.

    A deploy ends with ``kexec`` done (the agent's last words before it jumps into the customer's
    kernel): the node is ``deployed``. A return ends with ``ready`` done after a verified wipe (or with
    the full FPBL's check-in). Those final reports may arrive again for an ended job; they change nothing.
    """
    query = select(ProvisionJob).where(ProvisionJob.uuid == str(body["job"]))
    job = db.scalar(query.with_for_update())  # see open_job: the ticker may stamp it at the same time
    if job is None or job.node_id != row.node_id:
        raise NotFoundError(f"Job {str(body['job'])[:40]} does not exist for node {row.node.label}.")
    phase, state = str(body["phase"]), str(body["state"])
    if job.status == DONE and phase in (KEXEC, READY_PHASE) and state == "done":
        return
    if job.status not in (PENDING, RUNNING):
        raise IllegalStateError(f"Job {job.uuid} has ended ({job.status}).")
    stamp(job, phase, state, str(body.get("detail", ""))[:2000], float(body["at"]))
    if "progress" in body:
        job.phases[-1]["progress"] = body["progress"]
    if job.kind == RETURN and phase in _WIPE_PHASES and state == "start":
        job.deadline = max(job.deadline or utcnow(), utcnow() + WIPE_GRACE)
    if state == "error":
        finish(job, ERROR, f"{phase}: {str(body.get('detail', ''))[:500]}")
        if job.kind == DEPLOY:
            states.transition(row, Event.DEPLOY_FAILED)
        return
    if job.kind == DEPLOY and phase == KEXEC and state == "done":
        finish(job, DONE)
        states.transition(row, Event.KEXEC)
        revoke_secret(row)  # the customer's kernel runs now: only the return token is left
        hand_over(row)
    elif job.kind == RETURN and phase == READY_PHASE and state == "done" and wiped(job):
        # Every block zeroed (or discarded and what still read non-zero zeroed) and read back: the next
        # whole-disk deploy need not write the image's holes. A metadata wipe leaves data: it must.
        row.disk_zeroed = job.wipe_policy in WHOLE_DISK_WIPES
        _returned(db, row, job, settings)


def _returned(
    db: Session, row: NodeProvisioning, job: ProvisionJob, settings: ProvisioningSettings | None
) -> None:
    """A return ended, its wipe verified: the node is ready, or deploys at once for a rebuild."""
    finish(job, DONE)
    states.transition(row, Event.RETURNED)
    if start_queued_deploy(db, row, settings):
        stamp(job, "rebuild", "done", "the waiting deploy starts")
    bump_node_generation(db)


def deploy_blobs(db: Session, row: NodeProvisioning) -> set[str]:
    """The digests the node's agent may download: those of its open deploy's image, and no others."""
    job = open_job(db, row.node, DEPLOY)
    if job is None or job.image is None:
        return set()
    image = job.image
    return {b.sha256 for b in (image.kernel, image.initrd, image.disk) if b is not None}


def peer_announce(
    db: Session, row: NodeProvisioning, tracker: Tracker, address: str, port: int, have: str,
    dropped: list[tuple[str, int]], multicast: tuple[int, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An agent's announcement to the peer-exchange tracker: its peers deploying the same image, and the
    chunks it may take from the server (see `rhaas.core.provisioning.tracker`); with ``multicast`` (a UDP
    port and a rate in bytes per second), the image's multicast group. NotFoundError if the node has no
    open whole-disk deploy."""
    job = open_job(db, row.node, DEPLOY)
    if job is None or job.image is None or job.image.manifest is None:
        raise NotFoundError(f"Node {row.node.label} has no whole-disk deploy under way.")
    image_id = job.image.id

    def layout() -> list[int]:
        return [chunks.piece_count(e.length) for e in chunks.extents(db, image_id)]

    held = int(have, 16) if have else 0
    return tracker.announce(
        ("image", image_id), layout, row.node.label, address, port, held, dropped, multicast
    )


def deploy_chunk(db: Session, row: NodeProvisioning, sha256: str) -> bytes:
    """A chunk of the node's open deploy's whole-disk image; nothing else (NotFoundError)."""
    job = open_job(db, row.node, DEPLOY)
    if job is None or job.image is None or not chunks.image_holds(db, job.image.id, sha256):
        raise NotFoundError(f"Chunk {sha256} is not part of this node's deploy.")
    return chunks.chunk_data(db, sha256)
