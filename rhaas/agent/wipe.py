"""Wiping a returned node: its disks, optionally its memory, then ready for the next customer (standard
library only).

A wipe reports ``wipe`` and ``verify-wipe`` per disk (every zeroed region is read back), then
``scrub-memory`` if the server asked for it (see `rhaas.agent.memory`), ``restore-memory`` and
``ready``. In the return FPBL (the crash kernel) the node idles there afterwards: the next customer's
kernel gets the full memory map at the next deploy, with no second boot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rhaas.agent import disk as disks
from rhaas.agent import kexec, memory
from rhaas.agent.work import AgentError, Wipe

if TYPE_CHECKING:
    from rhaas.agent.agent import Agent


class Wiping:
    """One wipe job, run by `run`. ``phase`` is the step under way, for the report of a failure."""

    def __init__(self, agent: Agent, job: Wipe) -> None:
        self.agent = agent
        self.job = job
        self.phase = "wipe"

    def run(self) -> None:
        agent, job = self.agent, self.job
        found = agent.system.disks()
        for target in found:
            self.phase = "wipe"
            agent.report(job.job, self.phase, "start", f"{target.path} {job.policy}")
            wiped = disks.wipe(target, job.policy, agent.progress(job.job, self.phase))
            zeroed = sum(n for _, n in wiped.regions)
            agent.report(job.job, self.phase, "done", f"{target.path}: {zeroed} bytes {wiped.how}")
            self.phase = "verify-wipe"
            agent.report(job.job, self.phase, "start", target.path)
            try:
                regions = disks.regions_to_verify(target, wiped, job.verify)
                read = disks.verify_zero(target.path, regions, agent.progress(job.job, self.phase))
            except disks.DiskError as exc:
                raise AgentError(self.phase, str(exc)) from exc
            done = f"{target.path}: {read} bytes read back ({job.verify}), all zero"
            agent.report(job.job, self.phase, "done", done)
        if not found:
            agent.report(job.job, "wipe", "done", "no disks")
        if job.scrub_memory:
            self.phase = "scrub-memory"
            agent.report(job.job, self.phase, "start", "the previous kernel's memory")
            agent.report(job.job, self.phase, "done", self._scrub_memory())

        self.phase = "restore-memory"
        if not agent.settings.crashed:
            agent.report(job.job, self.phase, "done", "not needed: this kernel has all the memory")
        elif not agent.memmap:
            raise AgentError(self.phase, "no rhaas.memmap= on the command line: cannot restore memory")
        else:
            # No second boot: the node idles in this kernel, and the next customer's kernel gets the full
            # memory map from it (a deploy too large for this kernel's memory restores it first).
            usable = kexec.usable_bytes(agent.memmap)
            agent.report(job.job, self.phase, "done", f"at the next deploy: {usable} bytes usable")
        agent.report(job.job, "ready", "done", f"memory_kb={agent.system.memory_kb()}")
        if agent.settings.crashed:
            agent.payload.prepare()

    def _scrub_memory(self) -> str:
        """Zero the memory the previous kernel had (see rhaas.agent.memory); what was done."""
        agent = self.agent
        progress = agent.progress(self.job.job, "scrub-memory")
        if not agent.settings.crashed:
            taken = memory.scrub_free((agent.system.memory_available_kb() or 0) * 1024, progress)
            return f"{taken} bytes of free memory taken and zeroed by this kernel"
        if not agent.memmap:
            raise AgentError("scrub-memory", "no rhaas.memmap= on the command line: the RAM is unknown")
        usable = [memory.Range(r.start, r.end) for r in agent.memmap if r.kind == "u"]
        try:
            iomem = agent.system.iomem()
            own = memory.system_ram(iomem)
        except OSError as exc:
            raise AgentError("scrub-memory", f"cannot read this kernel's memory map: {exc}") from exc
        mine = memory.format_ranges(own)
        try:
            ranges = memory.foreign_ranges(usable, own)
            scrubbed = memory.scrub_physical(ranges, agent.system.path("dev", "mem"), progress)
        except (OSError, memory.ScrubError) as exc:
            raise AgentError("scrub-memory", f"{exc} (this kernel's RAM: {mine})") from exc
        # The crash region itself held the FPBL that deployed the customer (their image in its caches).
        taken = memory.scrub_free((agent.system.memory_available_kb() or 0) * 1024)
        outside = f"{scrubbed.zeroed} bytes in {len(ranges)} ranges outside this kernel zeroed and read back"
        done = f"{outside}; {taken} bytes of its own free memory zeroed (its RAM: {mine})"
        if scrubbed.refused:
            done += f"; not reachable through /dev/mem: {memory.names_of(iomem, scrubbed.refused)}"
        return done
