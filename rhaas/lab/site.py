"""The lab as a whole: ``rhaas lab up``, ``status``, ``headnode``, ``exec`` and ``down`` (see docs/lab.md).

One work directory holds one lab. Its names derive from the directory (``rl`` + 4 hex digits of a hash
of its path: the *lab id*), so two labs on one machine never share a device, and ``down`` finds what a
lab made even when ``lab.json`` is gone::

    <workdir>/lab.json            what runs: PIDs, ports, names, endpoint (written after every step)
    <workdir>/credentials.json    admin and BMC passwords (mode 0600)
    <workdir>/rhaas.sqlite3       the base instance's database; server.log
    <workdir>/ovs/                the private Open vSwitch (OVSDaemon)
    <workdir>/nodes/              per node: console log, QEMU log, qcow2 disk, QMP socket, pidfile,
                                  BMC state (<n>.bmc.json) and BMC log
    <workdir>/headnodes/<name>/   a headnode's services: dnsmasq.conf, http/, logs

Open vSwitch runs in a network namespace of its own (``<id>sw``), not the host's: userspace datapaths
of one namespace share one ``ovs-netdev`` device, so a lab in the host namespace would break every other
userspace OVS there (the test suite's, another lab's), and deleting the namespace at ``down`` removes
every device left in it. Node taps are *persistent* taps made in that namespace once, at ``up``, and
added to the bridge then; QEMU runs inside the namespace (``ip netns exec``) and attaches to its tap at
each power-on. So a powered-off node keeps its switch port and VLAN settings, like a real cable.

Everything registered in the base instance goes through rhaas's client (`rhaas.client.Client`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rhaas.client import Client
from rhaas.errors import DuplicateError
from rhaas.lab import bootserver, netns, procs
from rhaas.lab.daemon import PASSWORD_ENV, state_file
from rhaas.lab.ovs import OVSDaemon
from rhaas.lab.qemu import CPU_MODELS, PROFILES, QemuNode, mac_for
from rhaas.lab.servers import free_port
from rhaas.lab.vbmc import BMCState
from rhaas.procs import find_binary

SWITCH = "labsw"
ADMIN_USER = "admin"
BMC_USER = "admin"
NIC = "eth0"
DEFAULT_HEADNODE_IP = "10.0.0.1/24"
#: The access VLAN OVS gives a port until the switch driver sets it: one no network has (its DEAD_VLAN).
_EMPTY_PORT = ("vlan_mode=access", "tag=4095", "protected=true")

Say = Callable[[str], None]


def missing() -> str | None:
    """Why the lab cannot run here (not root, a tool not installed), or None if it can."""
    if os.geteuid() != 0:
        return "needs root (namespaces, taps, Open vSwitch)"
    for tool in ("ovs-vswitchd", "ovsdb-server", "qemu-system-x86_64", "dnsmasq", "ipmitool", "ip"):
        if find_binary(tool) is None:
            return f"{tool} is not installed"
    return None


class LabError(RuntimeError):
    """The lab could not be brought up, inspected or torn down; the message says what and where."""


def default_workdir() -> Path:
    """``$RHAAS_LAB_DIR``, else ``~/.cache/rhaas/lab``."""
    env = os.environ.get("RHAAS_LAB_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rhaas" / "lab"


def lab_id(workdir: Path) -> str:
    """``rl`` + 4 hex digits of the work directory's path: the prefix of every device name of the lab."""
    return "rl" + hashlib.sha256(str(workdir).encode()).hexdigest()[:4]


def node_hardware(profiles: Sequence[str], bmcs: Sequence[str], nodes: int) -> list[tuple[str, str]]:
    """Each of ``nodes`` nodes' (profile, BMC protocol): node i takes the i-th of each, round the lists."""
    return [(profiles[i % len(profiles)], bmcs[i % len(bmcs)]) for i in range(nodes)]


#: What a lab node's BMC can speak.
BMC_PROTOCOLS = ("ipmi", "redfish")


