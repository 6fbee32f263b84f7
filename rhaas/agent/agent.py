"""The rhaas agent: checks the node in, polls for work, deploys and wipes it (standard library only).

It runs as the main program of the FPBL's init (``python3 -m rhaas.agent.agent``) and reads its settings
from the kernel command line::

    rhaas.agent=http://10.0.2.2:8080   base URL of the agent API
    rhaas.node=n1                      this node's name
    rhaas.secret=...                   per-node secret (one-time: the customer can read it, see the docs)
    rhaas.ip=10.0.2.15/24 rhaas.gw=10.0.2.2   static address (the init script configures eth0)
    rhaas.ip=10.0.0.11 rhaas.netmask=255.255.255.0   the same, as a network boot's iPXE script says it
    rhaas.mode=ready|return            return: booted as the crash kernel after an NMI
    rhaas.memmap=...                   the node's full memory map (set by the agent itself, see kexec.py)

The protocol is HTTP + JSON with ``Authorization: Bearer <secret>`` (docs/fast-provisioning.md)::

    POST {agent}/agent/v1/nodes/{node}/checkin  {"mode", "boot_id", "kernel", "memory_kb", "disks"}
    GET  {agent}/agent/v1/nodes/{node}/work     {"action": "wait"|"deploy"|"wipe", ...}
    POST {agent}/agent/v1/nodes/{node}/report   {"job", "phase", "state", "at", "detail", "progress"?}

The agent never exits on an error: it reports it and keeps polling, so that the node stays recoverable.
Between polls it sleeps for the ``poll_after`` the server asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, NamedTuple

from rhaas.agent import disk as disks
from rhaas.agent import kexec, memory, wire

API_PREFIX = "/agent/v1/nodes"
HTTP_TIMEOUT = 30.0
MAX_POLL = 300.0
MIN_POLL = 0.2
#: Seconds the server may hold a request for work while there is none (a long poll: work queued for the
#: node answers it at once). Below HTTP_TIMEOUT.
WORK_WAIT = 20
REPORT_EVERY = 1.0  # seconds between progress reports
DOWNLOAD_CHUNK = 1 << 20
#: Deploying from the return FPBL (the crash kernel's ~340 MB): what the static return payload takes, and
#: what must stay free besides. A deploy that needs more restores the node's memory first.
STATIC_PAYLOAD_BYTES = 48 << 20
DEPLOY_HEADROOM_BYTES = 32 << 20
#: The deploy-independent part of the return payload, under System.tmp (see `Agent.static_payload`).
STATIC_PAYLOAD = "return-static.cpio"


class AgentError(RuntimeError):
    """A job step failed; ``phase`` says which. The message is what the server is told."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class ProtocolError(ValueError):
    """The server sent something this agent does not understand."""


class ServerError(OSError):
    """The agent API answered with an unexpected HTTP status (``status``; 0 if it was not HTTP)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def log(message: str) -> None:
    """One line on the console: there is nowhere else to log to in an FPBL."""
    print(f"RHAAS-AGENT {message}", flush=True)


# --- settings ----------------------------------------------------------------------------------------


class Settings(NamedTuple):
    agent: str
    node: str
    secret: str
    mode: str = "ready"
    ip: str | None = None
    gw: str | None = None
    memmap: str | None = None
    cmdline: str = ""

    @property
    def crashed(self) -> bool:
        """Whether this kernel is the crash kernel (it then sees only the reserved memory)."""
        return "elfcorehdr=" in self.cmdline

    def passed_on(self) -> list[str]:
        """The settings the next FPBL needs, as kernel parameters (without mode)."""
        args = [f"rhaas.agent={self.agent}", f"rhaas.node={self.node}", f"rhaas.secret={self.secret}"]
        args += [f"rhaas.{k}={v}" for k, v in (("ip", self.ip), ("gw", self.gw)) if v]
        return args


def parse_cmdline(text: str) -> Settings:
    """The agent's settings from a kernel command line. Raises ValueError if one is missing or bad."""
    found: dict[str, str] = {}
    for arg in text.split():
        if arg.startswith("rhaas.") and "=" in arg:
            key, value = arg[len("rhaas.") :].split("=", 1)
            found[key] = value
    missing = [k for k in ("agent", "node", "secret") if not found.get(k)]
    if missing:
        raise ValueError("the kernel command line lacks " + ", ".join(f"rhaas.{k}=" for k in missing))
    url = urllib.parse.urlsplit(found["agent"])
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"rhaas.agent={found['agent']} is not an http:// URL")
    mode = found.get("mode", "ready")
    if mode not in ("ready", "return"):
        raise ValueError(f"rhaas.mode={mode} is neither ready nor return")
    if found.get("memmap"):
        kexec.parse_memmap(found["memmap"])
    ip = found.get("ip") or None
    if ip and "/" not in ip and found.get("netmask"):  # iPXE's ${ip} and ${netmask} (network boot)
        import ipaddress  # only here: a network boot's FPBL needs it once, a return FPBL never

        try:
            ip = str(ipaddress.ip_interface(f"{ip}/{found['netmask']}"))
        except ValueError as exc:
            raise ValueError(f"rhaas.ip={ip} rhaas.netmask={found['netmask']}: {exc}") from None
    return Settings(
        agent=found["agent"].rstrip("/"), node=found["node"], secret=found["secret"], mode=mode,
        ip=ip, gw=found.get("gw") or None, memmap=found.get("memmap"),
        cmdline=text.strip(),
    )  # fmt: skip


