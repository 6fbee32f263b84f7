"""Speaking the FPBL agent's protocol to the API in-process, for the fast-provisioning tests on mock
hardware: a customer's image, an enrolled node's agent, a deploy walked through every phase, and the
mock machine behind a site's BMC.

Nothing here is a fixture; the tests' ``prov`` and ``netprov`` fixtures build on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api_helpers import Api, make_api, populate_site

from rhaas.api.state import AppState
from rhaas.core import provisioning
from rhaas.drivers.obm.mock import MockMachine, MockOBM

KERNEL, INITRD, DISK = b"kernel" * 100, b"initrd" * 100, b"RHAAS-DISK A-data\n" + bytes(5000)
#: Where the network-boot sites' nodes boot from and their agents call (never reached: in-process).
BOOT_URL = "http://10.0.0.1:8080"


def machine(host: str) -> MockMachine:
    """The machine behind the site's mock BMC ``host`` (bmc1..bmc4, on IPMI's default port)."""
    with MockOBM._lock:
        return MockOBM.machines.setdefault(f"{host}:623", MockMachine())


def fake_fpbl(directory: Path) -> Path:
    """What ``rhaas-admin fpbl build --out`` writes, with stand-in kernel and initrd."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vmlinuz").write_bytes(b"K" * 1000)
    (directory / "initrd").write_bytes(b"I" * 3000)
    info = {"cmdline": "console=ttyS0 quiet", "packages": {"linux": "6.1"}, "sizes": {}, "key": "k",
            "core": str(directory / "core"), "manifest": str(directory / "manifest")}  # fmt: skip
    (directory / "fpbl.json").write_text(json.dumps(info))
    return directory


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prov_images(api: Api) -> None:
    """Customer p1's image ``a-os`` (kernel, initrd, disk), uploaded by alice."""
    for blob in (KERNEL, INITRD, DISK):
        headers = {**api.alice.headers, "Content-Type": "application/octet-stream"}
        api.client.put(f"/v0/blob/{sha(blob)}", content=blob, headers=headers).raise_for_status()
    body = {"project": "p1", "kernel": sha(KERNEL), "initrd": sha(INITRD), "disk": sha(DISK)}
    api.alice.ok("PUT", "/image/a-os", {**body, "cmdline": "console=ttyS0"})


class Agent:
    """Speaks the FPBL agent's protocol for one node, on the provisioning network's listener, with its
    credentials as the real agent keeps them: the secret a deploy's hand-out gives replaces the one before,
    and its return token is what a return check-in presents (then the secret that check-in answers)."""

    def __init__(self, api: Api, node: str, secret: str) -> None:
        self.client, self.node = api.agent, node
        self.headers = {"Authorization": f"Bearer {secret}"}
        #: The return token of the deploy handed out last (what the crash kernel's command line holds).
        self.return_token: str | None = None

    def use(self, credential: str) -> None:
        self.headers = {"Authorization": f"Bearer {credential}"}

    def call(
        self, method: str, what: str, body: dict[str, Any] | None = None, status: int = 200
    ) -> dict[str, Any]:
        response = self.client.request(
            method, f"/agent/v1/nodes/{self.node}/{what}", json=body, headers=self.headers
        )
        assert response.status_code == status, (what, response.status_code, response.text)
        return response.json()

    def checkin(self, mode: str = "ready", status: int = 200) -> dict[str, Any]:
        """A check-in; in mode return, as the crash kernel: its return token, ``elfcorehdr=``."""
        if mode == "return" and self.return_token:
            self.use(self.return_token)
        facts = {
            "mode": mode,
            "boot_id": f"{mode}-{time.monotonic()}",
            "kernel": "6.1",
            "memory_kb": 1_000_000,
            "elfcorehdr": mode == "return",
        }
        answer = self.call("POST", "checkin", {**facts, "disks": [{"name": "vda", "size": 4 << 30}]}, status)
        if answer.get("secret"):
            self.use(answer["secret"])
            self.return_token = None
        return answer

    def report(
        self, job: str, phase: str, state: str = "done", status: int = 200, **extra: Any
    ) -> dict[str, Any]:
        body = {"job": job, "phase": phase, "state": state, "at": time.time(), **extra}
        return self.call("POST", "report", body, status=status)

    def work(self) -> dict[str, Any]:
        item = self.call("GET", "work")
        if item.get("secret"):
            self.use(item["secret"])
            self.return_token = item.get("return_token")
        return item


def network_boot(api: Api, agent: Agent, n: int) -> None:
    """Node ``n{n}`` boots the FPBL from the network (the reboot path): its iPXE script carries a fresh
    secret, which ``agent`` takes (the one it had died with its deploy's hand-out)."""
    with AppState.of(api.client.app).sessions() as db:
        script = provisioning.boot_script(db, f"52:54:00:00:00:0{n}", "http://10.0.2.2:5000",
                                          "http://10.0.2.2:5000", "console=ttyS0")  # fmt: skip
        db.commit()
    found = re.search(r"rhaas\.secret=(\S+)", script)
    assert found is not None, script
    agent.use(found.group(1))


def enroll(api: Api, node: str) -> Agent:
    answer = api.admin.ok("PUT", f"/node/{node}/fpbl", {})
    words = dict(w.split("=", 1) for w in answer["cmdline"].split())
    assert words["rhaas.agent"] == "http://10.0.2.2:5000" and words["rhaas.node"] == node
    return Agent(api, node, words["rhaas.secret"])


def state(api: Api, node: str) -> str:
    return str(api.admin.ok("GET", f"/node/{node}/provisioning")["state"])


def deploy(api: Api, agent: Agent, node: str) -> str:
    job = api.alice.ok("POST", f"/node/{node}/provision", {"image": "a-os"}, status=202)["job_id"]
    item = agent.work()
    assert item["action"] == "deploy" and item["job"] == job
    assert item["cmdline"] == "console=ttyS0" and item["disk"]["sha256"] == sha(DISK)
    for phase in ("download-kernel", "download-initrd", "download-disk", "verify", "write-disk"):
        agent.report(job, phase, "start")
        agent.report(job, phase, "done")
    agent.report(job, "kexec", "start")
    assert state(api, node) == "deploying"
    agent.report(job, "kexec", "done")
    agent.report(job, "kexec", "done", status=401)  # said twice (a retry): the secret died at the first
    return job


@contextlib.contextmanager
def network_boot_site(db_url: str, fpbl_dir: Path, **overrides: Any) -> Iterator[Api]:
    """The site with fast provisioning, its provisioning network ``prov`` (of project infra) and the
    network boot set up, a fake FPBL exported in ``fpbl_dir``, and p1's images; ``overrides`` as for
    settings."""
    settings = {
        "provisioning__enabled": True,
        "provisioning__agent_url": BOOT_URL,
        "provisioning__boot_url": BOOT_URL,
        "provisioning__fpbl_dir": str(fake_fpbl(fpbl_dir)),
        "provisioning__network": "prov",
        "provisioning__tick_seconds": 0.05,
        **overrides,
    }
    with make_api(db_url, **settings) as api:
        populate_site(api)
        api.admin.ok("PUT", "/project/infra")
        api.admin.ok("PUT", "/network/prov", {"owner": "admin", "access": "infra", "net_id": ""})
        prov_images(api)
        yield api
