"""The README's main command plays the whole story and checks its claims: on mock hardware anywhere, and
on the lab (real Open vSwitch, IPMI, QEMU nodes, fast provisioning) as root."""

import signal
import subprocess
import sys

import pytest
from lab_helpers import MISSING

from rhaas.lab import procs
from rhaas.lab.polling import wait_for
from rhaas.lab.site import Lab, lab_id


def test_demo_plays_the_story_on_mock_hardware_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "rhaas.cli.main", "demo", "--mock", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 6 checks passed" in result.stdout, result.stdout
    assert "the request walked down to the base" in result.stdout
    assert not workdir.exists(), "the demo must remove what it made"


@pytest.mark.qemu
@pytest.mark.root
@pytest.mark.ovs
@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.timeout(3300)  # TCG: two Debian first boots per customer, a reboot, the reboot path
def test_demo_plays_the_whole_story_on_the_lab_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rhaas.cli.main", "demo", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=3000,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "all 12 checks passed" in result.stdout, out
        assert "(virtio through IPMI, virtio through IPMI, virtio through IPMI)" in out
        assert (
            "✔ A's OS drives each node's own hardware (disk, NIC driver): n1 (virtio): /dev/vda on "
            "virtio_net, n2 (virtio): /dev/vda on virtio_net"
        ) in out
        for n in range(1, 5):  # the seed's four criteria, checked, with their evidence
            assert f"✔ seed {n}/4: " in result.stdout, out
        assert "the seed's acceptance criteria" in result.stdout, out
        assert "fast path against reboot path" in result.stdout, out
        assert "✔ the nodes passed the image to each other (one sent it to a multicast group)" in out
        assert "the request walked down to the base, and the level-3 network reached the switch" in out
        assert "n1: DONE (fast path" in result.stderr, out  # live progress per node
        assert "provision: request -> SSH answers" in result.stdout, out
        assert "✔ B's own reboot brings B's OS back from its disk" in result.stdout, out
        assert "✔ the rebooted node returned by the reboot path, saying why; the other fast" in out
        assert not workdir.exists(), "the demo must remove what it made"
    finally:
        leftover = procs.ours_in(workdir)
        for pid in leftover:
            procs.stop(pid, workdir)
        assert not leftover, f"the demo left processes {leftover}"


@pytest.mark.qemu
@pytest.mark.root
@pytest.mark.ovs
@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_killed_demo_stops_its_lab(tmp_path, signum):
    """A SIGTERM (a ``kill``, a CI's timeout) or a Ctrl-C while the reseller's nodes boot the FPBL ends the
    demo through its cleanup: no QEMU node, BMC, server or Open vSwitch left running, no namespace left."""
    workdir, out = tmp_path / "demo", tmp_path / "out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rhaas.cli.main", "demo", "--workdir", str(workdir)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        # The lab is up, the reseller runs and its nodes are being power cycled into the FPBL.
        wait_for(
            "the enrolment step", lambda: "▶ enrol both" in out.read_text() or proc.poll() is not None, 600
        )
        assert proc.poll() is None, out.read_text()
        assert procs.ours_in(workdir), "the demo runs nothing in its workdir?"
        proc.send_signal(signum)
        assert proc.wait(timeout=180) == 128 + signum, out.read_text()
        text = out.read_text()
        assert "the demo was stopped: stopping everything it started" in text, text
        assert "stopped Open vSwitch" in text, text
        lab = lab_id(workdir / "lab")
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab not in namespaces, namespaces
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftover = procs.ours_in(workdir)
        Lab(workdir / "lab").down()
        assert not leftover, f"the killed demo left processes {leftover}"
