"""A private Open vSwitch in userspace: the lab's "physical switch".

`OVSDaemon` runs its own ``ovsdb-server`` and ``ovs-vswitchd`` with every file (database, sockets,
pidfiles, logs) in one work directory, so it never touches the system's Open vSwitch in
``/var/run/openvswitch``. Bridges use the userspace datapath (``datapath_type=netdev``): the host
kernel needs no openvswitch module.

Facts found by hand:

- ``OVS_RUNDIR`` must point at the work directory: ovs-vswitchd creates a ``<bridge>.mgmt`` and
  ``<bridge>.snoop`` socket per bridge there, and fails to (logging errors) when it is the missing
  ``/var/run/openvswitch``. With it set, that directory need not exist.
- The userspace datapath makes *persistent* tap devices (``ovs-netdev`` and one per bridge and internal
  port). A plain SIGTERM leaves them behind; ``ovs-appctl exit --cleanup`` removes them, so `stop` asks
  for that first.
- All userspace datapaths of one network namespace share the one ``ovs-netdev`` tap: while one
  ovs-vswitchd has bridges, a second one's bridges fail (only its log says so; `add_bridge` checks).
  Give each daemon its own namespace (``netns=``) to run several at once, e.g. tests beside a lab. Its
  ports must then live in that namespace too (`rhaas.lab.netns` puts them there; a QEMU tap can be
  moved there with ``ip link set <tap> netns <ns>`` and keeps working).

This module starts and stops daemons and creates bridges; it must not program VLANs (that is the OVS
switch driver's job, `rhaas.drivers.switch.ovs`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from rhaas.procs import find_binary

#: Where Debian's openvswitch-common puts the schema (``OVS_PKGDATADIR`` overrides it).
DEFAULT_PKGDATADIR = "/usr/share/openvswitch"
#: Linux interface names (and so userspace bridge names) are at most 15 bytes.
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}\Z")
#: sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class OVSDaemonError(RuntimeError):
    """The private Open vSwitch could not be started, stopped or configured."""


def check_ifname(name: str) -> None:
    """Raise ValueError unless ``name`` can be a Linux interface name."""
    if not _IFNAME.match(name):
        raise ValueError(f"{name!r} is not a usable interface name (1-15 of A-Z a-z 0-9 _ . -)")


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (its parent may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _other_vswitchd() -> bool:
    """True if some ovs-vswitchd runs on this host (ours is stopped when this is asked)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "ovs-vswitchd" and _pid_alive(int(comm.parent.name)):
                return True
    return False


