"""The rhaas agent: checks the node in, polls for work, deploys and wipes it (standard library only).

It runs as the main program of the FPBL's init (``python3 -m rhaas.agent.agent``) and reads its settings
from the kernel command line (`rhaas.agent.settings`). It talks to the agent API (`rhaas.agent.api`):
check in, ask for work (`rhaas.agent.work`), do it (`rhaas.agent.deploy`, `rhaas.agent.wipe`) and report
every phase on the way.

The agent never exits on an error: it reports it and keeps polling, so that the node stays recoverable.
Between polls it sleeps for the ``poll_after`` the server asked for.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rhaas.agent import kexec
from rhaas.agent.api import Api, ServerError
from rhaas.agent.deploy import Deployment, StaticPayload
from rhaas.agent.settings import Settings, parse_cmdline
from rhaas.agent.system import System, log, new_boot_id
from rhaas.agent.wipe import Wiping
from rhaas.agent.work import (
    MAX_POLL,
    MIN_POLL,
    AgentError,
    Artifact,
    Deploy,
    ProtocolError,
    Wait,
    Wipe,
    parse_work,
)

#: The agent's names, in one place for the FPBL's build-time exercise and for tests.
__all__ = [
    "MAX_POLL", "MIN_POLL", "REPORT_EVERY", "WORK_WAIT", "Agent", "AgentError", "Api", "Artifact", "Deploy",
    "ProtocolError", "ServerError", "Settings", "System", "Wait", "Wipe", "main", "parse_cmdline",
    "parse_work",
]  # fmt: skip

#: Where the agent keeps the secret the server handed it, under System.tmp (a tmpfs: it lasts as long as
#: this kernel runs), so that an agent restarted by the init carries on with it.
SECRET_FILE = "agent.secret"
#: Seconds the server may hold a request for work while there is none (a long poll: work queued for the
#: node answers it at once). Below the HTTP timeout.
WORK_WAIT = 20
REPORT_EVERY = 1.0  # seconds between progress reports


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
        self.payload = StaticPayload(system)
        self._memmap_published = False
        self._long_poll = True
        self._load_secret()

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

    def progress(self, job: str, phase: str) -> Callable[[int, int], None]:
        """A callback that reports ``phase``'s progress, at most every `REPORT_EVERY` seconds."""
        last = [0.0]

        def tell(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= REPORT_EVERY:
                last[0] = now
                self.report(job, phase, "start", progress=(done, total))

        return tell

    # --- the loop ---

    def use_secret(self, secret: str, keep: bool = True) -> None:
        """From now on the agent is ``secret`` (handed out by the server: the one before it is dead);
        ``keep``: saved for an agent restarted in this kernel."""
        self.settings = self.settings._replace(secret=secret, token=None)
        self.api.use(secret)
        if not keep:
            return
        path = os.path.join(self.system.tmp, SECRET_FILE)
        try:
            os.makedirs(self.system.tmp, exist_ok=True)
            fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secret)
            os.replace(path + ".new", path)
        except OSError as exc:
            log(f"cannot keep the agent secret ({exc}): a restarted agent would not be let in")

    def _load_secret(self) -> None:
        """The secret an earlier agent in this kernel was handed, if any (it replaces the boot's)."""
        try:
            with open(os.path.join(self.system.tmp, SECRET_FILE)) as saved:
                secret = saved.read().strip()
        except OSError:
            return
        if secret:
            self.use_secret(secret, keep=False)

    def checkin(self) -> None:
        """Check in, retrying with back-off until the server answers. A return FPBL checks in with its
        deploy's return token, and is answered its secret."""
        body = {
            "mode": self.settings.mode, "boot_id": self.boot_id, "kernel": self.system.kernel(),
            "memory_kb": self.system.memory_kb(),
            "disks": [{"name": d.name, "size": d.size} for d in self.system.disks()],
            "elfcorehdr": self.settings.crashed,
        }  # fmt: skip
        delay = 1.0
        while True:
            try:
                answer = self.api.call("POST", "checkin", body)
                secret = answer.get("secret") if isinstance(answer, dict) else None
                if isinstance(secret, str) and secret:
                    self.use_secret(secret)
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
            self.publish_memmap()
        self.checkin()
        if not self.settings.crashed:
            self.payload.prepare()  # while idle: a deploy then only copies the return payload
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

    def publish_memmap(self) -> None:
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
        if isinstance(work, Deploy) and work.secret:
            self.use_secret(work.secret)
        task = Deployment(self, work) if isinstance(work, Deploy) else Wiping(self, work)
        try:
            task.run()
        except AgentError as exc:
            self.report(work.job, exc.phase, "error", str(exc))
        except Exception as exc:  # noqa: BLE001 - anything at all: report it, keep polling
            self.report(work.job, task.phase, "error", f"{type(exc).__name__}: {exc}")


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