# --- work --------------------------------------------------------------------------------------------


class Artifact(NamedTuple):
    url: str
    sha256: str
    size: int


class Wait(NamedTuple):
    poll_after: float


class Deploy(NamedTuple):
    job: str
    kernel: Artifact
    initrd: Artifact
    disk: Artifact | None
    cmdline: str


class Wipe(NamedTuple):
    job: str
    policy: str
    scrub_memory: bool = False


Work = Wait | Deploy | Wipe


def _artifact(data: Any, what: str) -> Artifact:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not an object")
    url, sha, size = data.get("url"), data.get("sha256"), data.get("size")
    if not isinstance(url, str) or not url:
        raise ProtocolError(f"{what}.url is missing")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise ProtocolError(f"{what}.sha256 is not a SHA-256 hex digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{what}.size is not a byte count")
    return Artifact(url, sha.lower(), size)


def parse_work(data: Any) -> Work:
    """One answer of GET .../work. Raises `ProtocolError` if it is malformed."""
    if not isinstance(data, dict):
        raise ProtocolError("work is not a JSON object")
    action = data.get("action")
    if action == "wait":
        poll = data.get("poll_after", 5)
        if not isinstance(poll, int | float) or isinstance(poll, bool):
            raise ProtocolError("poll_after is not a number")
        return Wait(min(MAX_POLL, max(MIN_POLL, float(poll))))
    job = data.get("job")
    if not isinstance(job, str) or not job:
        raise ProtocolError(f"{action} work has no job id")
    if action == "deploy":
        cmdline = data.get("cmdline", "")
        if not isinstance(cmdline, str):
            raise ProtocolError("cmdline is not a string")
        image = data.get("disk")
        return Deploy(
            job, _artifact(data.get("kernel"), "kernel"), _artifact(data.get("initrd"), "initrd"),
            None if image is None else _artifact(image, "disk"), cmdline,
        )  # fmt: skip
    if action == "wipe":
        policy = data.get("policy")
        if policy not in disks.WIPE_POLICIES:
            raise ProtocolError(f"unknown wipe policy {policy!r}")
        scrub = data.get("scrub_memory", False)
        if not isinstance(scrub, bool):
            raise ProtocolError("scrub_memory is not true or false")
        return Wipe(job, policy, scrub)
    raise ProtocolError(f"unknown action {action!r}")


# --- the agent API -----------------------------------------------------------------------------------


