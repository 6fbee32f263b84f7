"""How long each phase of a provisioning job took (`rhaas.provisioning.phases`), as the demo and the
benchmark both report it."""

from __future__ import annotations

import datetime as dt

import pytest

from rhaas.provisioning.phases import FULL_FPBL_CHECKIN, phase_durations

CREATED = dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()


def _job(kind: str, *events: tuple[str, str, float]) -> dict:
    """A job's view as the API answers it: events at seconds after the job's creation."""
    phases = [{"phase": p, "state": s, "at": CREATED + t, "detail": ""} for p, s, t in events]
    return {"kind": kind, "created_at": "2027-01-15T08:00:00Z", "phases": phases}


def test_a_deploys_phases_add_up_to_the_whole_job():
    job = _job(
        "deploy",
        ("handed-out", "done", 0.5),  # stamped by the server
        ("download-kernel", "start", 0.6),
        ("download-kernel", "done", 1.0),
        ("download-initrd", "start", 1.0),
        ("download-initrd", "done", 1.5),
        ("download-disk", "start", 1.5),
        ("download-disk", "done", 4.0),
        ("verify", "done", 4.25),  # the agent reports some phases only when done
        ("write-disk", "done", 4.25),
        ("kexec", "start", 4.25),
        ("kexec", "done", 5.0),
    )
    times = phase_durations(job)
    assert times == pytest.approx({
        "handed-out": 0.5, "download-kernel": 0.5, "download-initrd": 0.5, "download-disk": 2.5,
        "verify": 0.25, "write-disk": 0.0, "kexec": 0.75,
    })  # fmt: skip
    assert list(times) == ["handed-out", "download-kernel", "download-initrd", "download-disk", "verify",
                           "write-disk", "kexec"], "in the order the server recorded them"  # fmt: skip
    assert sum(times.values()) == pytest.approx(5.0)


def test_a_return_counts_the_boots_in_the_check_ins_and_progress_is_not_an_end():
    job = _job(
        "return",
        ("nmi", "done", 0.5),
        ("checkin", "done", 4.0),  # the return FPBL booted after the NMI: 3.5 s
        ("wipe", "start", 4.1),
        ("wipe", "start", 4.2),
        ("wipe", "done", 4.5),
        ("verify-wipe", "done", 4.75),
        ("checkin", "done", 9.0),
        ("ready", "done", 9.25),
    )
    job["phases"][3]["progress"] = {"done": 1, "total": 2}
    assert phase_durations(job) == pytest.approx({
        "nmi": 0.5, "checkin": 3.5, "wipe": 0.5, "verify-wipe": 0.25, FULL_FPBL_CHECKIN: 4.25, "ready": 0.25,
    })  # fmt: skip


def test_a_phase_done_twice_lasts_until_its_last_done_and_errors_end_nothing():
    job = _job(
        "return",
        ("wipe", "done", 1.0),  # first disk
        ("verify-wipe", "done", 1.5),
        ("wipe", "done", 2.5),  # second disk
        ("verify-wipe", "error", 3.0),
    )
    assert phase_durations(job) == pytest.approx({"wipe": 2.0, "verify-wipe": 0.5})


def test_clocks_that_go_back_count_as_no_time():
    """The agent's clock after a kexec is read again from the RTC, in whole seconds."""
    job = _job(
        "deploy", ("handed-out", "done", 2.0), ("download-kernel", "done", 1.4), ("kexec", "done", 3.0)
    )
    assert phase_durations(job) == pytest.approx({"handed-out": 2.0, "download-kernel": 0.0, "kexec": 1.0})


def test_the_time_after_the_last_phase_until_an_end_the_caller_saw():
    job = _job("deploy", ("handed-out", "done", 1.0), ("kexec", "done", 5.0))
    times = phase_durations(job, CREATED + 8.0, "kexec -> customer OS up")
    assert times == pytest.approx({"handed-out": 1.0, "kexec": 4.0, "kexec -> customer OS up": 3.0})
    assert phase_durations(job, CREATED + 8.0) == phase_durations(job), "no name, no entry"
