"""What the fast-provisioning tests on real QEMU nodes share: their marks and timeouts, the settings file
that turns fast provisioning on for a real server, and the customer steps (upload an image, wait for a
job, boot a node's FPBL until it is ready) done through the client library.

The ``fpbl`` fixture (the FPBL built once per module) lives in conftest.py; nothing here starts a node
or a server by itself.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from rhaas.client import Client
from rhaas.lab import images
from rhaas.lab.fastnode import BMC_USER, FastNode, agent_url
from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server

#: The marks of every test that provisions a real QEMU node through a real server and a virtual BMC.
QEMU_PROVISIONING_MARKS = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.ipmi,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"),
]

BOOT_TIMEOUT = 240  # TCG on a busy 2-core machine; the FPBL moves ~40 MB through each kexec
BMC_PASSWORD = "bmc-s3cret"
MEMORY_MB = 1536


def provisioning_config(path: Path, server: Server, **settings: object) -> None:
    """Write a settings file turning fast provisioning on for ``server``: its agents' listener on the
    server's ``agent_port``, which the nodes reach at 10.0.2.2."""
    values = {"tick_seconds": 0.2, "agent_poll_seconds": 0.5, **settings}
    lines = ["[provisioning]", "enabled = true", f'agent_listen = "{server.agent_listen}"',
             f'agent_url = "{agent_url(server.agent_port)}"']  # fmt: skip
    path.write_text("\n".join(lines + [f"{k} = {v}" for k, v in values.items()]) + "\n")


def upload_image(
    c: Client, name: str, project: str, os_: images.TestOS, disk: Path | None, extra: str = ""
) -> None:
    """Upload ``os_`` (and ``disk``) as ``c`` and register them as image ``name`` of ``project``, its
    command line followed by ``extra``."""
    digests = {role: c.image.upload(path)["sha256"] for role, path in (("kernel", os_.kernel),
               ("initrd", os_.initrd), *((("disk", disk),) if disk else ()))}  # fmt: skip
    c.image.register(name, project=project, cmdline=f"{os_.cmdline} {extra}".strip(), **digests)


def wait_job(c: Client, job: str, timeout: float) -> dict[str, Any]:
    """Wait for a provisioning job to end; it must end DONE."""

    def ended() -> dict[str, Any] | None:
        shown: dict[str, Any] = c.node.show_provision_job(job)
        return shown if shown["status"] in ("DONE", "ERROR") else None

    shown = wait_for(f"job {job}", ended, timeout)
    assert shown["status"] == "DONE", shown
    return shown


def state(admin: Client, node: str) -> str:
    """The node's provisioning state."""
    return str(admin.node.provisioning(node)["state"])


def boot_fpbl(
    admin: Client, fast: FastNode, fpbl: Any, timings: dict[str, float], extra_cmdline: str = ""
) -> int:
    """Register and enrol the node, boot its FPBL, wait until it is ready; the firmware boot count then.

    ``extra_cmdline``: kernel parameters for the FPBL besides its own and its enrolment's."""
    name = fast.name
    admin.node.register(name, "ipmi", "127.0.0.1", BMC_USER, BMC_PASSWORD, port=fast.port)
    admin.node.add_nic(name, "eth0", fast.node.mac)
    enrolled = admin.node.enroll_fpbl(name)["cmdline"]
    assert state(admin, name) == "booting"
    # The FPBL boots (here straight from the kernel; the lab boots it through PXE) and checks in.
    started = time.monotonic()
    fast.boot_fpbl(" ".join(filter(None, (fpbl.cmdline, extra_cmdline, enrolled))))
    wait_for("ready", lambda: state(admin, name) == "ready", BOOT_TIMEOUT)
    timings["power on -> FPBL ready"] = time.monotonic() - started
    return fast.boots()


def two_customers(
    admin: Client, workdir: Path, flavour: str = "cloud"
) -> tuple[images.TestOS, images.TestOS, Path, str]:
    """Projects a (user alice) and b (user bob); their OSes (test OSes of ``flavour``), and A's disk image
    holding a nonce."""
    for project, user in (("a", "alice"), ("b", "bob")):
        admin.project.create(project)
        admin.user.create(user, f"{user}-pw", is_admin=False)
        admin.user.add_project(user, project)
    nonce = os.urandom(6).hex()
    disk = workdir / "a-disk.img"
    data = f"RHAAS-DISK customer-data {nonce}\n".encode()
    disk.write_bytes(data + bytes(4 * 1024 * 1024 - len(data)))
    a_os = images.build_test_os("a-os", "RHAAS-TESTOS a-os", flavour=flavour)
    return a_os, images.build_test_os("b-os", "RHAAS-TESTOS b-os", flavour=flavour), disk, nonce