class Api:
    """The agent API of one node: JSON requests and streamed downloads over plain HTTP."""

    def __init__(self, settings: Settings, timeout: float = HTTP_TIMEOUT) -> None:
        self.base = settings.agent
        self.node_path = f"{API_PREFIX}/{urllib.parse.quote(settings.node, safe='')}"
        self.headers = {"Authorization": f"Bearer {settings.secret}"}
        self.timeout = timeout

    def resolve(self, url: str) -> str:
        """An artifact URL: absolute, or relative to the agent base URL."""
        return urllib.parse.urljoin(self.base + "/", url)

    def _open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> wire.Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ProtocolError(f"cannot fetch {url}: only http:// URLs are supported")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return wire.request(method, parts.hostname, parts.port or 80, target, headers, body, self.timeout)

    def call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        headers = dict(self.headers, Accept="application/json")
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            with self._open(method, f"{self.base}{self.node_path}/{name}", headers, payload) as response:
                data = response.read()
        except wire.HttpError as exc:
            raise ServerError(f"{method} {name}: {exc}") from exc
        if response.status != 200:
            raise ServerError(f"{method} {name}: HTTP {response.status}: {data[:200]!r}", response.status)
        try:
            return json.loads(data or b"{}")
        except ValueError as exc:
            raise ProtocolError(f"{method} {name}: not JSON: {data[:200]!r}") from exc

    def download(
        self, artifact: Artifact, sink: Callable[[bytes], None], progress: Callable[[int, int], None]
    ) -> str:
        """Stream ``artifact`` into ``sink``; its SHA-256. Raises `AgentError` (phase 'download') if it is
        not ``artifact.size`` bytes long."""
        digest = hashlib.sha256()
        done = 0
        with self._open("GET", self.resolve(artifact.url), self.headers) as response:
            if response.status != 200:
                raise AgentError("download", f"GET {artifact.url}: HTTP {response.status}{_why(response)}")
            while chunk := response.read(DOWNLOAD_CHUNK):
                done += len(chunk)
                if done > artifact.size:
                    raise AgentError("download", f"{artifact.url} is longer than {artifact.size} bytes")
                digest.update(chunk)
                sink(chunk)
                progress(done, artifact.size)
        if done != artifact.size:
            raise AgentError("download", f"{artifact.url} is {done} bytes, not {artifact.size}")
        return digest.hexdigest()


