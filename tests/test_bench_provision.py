"""bench/provision.py's per-phase split of a provisioning job's records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_provision", Path(__file__).parents[1] / "bench/provision.py"
)
assert _spec and _spec.loader
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_each_phase_lasts_until_its_last_done_from_the_jobs_creation():
    t0 = 1_800_000_000.0
    job = {
        "kind": "return",
        "created_at": "2027-01-15T08:00:00Z",
        "phases": [
            {"phase": "nmi", "state": "done", "at": t0 + 0.5},
            {"phase": "checkin", "state": "done", "at": t0 + 4.0},
            {"phase": "wipe", "state": "start", "at": t0 + 4.1},
            {"phase": "wipe", "state": "start", "at": t0 + 4.2, "progress": {"done": 1, "total": 2}},
            {"phase": "wipe", "state": "done", "at": t0 + 4.5},
            {"phase": "verify-wipe", "state": "done", "at": t0 + 4.75},
            {"phase": "checkin", "state": "done", "at": t0 + 9.0},
            {"phase": "ready", "state": "done", "at": t0 + 9.25},
        ],
    }
    created = bench.dt.datetime(2027, 1, 15, 8, tzinfo=bench.dt.UTC).timestamp()
    for event in job["phases"]:
        event["at"] += created - t0
    times = bench.phase_times(job)
    assert times == pytest.approx({
        "return: nmi": 0.5, "return: checkin": 3.5, "return: wipe": 0.5, "return: verify-wipe": 0.25,
        "return: checkin (full FPBL)": 4.25, "return: ready": 0.25,
    })  # fmt: skip
    assert sum(times.values()) == pytest.approx(9.25)


def test_a_deploy_ends_with_the_time_to_the_customer_os():
    created = bench.dt.datetime(2027, 1, 15, 8, tzinfo=bench.dt.UTC).timestamp()
    job = {
        "kind": "deploy",
        "created_at": "2027-01-15T08:00:00Z",
        "phases": [
            {"phase": "handed-out", "state": "done", "at": created + 1.0},
            {"phase": "kexec", "state": "done", "at": created + 5.0},
        ],
    }
    times = bench.phase_times(job, created + 8.0, "kexec -> customer OS up")
    assert times == pytest.approx(
        {"deploy: handed-out": 1.0, "deploy: kexec": 4.0, "deploy: kexec -> customer OS up": 3.0}
    )


def test_a_wipe_is_timed_start_to_done_per_disk_and_put_per_gib_of_the_disk():
    gib = 1 << 30
    full = {
        "kind": "return",
        "phases": [
            {"phase": "wipe", "state": "start", "at": 10.0, "detail": "/dev/vda full"},
            {"phase": "wipe", "state": "start", "at": 10.5, "progress": {"done": 1, "total": 2}},
            {"phase": "wipe", "state": "done", "at": 11.0, "detail": f"/dev/vda: {2 * gib} bytes zeroed"},
            {"phase": "verify-wipe", "state": "start", "at": 11.0},
            {"phase": "verify-wipe", "state": "done", "at": 11.25},
        ],
    }
    metadata = {
        "kind": "return",
        "phases": [
            {"phase": "wipe", "state": "start", "at": 20.0},
            {"phase": "wipe", "state": "done", "at": 20.1, "detail": "/dev/vda: 2097152 bytes written"},
        ],
    }
    figures = {"full": bench.wipe_figures(full), "metadata": bench.wipe_figures(metadata)}
    assert figures["full"] == {"wipe_s": 1.0, "verify_s": 0.25, "bytes": float(2 * gib)}
    table = bench.wipe_table(figures)
    assert table["full"]["s_per_gib"] == 0.5 and table["full"]["disk_gib"] == 2.0
    assert table["metadata"]["s_per_gib"] == pytest.approx(0.05) and table["metadata"]["zeroed_gib"] == 0.002
