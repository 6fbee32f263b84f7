"""The README's main command plays the whole story and checks its claims."""

import subprocess
import sys


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