def _why(response: wire.Response) -> str:
    """``: <msg>`` of a refusal in HIL's error shape, or nothing."""
    try:
        msg = json.loads(response.read(4096))["msg"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f": {str(msg)[:300]}"


# --- what the agent does to the machine (the seam tests replace) ---------------------------------------


class System:
    """The node: its files, facts, and kexec. Paths are parameters so tests can use a directory."""

    def __init__(self, root: str = "/", tmp: str = "/tmp/rhaas") -> None:
        self.root = root
        self.tmp = tmp
        self.fpbl_dir = os.path.join(root, kexec.FPBL_DIR.lstrip("/"))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def cmdline(self) -> str:
        with open(self.path("proc", "cmdline")) as f:
            return f.read().strip()

    def _meminfo(self, key: str) -> int | None:
        """A /proc/meminfo line's kB (None if this kernel does not say)."""
        with open(self.path("proc", "meminfo")) as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
        return None

    def memory_kb(self) -> int:
        return self._meminfo("MemTotal") or 0

    def iomem(self) -> str:
        with open(self.path("proc", "iomem")) as f:
            return f.read()

    def memory_available_kb(self) -> int | None:
        """MemAvailable: what this kernel can still give (None if it does not say)."""
        return self._meminfo("MemAvailable")

    def kernel(self) -> str:
        return os.uname().release

    def disks(self) -> list[disks.Disk]:
        return disks.list_disks(self.path("sys"), self.path("dev"))

    def memmap(self) -> list[kexec.MemRange]:
        return kexec.read_firmware_memmap(self.path("sys"))

    def publish_memmap(self, ranges: list[kexec.MemRange]) -> None:
        """Show ``ranges`` as /sys/firmware/memmap (a tmpfs over it), where kexec-tools reads the map it
        gives the next kernel: after a return, the real one shows the crash kernel's small map."""
        target = self.path("sys", "firmware", "memmap")
        _run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "rhaas-memmap", target])
        kexec.write_memmap_dir(target, ranges)

    def kexec_load(self, kernel: str, initrd: str, cmdline: str) -> None:
        _run(["kexec", "-i", "-l", kernel, f"--initrd={initrd}", f"--append={cmdline}"])

    def kexec_exec(self) -> None:
        os.sync()
        _run(["kexec", "-e"])  # returns only if the jump failed
        raise OSError("kexec -e returned")


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{cmd[0]} {cmd[1]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


# --- the agent ---------------------------------------------------------------------------------------


def new_boot_id() -> str:
    """An id of this boot: the kernel's own, which, unlike ``os.urandom``, does not wait for the random
    pool to be ready (seconds after boot under TCG)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return os.urandom(8).hex()


class Agent:
    """The agent of one node: ``run`` checks in and does the work the server hands out."""

    def __init__(
        self, settings: Settings, api: Api, system: System, clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep, boot_id: str | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.api = api
        self.system = system
        self.clock = clock
        self.sleep = sleep
        self.boot_id = boot_id or new_boot_id()
        #: The node's full memory map, to restore after a return (from rhaas.memmap= or the firmware).
        self.memmap: list[kexec.MemRange] = []
        self._payload_lock = threading.Lock()
        self._memmap_published = False
        self._long_poll = True

    # --- reporting ---

    def report(
        self, job: str, phase: str, state: str, detail: str = "", progress: tuple[int, int] | None = None
    ) -> None:
        body: dict[str, Any] = {"job": job, "phase": phase, "state": state, "at": self.clock()}
        body["detail"] = detail
        if progress is not None:
            body["progress"] = {"done": progress[0], "total": progress[1]}
        if state != "start" or progress is None:
            log(f"report job={job} {phase} {state} {detail}".rstrip())
        try:
            self.api.call("POST", "report", body)
        except (OSError, ValueError) as exc:  # the job goes on; the server will see the next report
            log(f"report {phase} {state} not delivered: {exc}")

    def _progress(self, job: str, phase: str) -> Callable[[int, int], None]:
        last = [0.0]

        def tell(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= REPORT_EVERY:
                last[0] = now
                self.report(job, phase, "start", progress=(done, total))

        return tell

    # --- the loop ---

    def checkin(self) -> None:
        """Check in, retrying with back-off until the server answers."""
        body = {
            "mode": self.settings.mode, "boot_id": self.boot_id, "kernel": self.system.kernel(),
            "memory_kb": self.system.memory_kb(),
            "disks": [{"name": d.name, "size": d.size} for d in self.system.disks()],
        }  # fmt: skip
        delay = 1.0
        while True:
            try:
                self.api.call("POST", "checkin", body)
                log(f"checkin mode={self.settings.mode} memory_kb={body['memory_kb']} ok")
                return
            except (OSError, ValueError) as exc:
                log(f"checkin failed ({exc}); again in {delay:.0f} s")
                self.sleep(delay)
                delay = min(30.0, delay * 2)

    def run(self, rounds: int | None = None) -> None:
        """Check in, then poll for work and do it; forever, or ``rounds`` polls (for tests)."""
        self.memmap = self._full_memmap()
        if self.settings.memmap and not self.settings.crashed:
            self._publish_memmap()
        self.checkin()
        if not self.settings.crashed:
            self.prepare()  # while idle: a deploy then only copies the return payload
        delay = 1.0
        while rounds is None or rounds > 0:
            if rounds is not None:
                rounds -= 1
            try:
                path = f"work?wait={WORK_WAIT}" if self._long_poll else "work"
                work = parse_work(self.api.call("GET", path))
                delay = 1.0
            except (OSError, ValueError) as exc:
                if self._long_poll and isinstance(exc, ServerError) and exc.status == 400:
                    self._long_poll = False  # a server that does not hold requests: poll it
                    log(f"the server refuses long polls ({exc}); polling instead")
                    continue
                log(f"polling for work failed ({exc}); again in {delay:.0f} s")
                self.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            if isinstance(work, Wait):
                self.sleep(work.poll_after)
            else:
                self.do(work)

    def _publish_memmap(self) -> None:
        """Show kexec-tools the node's full memory map, once: it hands the next kernel the map it reads."""
        if self._memmap_published:
            return
        try:
            self.system.publish_memmap(self.memmap)
            self._memmap_published = True
        except OSError as exc:
            log(f"cannot publish the full memory map ({exc}): a customer kernel may see less memory")

    def _full_memmap(self) -> list[kexec.MemRange]:
        if self.settings.memmap:
            return kexec.parse_memmap(self.settings.memmap)
        if self.settings.crashed:
            return []  # this kernel's map is the crash region: useless for restoring
        try:
            return self.system.memmap()
        except (OSError, ValueError) as exc:
            log(f"cannot read the memory map ({exc}): a return will not restore memory")
            return []

    def do(self, work: Deploy | Wipe) -> None:
        """Do one job. Every failure is reported; none escapes (the node must stay reachable)."""
        phase = ["deploy" if isinstance(work, Deploy) else "wipe"]
        try:
            if isinstance(work, Deploy):
                self.deploy(work, phase)
            else:
                self.wipe(work, phase)
        except AgentError as exc:
            self.report(work.job, exc.phase, "error", str(exc))
        except Exception as exc:  # noqa: BLE001 - anything at all: report it, keep polling
            self.report(work.job, phase[0], "error", f"{type(exc).__name__}: {exc}")

    # --- deploy ---

    def deploy(self, job: Deploy, phase: list[str]) -> None:
        if self.settings.crashed:
            phase[0] = "restore-memory"
            if not self.memmap:
                raise AgentError(phase[0], "no rhaas.memmap= on the command line: the customer would get "
                                 "only the crash region's memory")  # fmt: skip
            need, available = self._memory_for(job)
            if available is None or need > available:
                # The full FPBL checks in and is handed this deploy again (the server expects it).
                have = "unknown" if available is None else f"{available >> 20} MiB"
                why = f"the deploy needs {need >> 20} MiB, the return FPBL has {have} available"
                self._restore_memory(job.job, why)
            self._publish_memmap()
        os.makedirs(self.system.tmp, exist_ok=True)
        kernel = os.path.join(self.system.tmp, "kernel")
        initrd = os.path.join(self.system.tmp, "initrd")
        for name, artifact, path in (("kernel", job.kernel, kernel), ("initrd", job.initrd, initrd)):
            phase[0] = f"download-{name}"
            self.report(job.job, phase[0], "start", artifact.url)
            with open(path, "wb") as out:
                digest = self._download(job.job, phase[0], artifact, out.write)
            self.report(job.job, phase[0], "done", f"{artifact.size} bytes")
            self._check(job.job, name, artifact, digest, path)

        writer: disks.ImageWriter | None = None
        phase[0] = "download-disk"
        if job.disk is None:
            self.report(job.job, phase[0], "done", "no disk image")
        else:
            target = self._target_disk()
            self.report(job.job, phase[0], "start", f"{job.disk.url} -> {target.path}")
            try:
                writer = disks.ImageWriter(target.path, target.size, job.disk.size)
            except disks.DiskError as exc:
                raise AgentError(phase[0], str(exc)) from exc
            try:
                digest = self._download(job.job, phase[0], job.disk, writer.write)
                writer.finish()
            except BaseException:
                writer.close()
                self._scrub(target)
                raise
            self.report(job.job, phase[0], "done", f"{job.disk.size} bytes")
            self._check(job.job, "disk", job.disk, digest, None, target)

        phase[0] = "verify"
        self.report(job.job, phase[0], "done", "sha256 and size match")
        phase[0] = "write-disk"
        if writer is None:
            self.report(job.job, phase[0], "done", "no disk image")
        else:
            detail = f"{writer.written} bytes written, {writer.skipped} zero bytes skipped (already zero)"
            self.report(job.job, phase[0], "done", detail)

        phase[0] = "kexec"
        self.report(job.job, phase[0], "start", "arming the return path")
        self._arm_return(kernel, initrd, job.cmdline)
        self.report(job.job, phase[0], "done", "jumping into the customer kernel")
        self.system.kexec_exec()

    def _memory_for(self, job: Deploy) -> tuple[int, int | None]:
        """Bytes a deploy needs in this (crash) kernel, and bytes available: at ``kexec -l`` the kernel
        and the initrd with the return payload are in tmpfs, in kexec's buffers and in the kernel's
        segment pages (three copies), less the prepared return payload, which is counted as used
        already once made, plus room to spare."""
        static = os.path.join(self.system.tmp, STATIC_PAYLOAD)
        made = os.path.getsize(static) if os.path.exists(static) else 0
        files = job.kernel.size + job.initrd.size + (made or STATIC_PAYLOAD_BYTES)
        available = self.system.memory_available_kb()
        return 3 * files - made + DEPLOY_HEADROOM_BYTES, None if available is None else available * 1024

    def _download(self, job: str, phase: str, artifact: Artifact, sink: Callable[[bytes], None]) -> str:
        try:
            return self.api.download(artifact, sink, self._progress(job, phase))
        except AgentError as exc:
            raise AgentError(phase, str(exc)) from exc
        except OSError as exc:
            raise AgentError(phase, f"downloading {artifact.url} failed: {exc}") from exc

    def _check(
        self, job: str, name: str, artifact: Artifact, digest: str, path: str | None,
        target: disks.Disk | None = None,
    ) -> None:  # fmt: skip
        if digest == artifact.sha256:
            return
        if path is not None:
            os.unlink(path)  # never used: a file that does not match is not kept either
        if target is not None:
            self._scrub(target)
        raise AgentError("verify", f"{name}: sha256 {digest} is not the expected {artifact.sha256}; refused")

    def _scrub(self, target: disks.Disk) -> None:
        """Erase a half-written or unverified image, so that nothing boots from it."""
        try:
            disks.wipe(target, "metadata")
        except OSError as exc:
            log(f"scrubbing {target.path} failed: {exc}")

    def _target_disk(self) -> disks.Disk:
        found = self.system.disks()
        for d in found:
            if d.name == "vda":
                return d
        if not found:
            raise AgentError("download-disk", "this node has no disk")
        return found[0]

    def static_payload(self) -> str:
        """The deploy-independent part of the return payload, made on first use (`prepare` makes it
        while the node idles, so that a deploy finds it ready)."""
        with self._payload_lock:
            path = os.path.join(self.system.tmp, STATIC_PAYLOAD)
            if not os.path.exists(path):
                os.makedirs(self.system.tmp, exist_ok=True)
                files = kexec.FpblFiles.load(self.system.fpbl_dir)
                kexec.prepare_static_payload(path, files, self.system.fpbl_dir)
            return path

    def prepare(self) -> None:
        """Make the static return payload in the background (a deploy would otherwise wait for it)."""

        def make() -> None:
            try:
                self.static_payload()
            except Exception as exc:  # noqa: BLE001 - a deploy will try again and report what fails
                log(f"cannot prepare the return payload now ({exc}); a deploy will try again")

        threading.Thread(target=make, name="prepare-return", daemon=True).start()

    def _arm_return(self, kernel: str, initrd: str, cmdline: str) -> None:
        """Load the customer kernel with the return payload appended to its initrd."""
        static = self.static_payload()
        crash = [*kexec.inherited_args(self.settings.cmdline), *kexec.CRASH_ARGS, "rhaas.mode=return"]
        crash += self.settings.passed_on()
        if self.memmap:
            crash.append(f"rhaas.memmap={kexec.format_memmap(self.memmap)}")
        new_cmdline, next_init = kexec.customer_cmdline(cmdline)
        combined = os.path.join(self.system.tmp, "initrd.combined")
        with self._payload_lock:  # copied: not needed again unless this deploy fails (then made again)
            kexec.append_payload(initrd, combined, static, " ".join(crash), next_init)
            os.unlink(static)
        os.unlink(initrd)
        self.system.kexec_load(kernel, combined, new_cmdline)

    # --- wipe and return ---

    def wipe(self, job: Wipe, phase: list[str]) -> None:
        found = self.system.disks()
        for target in found:
            phase[0] = "wipe"
            self.report(job.job, phase[0], "start", f"{target.path} {job.policy}")
            wiped = disks.wipe(target, job.policy, self._progress(job.job, phase[0]))
            zeroed = sum(n for _, n in wiped.regions)
            self.report(job.job, phase[0], "done", f"{target.path}: {zeroed} bytes {wiped.how}")
            phase[0] = "verify-wipe"
            self.report(job.job, phase[0], "start", target.path)
            try:
                read = disks.verify_zero(target.path, wiped.regions, self._progress(job.job, phase[0]))
            except disks.DiskError as exc:
                raise AgentError(phase[0], str(exc)) from exc
            self.report(job.job, phase[0], "done", f"{target.path}: {read} bytes read back, all zero")
        if not found:
            self.report(job.job, "wipe", "done", "no disks")
        if job.scrub_memory:
            phase[0] = "scrub-memory"
            self.report(job.job, phase[0], "start", "the previous kernel's memory")
            self.report(job.job, phase[0], "done", self._scrub_memory(job.job))

        phase[0] = "restore-memory"
        if not self.settings.crashed:
            self.report(job.job, phase[0], "done", "not needed: this kernel has all the memory")
        elif not self.memmap:
            raise AgentError(phase[0], "no rhaas.memmap= on the command line: cannot restore memory")
        else:
            # No second boot: the node idles in this kernel, and the next customer's kernel gets the full
            # memory map from it (a deploy too large for this kernel's memory restores it first).
            usable = kexec.usable_bytes(self.memmap)
            self.report(job.job, phase[0], "done", f"at the next deploy: {usable} bytes usable")
        self.report(job.job, "ready", "done", f"memory_kb={self.system.memory_kb()}")
        if self.settings.crashed:
            self.prepare()

    def _scrub_memory(self, job: str) -> str:
        """Zero the memory the previous kernel had (see rhaas.agent.memory); what was done."""
        progress = self._progress(job, "scrub-memory")
        if not self.settings.crashed:
            taken = memory.scrub_free((self.system.memory_available_kb() or 0) * 1024, progress)
            return f"{taken} bytes of free memory taken and zeroed by this kernel"
        if not self.memmap:
            raise AgentError("scrub-memory", "no rhaas.memmap= on the command line: the RAM is unknown")
        usable = [memory.Range(r.start, r.end) for r in self.memmap if r.kind == "u"]
        try:
            iomem = self.system.iomem()
            own = memory.system_ram(iomem)
        except OSError as exc:
            raise AgentError("scrub-memory", f"cannot read this kernel's memory map: {exc}") from exc
        mine = memory.format_ranges(own)
        try:
            ranges = memory.foreign_ranges(usable, own)
            scrubbed = memory.scrub_physical(ranges, self.system.path("dev", "mem"), progress)
        except (OSError, memory.ScrubError) as exc:
            raise AgentError("scrub-memory", f"{exc} (this kernel's RAM: {mine})") from exc
        # The crash region itself held the FPBL that deployed the customer (their image in its caches).
        taken = memory.scrub_free((self.system.memory_available_kb() or 0) * 1024)
        outside = f"{scrubbed.zeroed} bytes in {len(ranges)} ranges outside this kernel zeroed and read back"
        done = f"{outside}; {taken} bytes of its own free memory zeroed (its RAM: {mine})"
        if scrubbed.refused:
            done += f"; not reachable through /dev/mem: {memory.names_of(iomem, scrubbed.refused)}"
        return done

    def _restore_memory(self, job: str, why: str) -> None:
        """Boot the full FPBL, with the node's whole memory map, from this crash kernel (does not return)."""
        usable = kexec.usable_bytes(self.memmap)
        self.report(job, "restore-memory", "start", f"{why}; booting the full FPBL ({usable} bytes usable)")
        os.makedirs(self.system.tmp, exist_ok=True)
        fpbl_initrd = os.path.join(self.system.tmp, "fpbl.initrd")
        kexec.compose_fpbl_initrd(fpbl_initrd, self.system.fpbl_dir)
        args = [*kexec.inherited_args(self.settings.cmdline), *kexec.exactmap_params(self.memmap)]
        args += ["rhaas.mode=ready", *self.settings.passed_on()]
        args.append(f"rhaas.memmap={kexec.format_memmap(self.memmap)}")
        self.system.kexec_load(os.path.join(self.system.fpbl_dir, "vmlinuz"), fpbl_initrd, " ".join(args))
        self.report(job, "restore-memory", "done", "jumping into the full FPBL")
        self.system.kexec_exec()


def main(argv: list[str] | None = None) -> int:
    """Run the agent on this node, forever."""
    system = System()
    while True:  # a bad command line is reported on the console until someone fixes the boot config
        try:
            settings = parse_cmdline(system.cmdline())
            break
        except (OSError, ValueError) as exc:
            log(f"cannot start: {exc}")
            time.sleep(30)
    log(f"node={settings.node} mode={settings.mode} agent={settings.agent} boot")
    Agent(settings, Api(settings), system).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