def _wait_gone(pid: int, deadline: float) -> bool:
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class OVSDaemon:
    """One private ovsdb-server + ovs-vswitchd pair living in ``workdir``.

    ``workdir`` should be short: the database socket inside it must fit in an AF_UNIX path (107 bytes).
    With ``netns``, ovs-vswitchd runs in that network namespace (created by `start` if missing, deleted
    by `stop`), and so do its bridges and ports; the database and ovs-vsctl work from anywhere.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], *, netns: str | None = None, timeout: float = 10.0
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.netns = netns
        self.timeout = timeout
        self.db_file = self.workdir / "conf.db"
        self.db_socket = self.workdir / "db.sock"
        pkgdatadir = os.environ.get("OVS_PKGDATADIR", DEFAULT_PKGDATADIR)
        self.schema = Path(pkgdatadir) / "vswitch.ovsschema"
        self._env = {
            **os.environ,
            "OVS_RUNDIR": str(self.workdir),
            "OVS_DBDIR": str(self.workdir),
            "OVS_LOGDIR": str(self.workdir),
            "OVS_SYSCONFDIR": str(self.workdir),
            "OVS_PKGDATADIR": pkgdatadir,
        }

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The database as ovs-vsctl's ``--db=`` takes it."""
        return f"unix:{self.db_socket}"

    def _pidfile(self, daemon: str) -> Path:
        return self.workdir / f"{daemon}.pid"

    def _ctl(self, daemon: str) -> Path:
        return self.workdir / f"{daemon}.ctl"

    def pid(self, daemon: str) -> int | None:
        """The PID in ``daemon``'s pidfile if that process runs and is ours (not a reused PID)."""
        try:
            pid = int(self._pidfile(daemon).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        if not _pid_alive(pid) or f"{self.workdir}/".encode() not in cmdline:
            return None
        return pid

    @property
    def _seconds(self) -> int:
        """The timeout as the whole seconds OVS tools take."""
        return max(1, round(self.timeout))

    # -- running programs ------------------------------------------------------------------------------
    def _run(self, *argv: str, timeout: float | None = None) -> str:
        binary = find_binary(argv[0])
        if binary is None:
            raise OVSDaemonError(f"{argv[0]} is not installed (Debian: openvswitch-switch)")
        try:
            done = subprocess.run(
                [binary, *argv[1:]],
                env=self._env,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OVSDaemonError(f"{argv[0]} took more than {exc.timeout} s: {' '.join(argv)}") from exc
        if done.returncode != 0:
            output = done.stderr.strip() or done.stdout.strip()
            raise OVSDaemonError(f"{' '.join(argv)} failed (exit {done.returncode}): {output}")
        return done.stdout

    def ip(self, *args: str) -> str:
        """Run ``ip`` in the daemon's network namespace."""
        return self._run("ip", *(["-n", self.netns] if self.netns else []), *args)

    def link_exists(self, dev: str) -> bool:
        """True if network device ``dev`` exists in the daemon's network namespace."""
        if self.netns is None:
            return Path("/sys/class/net", dev).exists()
        try:
            self.ip("link", "show", "dev", dev)
        except OVSDaemonError:
            return False
        return True

    def vsctl(self, *args: str) -> str:
        """Run ``ovs-vsctl`` against this daemon's database; its output, or OVSDaemonError."""
        return self._run("ovs-vsctl", f"--db={self.db_url}", f"--timeout={self._seconds}", *args)

    def appctl(self, daemon: str, *args: str) -> str:
        """Run ``ovs-appctl`` against ``daemon`` ("ovsdb-server" or "ovs-vswitchd")."""
        return self._run("ovs-appctl", "-t", str(self._ctl(daemon)), f"--timeout={self._seconds}", *args)

    # -- lifecycle -------------------------------------------------------------------------------------
    def running(self) -> bool:
        """True if both daemons run and the database answers."""
        if self.pid("ovsdb-server") is None or self.pid("ovs-vswitchd") is None:
            return False
        try:
            self._run("ovs-vsctl", f"--db={self.db_url}", "--timeout=2", "--no-wait", "show", timeout=3)
        except OVSDaemonError:
            return False
        return True

    def start(self) -> None:
        """Start both daemons (idempotent).

        If they already run from this work directory they are reused. Leftovers of a crash (one daemon
        dead, stale sockets or pidfiles) are stopped and cleared; the database is kept, so bridges and
        port settings come back as they were, like a switch after a power cut.
        """
        if self.running():
            return
        for path in (self.db_socket, self._ctl("ovs-vswitchd")):
            if len(str(path)) > _MAX_SOCKET_PATH:
                raise OVSDaemonError(f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop_daemons()
        self._remove_runtime_files()
        if self.db_file.exists():
            try:
                self._run("ovsdb-tool", "db-name", str(self.db_file))
            except OVSDaemonError:
                self.db_file.unlink()
        if not self.db_file.exists():
            self._run("ovsdb-tool", "create", str(self.db_file), str(self.schema))
        common = ["--detach", "--no-chdir", "--overwrite-pidfile"]
        # --detach returns once the daemon is ready: the database socket listens, the bridges are up.
        self._run(
            "ovsdb-server",
            str(self.db_file),
            f"--remote=punix:{self.db_socket}",
            f"--pidfile={self._pidfile('ovsdb-server')}",
            f"--unixctl={self._ctl('ovsdb-server')}",
            f"--log-file={self.workdir / 'ovsdb-server.log'}",
            *common,
        )
        self.vsctl("--no-wait", "init")
        vswitchd = ["ovs-vswitchd"]
        if self.netns is not None:
            if not Path("/run/netns", self.netns).exists():
                self._run("ip", "netns", "add", self.netns)
            self.ip("link", "set", "lo", "up")
            vswitchd = ["ip", "netns", "exec", self.netns, find_binary("ovs-vswitchd") or "ovs-vswitchd"]
        self._run(
            *vswitchd,
            self.db_url,
            f"--pidfile={self._pidfile('ovs-vswitchd')}",
            f"--unixctl={self._ctl('ovs-vswitchd')}",
            f"--log-file={self.workdir / 'ovs-vswitchd.log'}",
            *common,
        )
        if not self.running():
            raise OVSDaemonError(f"Open vSwitch in {self.workdir} did not come up; see its logs there")

    def stop(self) -> None:
        """Stop both daemons, remove their bridges' tap devices and every file in the work directory.

        Idempotent. The work directory itself is removed when nothing else is left in it.
        """
        self._stop_daemons()
        if self.netns is not None and Path("/run/netns", self.netns).exists():
            self._run("ip", "netns", "del", self.netns)
        self._remove_runtime_files()
        for name in ("conf.db", ".conf.db.~lock~", "ovsdb-server.log", "ovs-vswitchd.log"):
            (self.workdir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()

    def _stop_daemons(self) -> None:
        taps: list[str] = []
        if self.pid("ovsdb-server") is not None:
            with contextlib.suppress(OVSDaemonError):
                found = self.vsctl(
                    "--no-wait", "--bare", "--columns=name", "find", "interface", "type=internal"
                )
                taps = found.split()
        # ovs-vswitchd first, so that it removes its datapath and tap devices while it still can.
        for daemon, cleanup in (("ovs-vswitchd", ["exit", "--cleanup"]), ("ovsdb-server", ["exit"])):
            pid = self.pid(daemon)
            if pid is None:
                continue
            with contextlib.suppress(OVSDaemonError):
                self.appctl(daemon, *cleanup)
            if _wait_gone(pid, time.monotonic() + self.timeout):
                continue
            self._kill(pid)
        # A killed or crashed ovs-vswitchd leaves its persistent taps behind. In the host namespace
        # ``ovs-netdev`` may belong to another running ovs-vswitchd: leave it alone then.
        if self.netns is not None or not _other_vswitchd():
            taps.append("ovs-netdev")
        for tap in taps:
            if _IFNAME.match(tap) and self.link_exists(tap):
                with contextlib.suppress(OVSDaemonError):
                    self.ip("link", "del", tap)

    def _kill(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, time.monotonic() + self.timeout):
                return
        raise OVSDaemonError(f"process {pid} of Open vSwitch in {self.workdir} survived SIGKILL")

    def _remove_runtime_files(self) -> None:
        for daemon in ("ovsdb-server", "ovs-vswitchd"):
            self._pidfile(daemon).unlink(missing_ok=True)
            self._ctl(daemon).unlink(missing_ok=True)
        self.db_socket.unlink(missing_ok=True)
        if self.workdir.is_dir():
            for path in self.workdir.glob("*.mgmt"):
                path.unlink(missing_ok=True)
            for path in self.workdir.glob("*.snoop"):
                path.unlink(missing_ok=True)

    # -- bridges ---------------------------------------------------------------------------------------
    def add_bridge(self, name: str) -> None:
        """Create userspace bridge ``name`` (idempotent); it is a network device in the daemon's namespace."""
        check_ifname(name)
        self.vsctl("--may-exist", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev")
        # ovs-vsctl waited for ovs-vswitchd, but a datapath that failed to open shows only in the log and
        # in the bridge's own interface having no OpenFlow port number.
        ofport = self.vsctl("get", "interface", name, "ofport").strip()
        if ofport in ("[]", "-1"):
            self.vsctl("--if-exists", "del-br", name)
            raise OVSDaemonError(
                f"bridge {name} did not come up; does another userspace Open vSwitch with bridges in the "
                f"same network namespace hold ovs-netdev? See {self.workdir / 'ovs-vswitchd.log'}"
            )

    def del_bridge(self, name: str) -> None:
        """Delete bridge ``name`` and its ports (idempotent)."""
        check_ifname(name)
        self.vsctl("--if-exists", "del-br", name)

    def bridges(self) -> list[str]:
        """The bridges in this daemon's database."""
        return self.vsctl("list-br").split()

    def __enter__(self) -> OVSDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