@dataclass
class NodeRecord:
    name: str
    mac: str
    tap: str
    bmc_port: int
    bmc_pid: int | None = None
    #: The node's hardware (`rhaas.lab.qemu.PROFILES`) and its firmware hold at every firmware boot.
    profile: str = "virtio"
    post_seconds: float = 0.0
    #: The vCPU model (`rhaas.lab.qemu.CPU_MODELS`).
    cpu: str = "qemu64"
    #: What the node's BMC speaks: ``ipmi`` (UDP ``bmc_port``) or ``redfish`` (HTTP on TCP ``bmc_port``).
    bmc: str = "ipmi"


@dataclass
class HeadnodeRecord:
    name: str
    netns: str
    port: str
    ip: str
    mac: str
    #: service name -> PID of detached processes running in the namespace
    services: dict[str, int] = field(default_factory=dict)


@dataclass
class LabRecord:
    """The contents of ``lab.json``."""

    workdir: str
    id: str
    netns: str
    bridge: str
    switch: str
    ovs_db: str
    memory_mb: int
    endpoint: str
    credentials: str
    server_pid: int | None = None
    server_port: int | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    headnodes: dict[str, HeadnodeRecord] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        data = dict(data)
        data["nodes"] = [NodeRecord(**n) for n in data.get("nodes", [])]
        data["headnodes"] = {k: HeadnodeRecord(**h) for k, h in data.get("headnodes", {}).items()}
        return cls(**data)


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        [find_binary("ip") or "ip", *args], capture_output=True, text=True, timeout=15, check=False
    )
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.chmod(path, 0o600)


