"""The rhaas CLI end to end: the real console script against real servers (base and recursive)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rhaas.lab.servers import Server, free_port

RHAAS = [sys.executable, "-m", "rhaas.cli.main"]


def run(server: Server, *args: str, user: str = "admin", password: str = "adminpw", check: bool = True):
    env = {**os.environ, "RHAAS_ENDPOINT": server.url, "RHAAS_USERNAME": user, "RHAAS_PASSWORD": password}
    result = subprocess.run([*RHAAS, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


@pytest.fixture
def base(tmp_path: Path):
    server = Server(f"sqlite:///{tmp_path / 'base.sqlite3'}", tmp_path / "base.log").start()
    try:
        yield server
    finally:
        server.stop()


def test_operator_and_customer_session(base):
    run(base, "project", "create", "lab")
    run(base, "switch", "register", "sw0", "mock")
    for i in (1, 2):
        run(base, "node", "register", f"n{i}", "mock", f"bmc{i}", "u", "p")
        run(base, "node", "nic", "register", f"n{i}", "eth0", f"52:54:00:00:00:0{i}")
        run(base, "port", "register", "sw0", f"gi1/0/{i}")
        run(base, "port", "nic", "add", "sw0", f"gi1/0/{i}", f"n{i}", "eth0")
    run(base, "user", "create", "alice", "alicepw", "regular")
    run(base, "user", "project", "add", "alice", "lab")
    assert "alice" in run(base, "user", "list").stdout
    assert json.loads(run(base, "node", "list", "free", "--json").stdout) == ["n1", "n2"]

    as_alice = {"user": "alice", "password": "alicepw"}
    run(base, "project", "node", "add", "lab", "n1", **as_alice)
    assert json.loads(run(base, "project", "node", "claim", "lab", "1", "--json", **as_alice).stdout) == [
        "n2"
    ]
    run(base, "network", "create", "labnet", "lab", **as_alice)
    run(base, "network", "create", "pub", "admin", "--public")
    listing = run(base, "network", "list").stdout  # HIL's CLI crashed when a public network existed
    assert "pub" in listing
    out = run(
        base, "node", "network", "connect", "n1", "eth0", "labnet", "--wait", "--json", **as_alice
    ).stdout
    assert json.loads(out)["status"] == "DONE"  # no channel given: the default, not HIL's "" (a 400)
    shown = json.loads(run(base, "node", "show", "n1", "--json", **as_alice).stdout)
    assert shown["nics"][0]["networks"] == {"vlan/native": "labnet"}
    state = json.loads(run(base, "port", "state", "sw0", "gi1/0/1", "--json").stdout)
    assert state["native"] is not None

    run(base, "node", "obm", "enable", "n1", **as_alice)
    run(base, "node", "power", "on", "n1", **as_alice)
    assert "on" in run(base, "node", "power", "status", "n1", **as_alice).stdout
    run(base, "node", "power", "nmi", "n1", **as_alice)

    # `project node remove --force` detaches networks and disables OBM first, as HIL's did, but works.
    run(base, "project", "node", "remove", "lab", "n1", "--force", **as_alice)
    assert json.loads(run(base, "project", "node", "list", "lab", "--json", **as_alice).stdout) == ["n2"]


def test_errors_are_one_line_and_exit_nonzero(base):
    result = run(base, "node", "show", "nope", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: NotFoundError: Node nope does not exist."
    result = run(base, "project", "list", user="admin", password="wrong", check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: AuthorizationError:")
    result = run(base, "node", "list", "sideways", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_recursive_instance_through_the_cli(base, tmp_path):
    run(base, "switch", "register", "sw0", "mock")
    run(base, "node", "register", "n1", "mock", "bmc1", "u", "p")
    run(base, "node", "nic", "register", "n1", "eth0", "52:54:00:00:00:01")
    run(base, "port", "register", "sw0", "gi1/0/1")
    run(base, "port", "nic", "add", "sw0", "gi1/0/1", "n1", "eth0")
    run(base, "project", "create", "reseller")
    run(base, "user", "create", "bot", "botpw", "regular")
    run(base, "user", "project", "add", "bot", "reseller")
    recursive = Server(
        f"sqlite:///{tmp_path / 'r.sqlite3'}",
        tmp_path / "r.log",
        "--upstream", base.url, "--upstream-project", "reseller", "--upstream-user", "bot",
        env={"RHAAS_UPSTREAM_PASSWORD": "botpw"},
    ).start()  # fmt: skip
    try:
        assert json.loads(run(recursive, "pool", "grow", "1", "--json").stdout) == ["n1"]
        shown = json.loads(run(recursive, "pool", "show", "--json").stdout)
        assert shown["upstream"] == {"url": base.url, "project": "reseller"} and shown["free"] == 1
        assert json.loads(run(recursive, "node", "list", "free", "--json").stdout) == ["n1"]
        assert json.loads(run(recursive, "pool", "reconcile", "--json").stdout)["nodes_gone_upstream"] == []
        assert json.loads(run(recursive, "pool", "shrink", "1", "--json").stdout) == ["n1"]
        assert json.loads(run(base, "node", "list", "free", "--json").stdout) == ["n1"]
    finally:
        recursive.stop()


def test_image_register_list_show_delete(base, tmp_path: Path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel bytes")
    initrd.write_bytes(b"initrd bytes")
    run(base, "project", "create", "lab")
    args = ["--kernel", str(kernel), "--initrd", str(initrd), "--cmdline", "console=ttyS0"]
    run(base, "image", "register", "lab-os", "--project", "lab", *args)
    assert json.loads(run(base, "image", "list", "--json").stdout) == ["lab-os"]
    shown = json.loads(run(base, "image", "show", "lab-os", "--json").stdout)
    assert shown["project"] == "lab" and shown["kernel"]["size"] == len(b"kernel bytes")
    # Blobs already in the store are named by digest: nothing is uploaded again.
    digest = "sha256:" + shown["kernel"]["sha256"]
    again = run(base, "image", "register", "pub-os", "--kernel", digest, "--initrd", digest)
    assert "uploading" not in again.stderr
    assert "sha256:" + shown["kernel"]["sha256"] in run(base, "image", "show", "pub-os").stdout
    missing = run(base, "image", "register", "x", "--kernel", str(tmp_path / "nope"), "--initrd", digest,
                  check=False)  # fmt: skip
    assert missing.returncode == 2 and "no such file" in missing.stderr
    run(base, "image", "delete", "lab-os")
    assert json.loads(run(base, "image", "list", "--json").stdout) == ["pub-os"]


def test_image_register_from_an_unreachable_url_registers_nothing(base, tmp_path: Path):
    """A URL nobody answers on: one line naming it, exit 1, and nothing registered or stored, whichever of
    the image's files it was (the other ones are not uploaded either)."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel bytes, never uploaded")
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()
    closed = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    for args, url in (
        (["--kernel", f"{closed}/vmlinuz", "--initrd", str(kernel)], f"{closed}/vmlinuz"),
        (["--kernel", str(kernel), "--initrd", f"{closed}/initrd.img"], f"{closed}/initrd.img"),
        (
            ["--kernel", str(kernel), "--initrd", str(kernel), "--disk", f"{closed}/disk.img"],
            f"{closed}/disk.img",
        ),
    ):
        result = run(base, "image", "register", "unreachable-os", *args, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(f"error: cannot download {url}: "), result.stderr
        assert "Connection refused" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert json.loads(run(base, "image", "list", "--json").stdout) == []
    with base.client("admin", "adminpw") as admin:
        assert admin.get(f"/blob/{digest}").status_code == 404
    store = tmp_path / "base-images"  # the Server helper's image store, next to its log
    assert not [p for p in store.rglob("*") if p.is_file()]
