"""The README's main command plays the whole story and checks its claims: on mock hardware anywhere, and
on the lab (real Open vSwitch, IPMI, QEMU nodes, fast provisioning) as root."""

import subprocess
import sys

import pytest
from lab_helpers import MISSING

from rhaas.lab import procs


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
