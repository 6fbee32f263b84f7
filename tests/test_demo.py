"""The README's main command plays the whole story and checks its claims."""

import shutil
import subprocess
import sys

import pytest


def test_demo_plays_the_story_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "rhaas.cli.main", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 6 checks passed" in result.stdout, result.stdout
    assert "the request walked down to the base" in result.stdout
    assert not workdir.exists(), "the demo must remove what it made"


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")
def test_demo_with_fast_provisioning_on_real_nodes(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "rhaas.cli.main", "demo", "--fast", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "all 12 checks passed" in result.stdout, out
    claims = [
        "A's OS runs on both",
        "the returns took the fast path and verified the wipe",
        "B's OS finds none of A's data",
        "no firmware boot from the first 'ready' to the end",
        "the reboot path booted each node's firmware once",
    ]
    for claim in claims:
        assert f"✔ {claim}" in result.stdout, out
    assert "fast provisioning: seconds and firmware boots per node" in result.stdout
    assert "fast1: DONE (fast path" in result.stderr  # live progress per node
    assert not workdir.exists(), "the demo must remove what it made"