class Lab:
    """One lab in ``workdir``. Every method is safe to call again, and after a crash."""

    def __init__(self, workdir: Path | str | None = None, say: Say | None = None) -> None:
        self.workdir = Path(workdir or default_workdir()).expanduser().absolute()
        self.id = lab_id(self.workdir)
        self.say: Say = say or (lambda line: None)
        self.state_path = self.workdir / "lab.json"
        self.credentials_path = self.workdir / "credentials.json"
        self.nodes_dir = self.workdir / "nodes"
        self.ovs = OVSDaemon(self.workdir / "ovs", netns=f"{self.id}sw")
        self.bridge = f"{self.id}br"

    # -- records ----------------------------------------------------------------------------------------
    def load(self) -> LabRecord | None:
        """What ``lab.json`` says, or None if there is none (or it is unreadable)."""
        try:
            return LabRecord.from_json(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, record: LabRecord) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(record), indent=1) + "\n")
        tmp.rename(self.state_path)

    def credentials(self) -> dict[str, str]:
        try:
            data = json.loads(self.credentials_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def client(self, record: LabRecord | None = None) -> Client:
        """An admin client of the lab's base instance."""
        record = record or self.load()
        if record is None:
            raise LabError(f"no lab in {self.workdir}: run 'rhaas lab up' first")
        creds = self.credentials()
        if not creds.get("username"):  # --endpoint: the credentials of the environment
            env = Client.from_env({**os.environ, "RHAAS_ENDPOINT": record.endpoint})
            return env
        return Client(record.endpoint, creds["username"], creds["password"])

    # -- up ---------------------------------------------------------------------------------------------
    def up(
        self,
        nodes: int = 2,
        memory_mb: int = 1024,
        endpoint: str | None = None,
        profiles: Sequence[str] = ("virtio",),
        post_seconds: float = 0.0,
        bmcs: Sequence[str] = ("ipmi",),
        cpu: str = "qemu64",
    ) -> LabRecord:
        """Bring the lab up with ``nodes`` nodes (idempotent: what runs is kept, what is missing started).

        Node i gets ``profiles[i % len(profiles)]``, a BMC speaking ``bmcs[i % len(bmcs)]`` (``ipmi`` or
        ``redfish``) and a POST of ``post_seconds`` at every firmware boot; every node's vCPU is ``cpu``.
        """
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, taps, Open vSwitch)")
        for tool in ("ovs-vswitchd", "qemu-system-x86_64", "ip"):
            if find_binary(tool) is None:
                raise LabError(f"{tool} is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes_dir.mkdir(exist_ok=True)
        record = self.load()
        if record is not None and len(record.nodes) != nodes:
            self.say(f"the lab has {len(record.nodes)} nodes; keeping them ('lab down' first to change)")
        if record is None:
            record = self._new_record(nodes, memory_mb, endpoint, profiles, post_seconds, bmcs, cpu)
        self.save(record)

        self.say(f"switch: Open vSwitch in namespace {self.ovs.netns}, bridge {self.bridge}")
        self.ovs.start()
        self.ovs.add_bridge(self.bridge)
        for node in record.nodes:
            self._tap(node.tap)

        if record.server_port is not None:
            self._server(record)
        self.save(record)

        creds = self.credentials()
        for node in record.nodes:
            if procs.is_ours(node.bmc_pid, self.workdir):
                continue
            node.bmc_pid = self._start_bmc(node, record.memory_mb, creds["bmc_password"])
            self.save(record)
        for node in record.nodes:
            self._wait_bmc(node)
        self.say(f"BMCs: {', '.join(f'{n.name} 127.0.0.1:{n.bmc_port}' for n in record.nodes)}")

        with self.client(record) as client:
            self._register(client, record, creds)
        self.save(record)
        self.say(f"lab up in {self.workdir}: {len(record.nodes)} nodes, base instance {record.endpoint}")
        return record

    def set_post(self, seconds: float) -> None:
        """Hold every node's firmware ``seconds`` at each firmware boot from now on (running nodes keep
        running). Each BMC is restarted with the new setting, so its counters start again at 0."""
        if not 0 <= seconds <= 600:
            raise LabError("POST must be between 0 and 600 seconds")
        record = self._require()
        creds = self.credentials()
        for node in record.nodes:
            procs.stop(node.bmc_pid, self.workdir)
            node.post_seconds = seconds
            node.bmc_pid = self._start_bmc(node, record.memory_mb, creds["bmc_password"])
            self.save(record)
        for node in record.nodes:
            self._wait_bmc(node)
        self.say(f"POST of every node: {seconds:g} s")

    def _new_record(
        self,
        nodes: int,
        memory_mb: int,
        endpoint: str | None,
        profiles: Sequence[str] = ("virtio",),
        post_seconds: float = 0.0,
        bmcs: Sequence[str] = ("ipmi",),
        cpu: str = "qemu64",
    ) -> LabRecord:
        if not 1 <= nodes <= 50:
            raise LabError("--nodes must be between 1 and 50")
        if not profiles or any(p not in PROFILES for p in profiles):
            raise LabError(f"node profiles must be among {', '.join(PROFILES)}, not {', '.join(profiles)}")
        if not 0 <= post_seconds <= 600:
            raise LabError("--post must be between 0 and 600 seconds")
        if cpu not in CPU_MODELS:
            raise LabError(f"the nodes' vCPU is one of {', '.join(CPU_MODELS)}, not {cpu}")
        if not bmcs or any(b not in BMC_PROTOCOLS for b in bmcs):
            raise LabError(f"BMCs speak {' or '.join(BMC_PROTOCOLS)}, not {', '.join(bmcs)}")
        creds: dict[str, str] = {"bmc_user": BMC_USER, "bmc_password": secrets.token_urlsafe(12)}
        if endpoint is None:
            creds.update(username=ADMIN_USER, password=secrets.token_urlsafe(16))
        _write_private(self.credentials_path, creds)
        records = [
            NodeRecord(
                name=f"n{i}",
                mac=mac_for(f"{self.id}-n{i}"),
                tap=f"{self.id}t{i}",
                bmc_port=free_port(socket.SOCK_STREAM if bmc == "redfish" else socket.SOCK_DGRAM),
                profile=profile,
                post_seconds=post_seconds,
                cpu=cpu,
                bmc=bmc,
            )
            for i, (profile, bmc) in enumerate(node_hardware(profiles, bmcs, nodes), start=1)
        ]
        server_port = None if endpoint else free_port()
        return LabRecord(
            workdir=str(self.workdir),
            id=self.id,
            netns=str(self.ovs.netns),
            bridge=self.bridge,
            switch=SWITCH,
            ovs_db=self.ovs.db_url,
            memory_mb=memory_mb,
            endpoint=endpoint or f"http://127.0.0.1:{server_port}",
            credentials=str(self.credentials_path),
            server_port=server_port,
            nodes=records,
        )

    def _tap(self, tap: str) -> None:
        """A persistent tap in the switch's namespace, up, and a port of the bridge (empty until set)."""
        ns = str(self.ovs.netns)
        if not self.ovs.link_exists(tap):
            _ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
            # The userspace datapath forwards what the kernel leaves for "hardware" checksumming.
            subprocess.run(
                ["ip", "netns", "exec", ns, "ethtool", "-K", tap, "tx", "off"],
                capture_output=True, timeout=15, check=False,
            )  # fmt: skip
        _ip("-n", ns, "link", "set", tap, "up")
        ports = self.ovs.vsctl("list-ports", self.bridge).split()
        if tap not in ports:
            self.ovs.vsctl("add-port", self.bridge, tap, "--", "set", "port", tap, *_EMPTY_PORT)

    def _server(self, record: LabRecord) -> None:
        if procs.is_ours(record.server_pid, self.workdir) and self._answers(record.endpoint):
            self.say(f"base instance: running (pid {record.server_pid}) at {record.endpoint}")
            return
        from rhaas.core.users import bootstrap_admin
        from rhaas.db.session import make_engine, make_sessionmaker, upgrade

        db_url = f"sqlite:///{self.workdir / 'rhaas.sqlite3'}"
        self.say(f"base instance: starting rhaas-admin serve on port {record.server_port}")
        upgrade(db_url)
        engine = make_engine(db_url)
        creds = self.credentials()
        with make_sessionmaker(engine)() as db:
            bootstrap_admin(db, creds["username"], creds["password"])
            db.commit()
        engine.dispose()
        argv = [sys.executable, "-m", "rhaas.admin", "serve", "--port", str(record.server_port)]
        record.server_pid = procs.spawn([*argv, "--database", db_url], self.workdir / "server.log")
        deadline = time.monotonic() + 60
        while not self._answers(record.endpoint):
            if not procs.alive(record.server_pid):
                raise LabError(f"the base instance exited; see {self.workdir / 'server.log'}")
            if time.monotonic() > deadline:
                raise LabError(f"the base instance does not answer; see {self.workdir / 'server.log'}")
            time.sleep(0.1)

    @staticmethod
    def _answers(endpoint: str) -> bool:
        try:
            return httpx.get(endpoint + "/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _start_bmc(self, node: NodeRecord, memory_mb: int, password: str) -> int:
        self.say(f"BMC of {node.name}: starting on 127.0.0.1:{node.bmc_port}")
        state_file(self.nodes_dir, node.name).unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "rhaas.lab.daemon", "--workdir", str(self.nodes_dir),
            "--node", node.name, "--port", str(node.bmc_port), "--user", BMC_USER, "--mac", node.mac,
            "--tap", node.tap, "--netns", str(self.ovs.netns), "--memory", str(memory_mb),
            "--profile", node.profile, "--post-seconds", str(node.post_seconds), "--protocol", node.bmc,
            "--cpu", node.cpu,
        ]  # fmt: skip
        env = {**os.environ, PASSWORD_ENV: password}
        return procs.spawn(argv, self.nodes_dir / f"{node.name}.bmc.log", env=env)

    def _wait_bmc(self, node: NodeRecord, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                state = BMCState.read(state_file(self.nodes_dir, node.name))
                if state.serving and state.pid == node.bmc_pid:
                    return
            if node.bmc_pid is None or not procs.alive(node.bmc_pid):
                log = self.nodes_dir / f"{node.name}.bmc.log"
                raise LabError(f"the BMC of {node.name} exited; see {log}")
            if time.monotonic() > deadline:
                raise LabError(f"the BMC of {node.name} does not serve after {timeout} s")
            time.sleep(0.05)

    def _register(self, client: Client, record: LabRecord, creds: dict[str, str]) -> None:
        """Register switch, ports, nodes, NICs and wiring; revert each newly wired port."""
        if record.switch not in client.switch.list():
            self.say(f"register: switch {record.switch} (ovs, bridge {record.bridge})")
            client.switch.register(record.switch, "ovs", bridge=record.bridge, db=record.ovs_db)
        known = set(client.node.list("all"))
        for node in record.nodes:
            if node.name in known:
                continue
            self.say(f"register: node {node.name} ({node.bmc} 127.0.0.1:{node.bmc_port}), {NIC} {node.mac}")
            client.node.register(
                node.name, node.bmc, "127.0.0.1", creds["bmc_user"], creds["bmc_password"],
                port=node.bmc_port,
                settings={"scheme": "http"} if node.bmc == "redfish" else None,  # the lab's BMC: plain HTTP
            )  # fmt: skip
            client.node.add_nic(node.name, NIC, node.mac)
            self._wire(client, record, node.tap, node.name)

    def _wire(self, client: Client, record: LabRecord, port: str, node: str) -> None:
        with contextlib.suppress(DuplicateError):
            client.port.register(record.switch, port)
        client.port.connect_nic(record.switch, port, node, NIC)
        client.wait_networking_action(client.port.revert(record.switch, port)["status_id"])

    # -- headnodes --------------------------------------------------------------------------------------
    def headnode(self, name: str, ip: str = DEFAULT_HEADNODE_IP, boot: bool = False) -> HeadnodeRecord:
        """A namespace on a bridge port, registered as node ``name`` (mock OBM) wired to that port.

        With ``boot``, it also serves the network boot of the test OS to every lab node
        (`rhaas.lab.bootserver`). Idempotent.
        """
        record = self._require()
        head = record.headnodes.get(name)
        if head is None:
            index = len(record.headnodes) + 1
            port = f"{self.id}h{index}"
            head = HeadnodeRecord(name=name, netns=port, port=port, ip=ip, mac="")
            record.headnodes[name] = head
            self.save(record)
        if not netns.netns_exists(head.netns):
            self.say(f"headnode {name}: namespace {head.netns}, port {head.port}, address {head.ip}")
            netns.plug(self.ovs, self.bridge, netns=head.netns, port=head.port, address=head.ip)
            self.ovs.vsctl("set", "port", head.port, *_EMPTY_PORT)
        link = netns.run_in(head.netns, "cat", f"/sys/class/net/{NIC}/address").stdout.strip()
        head.mac = link
        self.save(record)
        with self.client(record) as client:
            if name not in client.node.list("all"):
                self.say(f"register: node {name} (headnode, mock OBM), {NIC} {head.mac}, port {head.port}")
                client.node.register(name, "mock", f"headnode-{name}", "lab", "lab")
                client.node.add_nic(name, NIC, head.mac)
                self._wire(client, record, head.port, name)
        if boot:
            self.boot_service(name)
        return head

    def boot_service(self, name: str) -> dict[str, int]:
        """Start (if not running) dnsmasq and the HTTP server of the test OS's network boot in headnode
        ``name``; their PIDs."""
        from rhaas.lab import images

        record = self._require()
        head = record.headnodes[name]
        running = {k: p for k, p in head.services.items() if procs.is_ours(p, self.workdir)}
        if {"dnsmasq", "http"} <= set(running):
            return running
        for key in ("dnsmasq", "http"):
            procs.stop(head.services.pop(key, None), self.workdir)
        # Server profiles need Debian's generic kernel and its drivers; virtio nodes the smaller cloud one.
        flavour = "cloud" if all(n.profile == "virtio" for n in record.nodes) else "generic"
        self.say(f"headnode {name}: building the test OS, {flavour} flavour (cached after the first time)")
        image = images.build_test_os(flavour=flavour)
        clients = [
            bootserver.BootClient(n.name, n.mac, bootserver.node_address(head.ip, i))
            for i, n in enumerate(record.nodes, start=1)
        ]
        directory = self.workdir / "headnodes" / name
        bootserver.write_files(directory, head.ip, image, clients)
        try:
            pids = bootserver.start(directory, head.netns, head.ip)
        except RuntimeError as exc:
            raise LabError(f"headnode {name}: the boot service did not start: {exc}") from exc
        head.services.update(pids)
        self.save(record)
        listing = ", ".join(f"{c.name}={c.address.split('/')[0]}" for c in clients)
        self.say(f"headnode {name}: DHCP + HTTP boot of the test OS for {listing}")
        return pids

    def exec(self, name: str, argv: list[str], detach: bool = False) -> int:
        """Run ``argv`` in headnode ``name``'s namespace: wait for it (its exit status), or with ``detach``
        start it as a service that ``down`` stops (its PID)."""
        record = self._require()
        head = record.headnodes.get(name)
        if head is None:
            raise LabError(f"no headnode {name}: run 'rhaas lab headnode {name}'")
        ip = find_binary("ip") or "ip"
        if not detach:
            return subprocess.run([ip, "netns", "exec", head.netns, *argv], check=False).returncode
        # The mark in its environment makes it the lab's (see rhaas.lab.procs), also after a crash.
        log = self.workdir / "headnodes" / name / f"service-{len(head.services) + 1}.log"
        wrapped = [ip, "netns", "exec", head.netns, "env", f"{procs.MARK_ENV}={self.workdir}", *argv]
        pid = procs.spawn(wrapped, log)
        head.services[f"service-{len(head.services) + 1}"] = pid
        self.save(record)
        return pid

    def _require(self) -> LabRecord:
        record = self.load()
        if record is None:
            raise LabError(f"no lab in {self.workdir}: run 'rhaas lab up' first")
        return record

    # -- status -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per node: power, firmware boots (and how many the guest caused), console log, BMC port,
        switch port, MAC; and the services."""
        record = self._require()
        nodes = []
        for node in record.nodes:
            try:
                bmc: BMCState | None = BMCState.read(state_file(self.nodes_dir, node.name))
            except (OSError, ValueError):
                bmc = None
            qemu = QemuNode(node.name, self.nodes_dir, disk_size=None)
            nodes.append(
                {
                    "node": node.name,
                    "power": "on" if qemu.is_running() else "off",
                    "qemu_pid": qemu.pid(),
                    "firmware_boots": bmc.boots if bmc else None,
                    "nmis": bmc.nmis if bmc else None,
                    "guest_resets": bmc.guest_resets if bmc else None,
                    "bmc": f"127.0.0.1:{node.bmc_port}",
                    "bmc_running": procs.is_ours(node.bmc_pid, self.workdir),
                    "console": str(qemu.console_log),
                    "switch_port": node.tap,
                    "mac": node.mac,
                    "profile": node.profile,
                    "post_seconds": node.post_seconds,
                    "cpu": node.cpu,
                    "bmc_protocol": node.bmc,
                }
            )
        heads = [
            {
                "headnode": h.name,
                "netns": h.netns,
                "ip": h.ip,
                "switch_port": h.port,
                "mac": h.mac,
                "services": {
                    k: {"pid": p, "running": procs.is_ours(p, self.workdir)} for k, p in h.services.items()
                },
            }
            for h in record.headnodes.values()
        ]
        server_running = procs.is_ours(record.server_pid, self.workdir)
        return {
            "workdir": record.workdir,
            "endpoint": record.endpoint,
            "server": {"pid": record.server_pid, "running": server_running} if record.server_port else None,
            "switch": {"name": record.switch, "bridge": record.bridge, "netns": record.netns,
                       "running": self.ovs.running()},
            "credentials": record.credentials,
            "nodes": nodes,
            "headnodes": heads,
        }  # fmt: skip

    def exports(self) -> str:
        """Shell lines that point rhaas's CLI at the base instance."""
        record = self._require()
        creds = self.credentials()
        if not creds.get("username"):
            return f"export RHAAS_ENDPOINT={record.endpoint}"
        return (
            f"export RHAAS_ENDPOINT={record.endpoint} RHAAS_USERNAME={creds['username']} "
            f"RHAAS_PASSWORD={creds['password']}"
        )

    # -- down -------------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop everything the lab started and remove its devices, namespaces and files. Idempotent, and
        works from whatever is left after a crash: PIDs are checked against the work directory, devices
        are found by the lab id."""
        record = self.load()
        for head in record.headnodes.values() if record else []:
            for pid in head.services.values():
                if procs.stop(pid, self.workdir):
                    self.say(f"stopped {head.name} service (pid {pid})")
        for node in record.nodes if record else []:
            if procs.stop(node.bmc_pid, self.workdir):
                self.say(f"stopped the BMC of {node.name} (pid {node.bmc_pid})")
        if self.nodes_dir.is_dir():
            for pidfile in self.nodes_dir.glob("*.pid"):
                qemu = QemuNode(pidfile.stem, self.nodes_dir, disk_size=None)
                if qemu.is_running():
                    qemu.stop()
                    self.say(f"stopped node {pidfile.stem}")
        if record is not None and procs.stop(record.server_pid, self.workdir):
            self.say(f"stopped the base instance (pid {record.server_pid})")
        # Anything else of ours (records lost in a crash), except Open vSwitch, which stops itself below.
        ovs_pids = {self.ovs.pid("ovsdb-server"), self.ovs.pid("ovs-vswitchd")}
        for pid in procs.ours_in(self.workdir):
            argv = " ".join(procs.cmdline(pid) or [])[:100]
            if pid not in ovs_pids and procs.stop(pid, self.workdir):
                self.say(f"stopped leftover process {pid}: {argv}")
        # Headnode namespaces (their veth pairs go with them) and the switch's namespace (taps too).
        for ns in _ip("netns", "list", check=False).split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(self.id) and name != self.ovs.netns:
                _ip("netns", "del", name, check=False)
                self.say(f"removed namespace {name}")
        if self.ovs.netns and netns.netns_exists(self.ovs.netns):
            for line in _ip("-n", self.ovs.netns, "-o", "link", "show", check=False).splitlines():
                dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
                if dev.startswith(self.id) and dev != self.bridge:
                    _ip("-n", self.ovs.netns, "link", "del", dev, check=False)
        self.ovs.stop()
        if self.ovs.netns and netns.netns_exists(self.ovs.netns):
            _ip("netns", "del", self.ovs.netns, check=False)
        self.say(f"stopped Open vSwitch and removed namespace {self.ovs.netns}")
        # Devices of ours that ended up in the host namespace (a half-made veth pair).
        for line in _ip("-o", "link", "show", check=False).splitlines():
            dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if dev.startswith(self.id):
                _ip("link", "del", dev, check=False)
                self.say(f"removed device {dev}")
        self._remove_files()

    def _remove_files(self) -> None:
        files = ("lab.json", "lab.tmp", "credentials.json", "server.log")
        for name in (*files, "rhaas.sqlite3", "rhaas.sqlite3-wal", "rhaas.sqlite3-shm"):
            (self.workdir / name).unlink(missing_ok=True)
        for name in ("nodes", "headnodes", "ovs"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()
        self.say(f"removed the lab's files in {self.workdir}")
