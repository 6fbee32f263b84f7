"""A reseller on the lab: a recursive instance over the lab's base instance with fast provisioning on.

`start_reseller` gives the base a project and a user for the reseller, starts the recursive instance
(``rhaas-admin serve --upstream …``) with a ``[provisioning]`` section, makes its provisioning network
(a network of the recursive instance, hence one VLAN of the base), puts a headnode's port on that VLAN
and starts ``rhaas-admin boot-service`` in the headnode's namespace, relaying to the instance's
provisioning-network listener (``agent_listen``, a free port on 127.0.0.1), not to its customer API. From
then on the lab's nodes network-boot the FPBL when the reseller enrols them, exactly as real servers
would. Everything goes through the HIL API with rhaas's client.

Used by ``rhaas demo``, ``bench/provision.py`` and the lab's provisioning test. Every process it starts
names the lab's work directory on its command line, so ``rhaas lab down`` ends them too.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from rhaas.client import Client
from rhaas.lab import procs
from rhaas.lab.polling import wait_for
from rhaas.lab.qemu import PROFILES
from rhaas.lab.servers import Server
from rhaas.lab.site import Lab

BOOT_PORT = 8080
#: The agents' port on the headnode, relayed to the reseller's agents' TLS listener.
AGENT_PORT = 8443
#: The provisioning network's name in the reseller, and the admin project that owns it.
PROVISIONING_NETWORK, INFRA_PROJECT = "prov", "infra"


@dataclass
class Reseller:
    """A running recursive instance with fast provisioning, and its boot service."""

    name: str
    server: Server
    admin: Client
    config: Path
    settings: dict[str, object]
    provisioning_vlan: str
    workdir: Path
    boot_pid: int | None = None

    def restart(self, **settings: object) -> None:
        """Restart the instance on the same database and port with ``settings`` changed (e.g.
        ``return_path="reboot"``); pending work resumes, as after any restart."""
        self.settings.update(settings)
        write_config(self.config, self.settings)
        self.server.stop()
        self.server.start()

    def stop(self) -> None:
        """End the boot service and the instance, by PID."""
        self.admin.close()
        procs.stop(self.boot_pid, self.workdir)
        self.boot_pid = None
        self.server.stop()


def write_config(path: Path, settings: dict[str, object]) -> None:
    lines = ["[provisioning]", *(f"{k} = {_toml(v)}" for k, v in settings.items())]
    path.write_text("\n".join(lines) + "\n")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_reseller(
    lab: Lab,
    headnode: str,
    fpbl_dir: Path,
    name: str = "reseller",
    **settings: object,
) -> Reseller:
    """Start the reseller ``name`` on project ``name`` of the lab's base, with its boot service in
    ``headnode`` (already made with `Lab.headnode`) serving the FPBL exported in ``fpbl_dir``."""
    record = lab.load()
    if record is None:
        raise RuntimeError(f"no lab in {lab.workdir}: bring it up first")
    head = record.headnodes[headnode]
    workdir = lab.workdir
    bot, bot_password = f"{name}-bot", secrets.token_urlsafe(12)
    with lab.client(record) as base:
        base.project.create(name)
        base.user.create(bot, bot_password)
        base.user.add_project(bot, name)

    address = head.ip.split("/")[0]
    boot_url = f"http://{address}:{BOOT_PORT}"
    values: dict[str, object] = {
        "enabled": True,
        "tick_seconds": 0.2,
        "agent_poll_seconds": 0.5,
        "network": PROVISIONING_NETWORK,
        "boot_url": boot_url,
        "agent_url": f"https://{address}:{AGENT_PORT}",
        "fpbl_dir": str(fpbl_dir),
        "return_timeout": 240,
        **settings,
    }
    # What the FPBL needs on the lab's hardware (the NVMe profile's workaround for QEMU's emulation).
    needed = dict.fromkeys(w for n in record.nodes for w in PROFILES[n.profile].fpbl_args.split())
    if needed and "fpbl_args" not in settings:
        values["fpbl_args"] = " ".join(needed)
    config = workdir / f"{name}.toml"
    password = secrets.token_urlsafe(12)
    upstream = ["--upstream", record.endpoint, "--upstream-project", name, "--upstream-user", bot]
    server = Server(
        f"sqlite:///{workdir / (name + '.sqlite3')}",
        workdir / f"{name}.log",
        *upstream,
        "--config",
        str(config),
        admin=("admin", password),
        env={"RHAAS_UPSTREAM_PASSWORD": bot_password},
    )
    # The agents' and the network boot's listeners: only the boot service's relays reach them.
    values.setdefault("agent_listen", server.agent_listen)
    values.setdefault("boot_listen", server.boot_listen)
    write_config(config, values)
    server.start()
    admin = Client(server.url, "admin", password)
    reseller = Reseller(name, server, admin, config, values, "", workdir)
    try:
        # The provisioning network is the reseller's own (so one VLAN of the base); the headnode's port
        # carries it too, at the base, where the headnode lives.
        admin.project.create(INFRA_PROJECT)
        admin.network.create(PROVISIONING_NETWORK, "admin", INFRA_PROJECT, "")
        vlan = admin.network.show(PROVISIONING_NETWORK)["channels"][1].split("/")[1]
        reseller.provisioning_vlan = vlan
        with lab.client(record) as base:
            upstream_net = next(
                n
                for n in base.project.networks_in(name)
                if base.network.show(n)["channels"][1] == f"vlan/{vlan}"
            )
            base.project.connect(name, headnode)
            base.wait_networking_action(
                base.node.connect_network(headnode, "eth0", upstream_net)["status_id"]
            )
        relays = (f"http://{values['boot_listen']}", f"https://{values['agent_listen']}")
        reseller.boot_pid = _boot_service(reseller, head.ip, head.netns, *relays)
    except BaseException:
        reseller.stop()
        raise
    return reseller


def _boot_service(reseller: Reseller, address: str, netns: str, boot: str, agents: str) -> int:
    """Start the boot service on ``address`` in ``netns``, relaying to ``boot`` and ``agents`` (the
    reseller's boot and agents' listeners, never its customer API); its PID once it has started."""
    log = reseller.workdir / f"{reseller.name}-boot-service.log"
    argv = [sys.executable, "-m", "rhaas.admin", "boot-service", "--address", address,
            "--port", str(BOOT_PORT), "--api", boot, "--agent-port", str(AGENT_PORT), "--agent-api", agents,
            "--netns", netns,
            "--dir", str(reseller.workdir / f"{reseller.name}-boot")]  # fmt: skip
    pid = procs.spawn(argv, log)
    try:
        wait_for("the boot service", lambda: b"boot service" in log.read_bytes() or not procs.alive(pid), 30)
        if not procs.alive(pid):
            raise RuntimeError(f"the boot service did not start: {log.read_text()[-2000:]}")
    except BaseException:
        procs.stop(pid, reseller.workdir)
        raise
    return pid
