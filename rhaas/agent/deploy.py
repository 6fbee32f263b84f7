"""Deploying a customer's OS: download, verify, write the disk, arm the way back, kexec (standard library
only).

A deploy reports each phase to the server as it goes (``download-kernel``, ``download-initrd``,
``download-disk``, ``verify``, ``write-disk``, ``kexec``) and ends by jumping into the customer's kernel,
with the return payload (`rhaas.agent.kexec`) appended to its initrd. From the return FPBL (the crash
kernel, after an NMI) it first checks that the node's memory is enough, and boots the full FPBL if not
(``restore-memory``). Anything that fails raises `AgentError` with its phase; the agent reports it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from rhaas.agent import bootentry, cidata, extents, kexec
from rhaas.agent import disk as disks
from rhaas.agent.fs import FsError
from rhaas.agent.system import System, log
from rhaas.agent.work import AgentError, Artifact, Deploy

if TYPE_CHECKING:
    from rhaas.agent import swarm
    from rhaas.agent.agent import Agent

#: Deploying from the return FPBL (the crash kernel's ~400 MB, `kexec.CRASH_MIB`): what the static return
#: payload takes, and what must stay free besides. A deploy that needs more restores the node's memory
#: first.
STATIC_PAYLOAD_BYTES = 30 << 20
#: 32 MiB was not enough with the generic FPBL on a MegaRAID node: kexec was killed for memory (the
#: drivers coldplug loads take their share of the crash region).
DEPLOY_HEADROOM_BYTES = 64 << 20
#: What a whole-disk image's kernel and initrd are taken to weigh before it is written: a distribution's
#: (Debian 12's are 14 + 15 MB, Debian 13's with dracut 12 + 21 MB). A return FPBL without room for them
#: and the return payload boots the full FPBL before writing anything, not after.
WHOLE_DISK_BOOT_FILES_GUESS = 32 << 20
#: The deploy-independent part of the return payload, under System.tmp (see `StaticPayload`).
STATIC_PAYLOAD = "return-static.cpio"
#: What a deploy copies out under System.tmp: the kernel, its initrd, and that initrd with the return
#: payload after it (what kexec loads).
KERNEL, INITRD, COMBINED = "kernel", "initrd", "initrd.combined"


class StaticPayload:
    """The deploy-independent part of the return payload (busybox, kexec, the FPBL; ~28 MB), made once
    while the node idles (`prepare`) so that a deploy only copies it."""

    def __init__(self, system: System) -> None:
        self.system = system
        #: Held while the file is made or copied: a deploy must not copy half of it.
        self.lock = threading.Lock()

    @property
    def path(self) -> str:
        return os.path.join(self.system.tmp, STATIC_PAYLOAD)

    def made(self) -> str:
        """Its path; made first if it is not there."""
        with self.lock:
            path = self.path
            if not os.path.exists(path):
                os.makedirs(self.system.tmp, exist_ok=True)
                files = kexec.FpblFiles.load(self.system.fpbl_dir)
                kexec.prepare_static_payload(path, files)
            return path

    def prepare(self) -> None:
        """Make it in the background (a deploy would otherwise wait for it)."""

        def make() -> None:
            try:
                self.made()
            except Exception as exc:  # noqa: BLE001 - a deploy will try again and report what fails
                log(f"cannot prepare the return payload now ({exc}); a deploy will try again")

        threading.Thread(target=make, name="prepare-return", daemon=True).start()


class Deployment:
    """One deploy job, run by `run`. ``phase`` is the step under way, for the report of a failure."""

    def __init__(self, agent: Agent, job: Deploy) -> None:
        self.agent = agent
        self.job = job
        self.phase = "deploy"
        #: The peer exchange of a whole-disk deploy, serving peers until the jump (None: none).
        self.exchange: swarm.Exchange | None = None

    def _report(self, state: str, detail: str) -> None:
        self.agent.report(self.job.job, self.phase, state, detail)

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.exchange is not None:  # a deploy that failed: peers fetch elsewhere
                self.exchange.close(linger=0)

    def _run(self) -> None:
        agent, job = self.agent, self.job
        if agent.settings.crashed:
            self.phase = "restore-memory"
            if not agent.memmap:
                raise AgentError(self.phase, "no rhaas.memmap= on the command line: the customer would get "
                                 "only the crash region's memory")  # fmt: skip
            if job.kernel is not None and job.initrd is not None:
                self._check_memory(job.kernel.size + job.initrd.size)
            elif job.image is not None:
                # Its boot files are known only once it is written: checking then would write the image
                # twice when they do not fit. Decide now, on a guess of a distribution's.
                self._check_memory(WHOLE_DISK_BOOT_FILES_GUESS)
        os.makedirs(agent.system.tmp, exist_ok=True)
        kernel = os.path.join(agent.system.tmp, KERNEL)
        initrd = os.path.join(agent.system.tmp, INITRD)
        if job.image is not None:
            cmdline = self._deploy_image(kernel, initrd)
        else:
            self._download_boot_files(kernel, initrd)
            cmdline = job.cmdline
        self.phase = "kexec"
        self._report("start", "arming the return path")
        self._arm_return(kernel, initrd, cmdline)
        if self.exchange is not None:  # serve the peers that still lack chunks a little longer
            self.exchange.close()
            self.exchange = None
        self._report("done", "jumping into the customer kernel")
        agent.system.kexec_exec()

    def _check_memory(self, boot_files: int) -> None:
        """In the return FPBL: boot the full FPBL first unless the deploy fits (see `_memory_needed`)."""
        need, available = self._memory_needed(boot_files)
        if available is None or need > available:
            # The full FPBL checks in and is handed this deploy again (the server expects it).
            have = "unknown" if available is None else f"{available >> 20} MiB"
            why = f"the deploy needs {need >> 20} MiB, the return FPBL has {have} available"
            self._restore_memory(why)
        self.agent.publish_memmap()

    def _download_boot_files(self, kernel: str, initrd: str) -> None:
        """A kernel + initrd image: download both (checked) and its disk image, if any."""
        job = self.job
        assert job.kernel is not None and job.initrd is not None
        for name, artifact, path in (("kernel", job.kernel, kernel), ("initrd", job.initrd, initrd)):
            self.phase = f"download-{name}"
            self._report("start", artifact.url)
            with open(path, "wb") as out:
                digest = self._download(artifact, out.write)
            self._report("done", f"{artifact.size} bytes")
            self._check(name, artifact, digest, path)
        writer = self._download_disk()

        self.phase = "verify"
        self._report("done", "sha256 and size match")
        self.phase = "write-disk"
        if writer is None:
            self._report("done", "no disk image")
        else:
            detail = f"{writer.written} bytes written, {writer.skipped} zero bytes skipped (already zero)"
            self._report("done", detail)

    def _deploy_image(self, kernel: str, initrd: str) -> str:
        """A whole-disk image: write its extents, find the boot entry its own boot loader would take, copy
        that kernel and initrd out, write cloud-init's seed; the entry's command line."""
        job, agent = self.job, self.agent
        image: extents.DiskImage = job.image
        target = self._target_disk("write-disk")
        self.phase = "write-disk"
        self._report("start", f"{image.data_bytes} bytes of data in {len(image.extents)} chunks of a "
                     f"{image.virtual_size}-byte image -> {target.path}")  # fmt: skip
        self.exchange = extents.exchange_for(image, self._fetch, self._announce)
        try:
            written = extents.write_image(
                image, target, self._fetch, agent.progress(job.job, self.phase), self.exchange
            )
        except BaseException:
            _scrub(target)
            raise
        detail = f"{written.data} bytes written; {written.holes}"
        if self.exchange is not None:
            stats = self.exchange.stats()
            detail += (f"; peer exchange: {stats.from_server} bytes from the server, {stats.from_peers} from "
                       f"peers, {stats.served} served to peers")  # fmt: skip
            if stats.from_multicast or stats.multicast_sent:
                detail += (
                    f"; multicast: {stats.from_multicast} of the peers' bytes from the group, "
                    f"{stats.multicast_sent} sent to it, {stats.multicast_lost} pieces lost"
                )
            if stats.dropped:  # how many, not who: the customer reads this history
                detail += f", {len(stats.dropped)} peers dropped (the node's console names them)"
        self._report("done", detail)

        self.phase = "find-boot"
        self._report("start", f"looking for the image's default boot entry on {target.path}")
        try:
            with open(target.path, "rb") as dev:
                entry = bootentry.find_on_disk(dev, **job.boot)
                if not entry.initrds:
                    raise AgentError(self.phase, f"{entry.describe()}: no initrd; the way back rides in "
                                     "the initramfs, so an image must boot with one")  # fmt: skip
                with open(kernel, "wb") as out:
                    out.write(entry.read_kernel())
                with open(initrd, "wb") as out:
                    out.write(entry.read_initrd())
        except (bootentry.BootEntryError, FsError, OSError) as exc:
            raise AgentError(self.phase, str(exc)) from exc
        self._report("done", entry.describe())
        if agent.settings.crashed:
            self._check_memory(os.path.getsize(kernel) + os.path.getsize(initrd))

        if job.seed is not None:
            self.phase = "seed"
            seed = cidata.Seed(
                instance_id=job.seed["instance_id"], hostname=job.seed["hostname"],
                user_data=_bytes(job.seed.get("user_data")), ssh_keys=tuple(job.seed.get("ssh_keys", ())),
                network_config=_bytes(job.seed.get("network_config")),
            )  # fmt: skip
            try:
                done = cidata.write_seed(target.path, target.size, agent.system.sector_size(target), seed)
            except (cidata.SeedError, OSError) as exc:
                raise AgentError(self.phase, str(exc)) from exc
            self._report("done", f"cloud-init NoCloud volume: partition {done['partition']} of the "
                         f"{done['table']} table, {done['size']} bytes")  # fmt: skip
        return entry.cmdline

    def _announce(self, url: str, have: str, port: int, dropped: list[tuple[str, int]]) -> object:
        """Tell the peer exchange's tracker what this node holds and which peers it dropped; its answer."""
        body: dict[str, object] = {"port": port, "have": have}
        if dropped:
            body["dropped"] = [{"address": a, "port": p} for a, p in dropped]
        if self.agent.settings.ip:
            body["address"] = self.agent.settings.ip.partition("/")[0]
        return self.agent.api.call_url("POST", url, body, "peers")

    def _fetch(self, artifact: Artifact, sink: Callable[[bytes], object]) -> str:
        try:
            return self.agent.api.download(artifact, sink, lambda done, total: None)
        except OSError as exc:
            raise AgentError(self.phase, f"downloading {artifact.url} failed: {exc}") from exc

    def _download_disk(self) -> disks.ImageWriter | None:
        """Stream the disk image onto the node's disk, checked; its writer (None: no disk image)."""
        self.phase = "download-disk"
        image = self.job.disk
        if image is None:
            self._report("done", "no disk image")
            return None
        target = self._target_disk()
        self._report("start", f"{image.url} -> {target.path}")
        try:
            writer = disks.ImageWriter(target.path, target.size, image.size)
        except disks.DiskError as exc:
            raise AgentError(self.phase, str(exc)) from exc
        try:
            digest = self._download(image, writer.write)
            writer.finish()
        except BaseException:
            writer.close()
            _scrub(target)
            raise
        self._report("done", f"{image.size} bytes")
        self._check("disk", image, digest, None, target)
        return writer

    def _memory_needed(self, boot_files: int) -> tuple[int, int | None]:
        """Bytes a deploy needs in this (crash) kernel, and bytes available: at ``kexec -l`` the kernel
        and the initrd (``boot_files`` bytes) with the return payload are in tmpfs, in kexec's buffers and
        in the kernel's segment pages (three copies), less the prepared return payload, which is counted
        as used already once made, plus room to spare."""
        static = self.agent.payload.path
        made = os.path.getsize(static) if os.path.exists(static) else 0
        files = boot_files + (made or STATIC_PAYLOAD_BYTES)
        available = self.agent.system.memory_available_kb()
        return 3 * files - made + DEPLOY_HEADROOM_BYTES, None if available is None else available * 1024

    def _download(self, artifact: Artifact, sink: Callable[[bytes], object]) -> str:
        try:
            return self.agent.api.download(artifact, sink, self.agent.progress(self.job.job, self.phase))
        except AgentError as exc:
            raise AgentError(self.phase, str(exc)) from exc
        except OSError as exc:
            raise AgentError(self.phase, f"downloading {artifact.url} failed: {exc}") from exc

    def _check(
        self, name: str, artifact: Artifact, digest: str, path: str | None, target: disks.Disk | None = None
    ) -> None:
        if digest == artifact.sha256:
            return
        if path is not None:
            os.unlink(path)  # never used: a file that does not match is not kept either
        if target is not None:
            _scrub(target)
        raise AgentError("verify", f"{name}: sha256 {digest} is not the expected {artifact.sha256}; refused")

    def _target_disk(self, phase: str = "download-disk") -> disks.Disk:
        found = self.agent.system.disks()
        for d in found:
            if d.name == "vda":
                return d
        if not found:
            raise AgentError(phase, "this node has no disk")
        return found[0]

    def _arm_return(self, kernel: str, initrd: str, cmdline: str) -> None:
        """Load the customer kernel with the return payload appended to its initrd."""
        agent = self.agent
        static = agent.payload.made()
        crash = [*kexec.inherited_args(agent.settings.cmdline), *kexec.CRASH_ARGS, "rhaas.mode=return"]
        crash += agent.settings.passed_on(token=self.job.return_token)  # the customer can read it
        if agent.memmap:
            crash.append(f"rhaas.memmap={kexec.format_memmap(agent.memmap)}")
        new_cmdline, next_init = kexec.customer_cmdline(cmdline)
        combined = os.path.join(agent.system.tmp, COMBINED)
        with agent.payload.lock:  # copied: not needed again unless this deploy fails (then made again)
            kexec.append_payload(initrd, combined, static, " ".join(crash), next_init)
            os.unlink(static)
        os.unlink(initrd)
        agent.system.kexec_load(kernel, combined, new_cmdline)

    def _restore_memory(self, why: str) -> None:
        """Boot the full FPBL, with the node's whole memory map, from this crash kernel (does not return)."""
        agent, job = self.agent, self.job.job
        usable = kexec.usable_bytes(agent.memmap)
        agent.report(job, "restore-memory", "start", f"{why}; booting the full FPBL ({usable} bytes usable)")
        os.makedirs(agent.system.tmp, exist_ok=True)
        # The full FPBL does this deploy again from the start: what this one copied out (the image's
        # kernel and initrd, the prepared return payload) would only take the memory the load needs.
        with agent.payload.lock:
            for name in (KERNEL, INITRD, COMBINED, STATIC_PAYLOAD):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(agent.system.tmp, name))
        fpbl_initrd = os.path.join(agent.system.tmp, "fpbl.initrd")
        kexec.compose_fpbl_initrd(fpbl_initrd, agent.system.fpbl_dir)
        args = [*kexec.inherited_args(agent.settings.cmdline), *kexec.exactmap_params(agent.memmap)]
        args += ["rhaas.mode=ready", *agent.settings.passed_on()]
        args.append(f"rhaas.memmap={kexec.format_memmap(agent.memmap)}")
        agent.system.kexec_load(os.path.join(agent.system.fpbl_dir, "vmlinuz"), fpbl_initrd, " ".join(args))
        agent.report(job, "restore-memory", "done", "jumping into the full FPBL")
        agent.system.kexec_exec()


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _scrub(target: disks.Disk) -> None:
    """Erase a half-written or unverified image, so that nothing boots from it."""
    try:
        disks.wipe(target, "metadata")
    except OSError as exc:
        log(f"scrubbing {target.path} failed: {exc}")
