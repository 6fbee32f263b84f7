"""bench/fleet.py, small: 1 and 4 agents in network namespaces over shaped links, a 4 MiB image. Every
node must get the image (the bench checks each file and fails otherwise), the peer exchange must keep
the server under two images, multicast through a real bridge must carry most of it with the server
sending one image, and nothing of the topology may be left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PREFIX = "rft"  # not the bench's own: a run by hand beside the tests is not torn down by them

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, tc)"),
    pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)"),
]


def leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in netns.splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return [name for name in names if name.startswith(f"{PREFIX}-")]


def bench_rows(*args: str) -> tuple[dict[tuple[str, int], list[str]], str]:
    """Run the bench with ``args`` (small: a 4 MiB image in 1 MiB chunks, 50 Mbit/s links); its table's
    rows by (mechanism, N), and its output. Fails if it failed or left anything of its topology."""
    argv = [sys.executable, str(ROOT / "bench/fleet.py"), "--prefix", PREFIX, "--size-mib", "4",
            "--chunk-mib", "1", "--rate-mbit", "50", "--timeout", "120", *args]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    finally:
        left = leftovers()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not left, f"left behind: {left}"
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0] in ("plain", "swarm", "multicast"):
            rows[cells[0], int(cells[1])] = cells
    return rows, done.stdout


#: Columns of the table.
IMAGES, FROM_PEERS, FROM_GROUP, LOST = 5, 6, 13, 14


def test_a_small_fleet_gets_the_image_with_the_server_sending_it_about_once():
    rows, out = bench_rows("--nodes", "1,4")
    assert set(rows) == {(m, n) for m in ("plain", "swarm", "multicast") for n in (1, 4)}, out
    assert float(rows["plain", 4][IMAGES]) == pytest.approx(4.0, abs=0.01), "plain: one image per node"
    assert float(rows["swarm", 4][IMAGES]) <= 2.0, "the peer exchange: the server sends about one image"
    assert float(rows["swarm", 4][FROM_PEERS]) > 0, "the peers carried part of it"
    assert float(rows["multicast", 4][IMAGES]) == pytest.approx(1.0, abs=0.01), "one agent sends to the group"
    assert float(rows["multicast", 4][FROM_GROUP]) >= 3 * 3, (
        "the group carried most of the other three's image"
    )


def test_a_node_whose_link_drops_the_groups_datagrams_is_repaired_by_its_peers():
    """The last node's download is shaped below the group's rate: its queue drops datagrams in the kernel.
    It must still end with the image (the bench checks every file), its pieces repaired by the peers."""
    rows, out = bench_rows(
        "--nodes", "3", "--mechanisms", "multicast", "--size-mib", "16", "--slow-node-mbit", "10"
    )
    row = rows["multicast", 3]
    assert int(row[LOST]) > 0, f"no piece lost a datagram: the slow link dropped nothing\n{out}"
    assert float(row[FROM_PEERS]) > float(row[FROM_GROUP]), "the peers repaired nothing"
    assert float(row[IMAGES]) == pytest.approx(1.0, abs=0.01), "the repairs came from the server"
