"""`rhaas.procs.cleanup_on_signals`: a kill ends a long command (the demo, a benchmark) through its cleanup,
and a second kill does not cut that cleanup short."""

import signal
import subprocess
import sys
import textwrap

from rhaas.lab.polling import wait_for
from rhaas.procs import cleanup_on_signals

CHILD = textwrap.dedent(
    """
    import pathlib, sys, time
    from rhaas.procs import cleanup_on_signals

    marks = pathlib.Path(sys.argv[1])
    with cleanup_on_signals():
        try:
            (marks / "ready").touch()
            while True:
                time.sleep(0.02)
        finally:
            (marks / "cleaning").touch()
            while not (marks / "go").exists():  # the test sends a second signal meanwhile
                time.sleep(0.02)
            (marks / "cleaned").touch()
    """
)


def _child(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)])
    wait_for("the child's start", lambda: (tmp_path / "ready").exists() or proc.poll() is not None, 30.0)
    assert proc.poll() is None, "the child died at start"
    return proc


def test_a_sigterm_runs_the_cleanup_and_a_second_does_not_cut_it_short(tmp_path):
    proc = _child(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        wait_for("the cleanup", lambda: (tmp_path / "cleaning").exists() or proc.poll() is not None, 30.0)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGHUP)
        (tmp_path / "go").touch()
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert (tmp_path / "cleaned").exists(), "the cleanup was cut short"
    finally:
        proc.kill()
        proc.wait()


def test_a_sighup_runs_the_cleanup_too(tmp_path):
    proc = _child(tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        wait_for("the cleanup", lambda: (tmp_path / "cleaning").exists() or proc.poll() is not None, 30.0)
        (tmp_path / "go").touch()
        assert proc.wait(timeout=30) == 128 + signal.SIGHUP
        assert (tmp_path / "cleaned").exists()
    finally:
        proc.kill()
        proc.wait()


def test_the_handlers_are_put_back_when_the_block_is_left():
    before = signal.getsignal(signal.SIGTERM)
    with cleanup_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
