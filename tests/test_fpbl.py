"""The FPBL and its agent: unit tests (no image built), and the kexec deploy + NMI return on a QEMU node."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rhaas.agent import agent as ag
from rhaas.agent import disk as dk
from rhaas.agent import kexec as kx
from rhaas.agent import memory as mem
from rhaas.agent import wire
from rhaas.lab import images
from rhaas.lab.qemu import QemuNode
from rhaas.provisioning import agenttls

BOOT_TIMEOUT = 180  # TCG on a busy 2-core machine
SECRET = "s3cret-one-time"


# --- a fake (but real HTTP) agent API ------------------------------------------------------------------


class FakeAgentApi:
    """The agent API of the protocol, in a thread: records check-ins, polls and reports, hands out queued
    work, serves files under /files/. Tests wait on it with `wait_for` (a condition, not a sleep)."""

    def __init__(self, secret: str = SECRET, poll_after: float = 0.5, tls_key: Path | None = None) -> None:
        self.secret = secret
        #: Requests that reached the handler (for TLS: after a handshake the client went on with).
        self.requests = 0
        #: A return token good for one check-in, answered with ``token_secret`` (the agent's next secret).
        self.token: str | None = None
        self.token_secret = "s3cret-after-return"
        self.poll_after = poll_after
        self.files: dict[str, bytes] = {}
        self.work: list[dict[str, Any]] = []
        self.checkins: list[tuple[float, dict[str, Any]]] = []
        self.reports: list[dict[str, Any]] = []
        self.polls: list[float] = []
        self.denied = 0
        #: False: answer a held work request (?wait=) as an older server would, 400.
        self.long_polls = True
        self.work_paths: list[str] = []
        self.cond = threading.Condition()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self, token_ok: bool = False) -> bool:
                if self.headers.get("Authorization") == f"Bearer {api.secret}":
                    return True
                if token_ok and api.token and self.headers.get("Authorization") == f"Bearer {api.token}":
                    api.token, api.secret = None, api.token_secret  # good once; a fresh secret follows
                    self.headers["X-Answer-Secret"] = api.secret
                    return True
                with api.cond:
                    api.denied += 1
                self._send(401, b'{"type": "AuthorizationError"}')
                return False

            def do_GET(self) -> None:
                api.requests += 1
                if not self._authorized():
                    return
                if self.path.startswith("/files/"):
                    data = api.files.get(self.path[len("/files/") :])
                    if data is None:
                        self._send(404, b'{"type": "NotFoundError", "msg": "no such file here"}')
                    else:
                        self._send(200, data, "application/octet-stream")
                    return
                if re.fullmatch(r"/agent/v1/nodes/[^/]+/work(\?wait=\d+)?", self.path):
                    api.work_paths.append(self.path.rsplit("/", 1)[-1])
                    if "?" in self.path and not api.long_polls:
                        self._send(400, b'{"type": "ValidationError", "msg": "unknown \'wait\'"}')
                        return
                    with api.cond:
                        api.polls.append(time.monotonic())
                        item = (
                            api.work.pop(0) if api.work else {"action": "wait", "poll_after": api.poll_after}
                        )
                        api.secret = item.get("secret", api.secret)  # a deploy's hand-out replaces it
                        api.cond.notify_all()
                    self._send(200, json.dumps(item).encode())
                    return
                self._send(404, b"{}")

            def do_POST(self) -> None:
                api.requests += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                name = self.path.rsplit("/", 1)[-1]
                if not self._authorized(token_ok=name == "checkin"):
                    return
                with api.cond:
                    if name == "checkin":
                        api.checkins.append((time.monotonic(), body))
                    elif name == "report":
                        api.reports.append(body)
                    api.cond.notify_all()
                secret = self.headers.get("X-Answer-Secret")
                self._send(200, json.dumps({"secret": secret} if secret else {}).encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pin: str | None = None
        if tls_key is not None:  # the agents' listener as rhaas serves it: TLS with a self-signed key
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url, self.pin = f"https://127.0.0.1:{self.port}", agenttls.pin_of(tls_key)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def push(self, item: dict[str, Any]) -> None:
        with self.cond:
            self.work.append(item)

    def artifact(self, name: str, data: bytes, sha256: str | None = None) -> dict[str, Any]:
        self.files[name] = data
        return {
            "url": f"files/{name}",
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s; reports: {self.reports[-8:]}")
                self.cond.wait(left)

    def report_of(self, job: str, phase: str, state: str) -> dict[str, Any] | None:
        return next(
            (r for r in self.reports if (r["job"], r["phase"], r["state"]) == (job, phase, state)), None
        )


@pytest.fixture
def fake_api() -> Iterator[FakeAgentApi]:
    api = FakeAgentApi()
    yield api
    api.close()


def _settings(api: FakeAgentApi, **extra: str) -> ag.Settings:
    if api.pin and "pin" not in extra:
        extra["pin"] = api.pin
    words = " ".join(f"rhaas.{k}={v}" for k, v in extra.items())
    return ag.parse_cmdline(
        f"console=ttyS0 rhaas.agent={api.url} rhaas.node=n1 rhaas.secret={SECRET} {words}"
    )


# --- unit tests: command line, protocol ---------------------------------------------------------------


def test_cmdline_parsing():
    s = ag.parse_cmdline(
        "console=ttyS0 quiet rhaas.agent=http://10.0.2.2:8080/ rhaas.node=n1 rhaas.secret=abc "
        "rhaas.ip=10.0.2.15/24 rhaas.gw=10.0.2.2 rhaas.mode=return elfcorehdr=123K"
    )
    assert (s.agent, s.node, s.secret, s.mode, s.ip, s.gw) == (
        "http://10.0.2.2:8080", "n1", "abc", "return", "10.0.2.15/24", "10.0.2.2",
    )  # fmt: skip
    assert s.crashed and s.memmap is None
    assert s.passed_on() == [
        "rhaas.agent=http://10.0.2.2:8080", "rhaas.node=n1", "rhaas.secret=abc", "rhaas.ip=10.0.2.15/24",
        "rhaas.gw=10.0.2.2",
    ]  # fmt: skip
    assert ag.parse_cmdline("rhaas.agent=http://h rhaas.node=n rhaas.secret=x").mode == "ready"
    # A network boot's iPXE script gives the address and netmask apart; the next FPBL gets the prefix.
    booted = ag.parse_cmdline("rhaas.agent=http://h rhaas.node=n rhaas.secret=x rhaas.ip=10.0.0.11 "
                              "rhaas.netmask=255.255.255.0 rhaas.gw=")  # fmt: skip
    assert (booted.ip, booted.gw) == ("10.0.0.11/24", None)
    assert "rhaas.ip=10.0.0.11/24" in booted.passed_on()
    for bad in (
        "rhaas.agent=http://h rhaas.node=n rhaas.secret=x rhaas.ip=10.0.0.11 rhaas.netmask=255.0.255.0",
        "rhaas.node=n rhaas.secret=x",
        "rhaas.agent=https://h rhaas.node=n rhaas.secret=x",
        "rhaas.agent=http://h rhaas.node=n rhaas.secret=x rhaas.mode=other",
        "rhaas.agent=http://h rhaas.node=n rhaas.secret=x rhaas.memmap=zz",
    ):
        with pytest.raises(ValueError):
            ag.parse_cmdline(bad)


SHA = "ab" * 32


def test_work_parsing():
    assert ag.parse_work({"action": "wait", "poll_after": 2}) == ag.Wait(2.0)
    assert ag.parse_work({"action": "wait", "poll_after": 0}) == ag.Wait(ag.MIN_POLL)  # never a spin
    assert ag.parse_work({"action": "wait", "poll_after": 10**6}) == ag.Wait(ag.MAX_POLL)
    art = {"url": "files/k", "sha256": SHA.upper(), "size": 5}
    work = ag.parse_work(
        {
            "action": "deploy",
            "job": "7",
            "kernel": art,
            "initrd": art,
            "disk": None,
            "cmdline": "console=ttyS0",
        }
    )
    assert isinstance(work, ag.Deploy) and work.disk is None and work.kernel == ag.Artifact("files/k", SHA, 5)
    assert ag.parse_work({"action": "wipe", "job": "8", "policy": "full"}) == ag.Wipe("8", "full")
    scrubbing = {"action": "wipe", "job": "8", "policy": "discard", "scrub_memory": True}
    assert ag.parse_work(scrubbing) == ag.Wipe("8", "discard", True)
    for bad in (
        [],
        {"action": "dance"},
        {"action": "wipe", "job": "8", "policy": "some"},
        {"action": "wipe", "policy": "full"},
        {"action": "wipe", "job": "8", "policy": "full", "scrub_memory": "yes"},
        {"action": "deploy", "job": "7", "kernel": art, "initrd": dict(art, sha256="xyz"), "cmdline": ""},
        {"action": "deploy", "job": "7", "kernel": art, "initrd": dict(art, size=-1), "cmdline": ""},
        {"action": "wait", "poll_after": "soon"},
    ):
        with pytest.raises(ag.ProtocolError):
            ag.parse_work(bad)


def test_relative_and_absolute_urls(fake_api):
    api = ag.Api(_settings(fake_api))
    assert api.resolve("files/k") == f"{fake_api.url}/files/k"
    assert api.resolve("/files/k") == f"{fake_api.url}/files/k"
    assert api.resolve("http://other:81/x") == "http://other:81/x"


def test_customer_cmdline_arms_the_return():
    line, nxt = kx.customer_cmdline("console=ttyS0 crashkernel=64M quiet")
    assert line == "console=ttyS0 quiet rdinit=/rhaas/init crashkernel=448M unknown_nmi_panic=1"
    assert nxt == "/init"
    line, nxt = kx.customer_cmdline("rdinit=/sbin/myinit console=ttyS0 -- single")
    assert nxt == "/sbin/myinit"
    assert line.endswith("unknown_nmi_panic=1 -- single") and "rdinit=/sbin/myinit" not in line
    line = "console=ttyS0,115200 quiet rhaas.node=x elfcorehdr=1K nr_cpus=1 memmap=1@2"
    assert kx.inherited_args(line) == ["console=ttyS0,115200", "quiet"]


def test_memmap_round_trip(tmp_path):
    ranges = [
        kx.MemRange(0, 0x9FC00, "u"),
        kx.MemRange(0xF0000, 0x100000, "r"),
        kx.MemRange(0x100000, 1 << 30, "u"),
    ]
    kx.write_memmap_dir(str(tmp_path / "firmware" / "memmap"), ranges)
    assert kx.read_firmware_memmap(str(tmp_path)) == ranges
    assert (tmp_path / "firmware/memmap/2/type").read_text() == "System RAM\n"
    assert kx.parse_memmap(kx.format_memmap(ranges)) == ranges
    assert kx.usable_bytes(ranges) == 0x9FC00 + (1 << 30) - 0x100000
    assert kx.exactmap_params(ranges) == [
        "memmap=exactmap", "memmap=0x9fc00@0x0", "memmap=0x10000$0xf0000", "memmap=0x3ff00000@0x100000",
    ]  # fmt: skip


# --- unit tests: archives ----------------------------------------------------------------------------


def test_the_agents_cpio_writer_matches_the_builders(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 3))
    out = io.BytesIO()
    cpio = kx.CpioWriter(out)
    cpio.directory("rhaas")
    cpio.file("rhaas/init", b"#!/bin/sh\n", 0o755)
    cpio.copy("rhaas/big", str(big), 0o644)
    cpio.close()
    expected = images.write_cpio(
        [
            images.dir_entry("rhaas"),
            images.file_entry("rhaas/init", b"#!/bin/sh\n", 0o755),
            images.file_entry("rhaas/big", big.read_bytes()),
        ]
    )
    assert out.getvalue() == expected and cpio.written == len(expected)


def _fake_fpbl(root: Path) -> kx.FpblFiles:
    fpbl = root / "rhaas/fpbl"
    fpbl.mkdir(parents=True)
    core = images.write_cpio([images.file_entry("init", b"#!/bin/sh\n", 0o755)])
    (fpbl / "core.cpio.gz").write_bytes(gzip.compress(core, mtime=0) + b"x")  # odd length: needs padding
    (fpbl / "vmlinuz").write_bytes(b"KERNEL" * 1000)
    for name in ("busybox", "kexec", "libc.so.6", "ld-linux-x86-64.so.2"):
        (root / name).write_bytes(name.encode())
    manifest = {"busybox": str(root / "busybox"), "kexec": str(root / "kexec")}
    manifest["kexec_libs"] = [str(root / "ld-linux-x86-64.so.2"), str(root / "libc.so.6")]
    (fpbl / "manifest.json").write_text(json.dumps(manifest))
    return kx.FpblFiles.load(str(fpbl))


def test_return_payload_contents(tmp_path):
    files = _fake_fpbl(tmp_path)
    fpbl_initrd = tmp_path / "fpbl.initrd"
    kx.compose_fpbl_initrd(str(fpbl_initrd), str(tmp_path / "rhaas/fpbl"))
    data = fpbl_initrd.read_bytes()
    core = (tmp_path / "rhaas/fpbl/core.cpio.gz").read_bytes()
    assert data.startswith(core)
    selfcopy = images.read_cpio(data[len(core) + (-len(core) % 4) :])
    assert selfcopy["rhaas/fpbl/core.cpio.gz"].data == core
    assert selfcopy["rhaas/fpbl/vmlinuz"].data == b"KERNEL" * 1000

    customer = tmp_path / "customer.initrd"
    customer.write_bytes(gzip.compress(images.write_cpio([images.file_entry("init", b"x")]), mtime=0))
    static = tmp_path / "static.cpio"
    kx.prepare_static_payload(str(static), files)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("static")) == ["static.cpio"]
    out = tmp_path / "combined"
    total = kx.append_payload(str(customer), str(out), str(static), "crash line", "/init")
    combined = out.read_bytes()
    assert len(combined) == total and combined.startswith(customer.read_bytes())
    assert combined.endswith(static.read_bytes()), "the static payload goes in as prepared"
    offset = len(customer.read_bytes())
    offset += -offset % 4
    assert combined[offset : offset + 6] == b"070701", "the payload starts 4-byte aligned"
    deploy_part = images.read_cpio(combined[offset:])
    second = len(combined) - static.stat().st_size
    assert second % 4 == 0 and combined[second : second + 6] == b"070701"
    payload = {**images.read_cpio(combined[second:]), **deploy_part}
    assert payload["rhaas/init"].data.decode() == kx.WRAPPER and payload["rhaas/init"].mode & 0o111
    assert "kexec -i -p /rhaas/fpbl/vmlinuz" in kx.WRAPPER and 'exec "$NEXT"' in kx.WRAPPER
    assert payload["rhaas/crash.cmdline"].data == b"crash line\n"
    assert payload["rhaas/next"].data == b"/init\n"
    parts = payload["rhaas/fpbl/initrd.parts"].data.decode().split()
    joined = b"".join(payload[p.lstrip("/")].data for p in parts)
    assert joined == data, "the wrapper's cat makes the FPBL initrd"
    assert static.read_bytes().count(b"KERNEL" * 1000) == 1, "the FPBL kernel is carried once"
    assert static.read_bytes().count(core) == 1, "and so is its core"
    assert "$B cat $($B cat /rhaas/fpbl/initrd.parts) > /rhaas/fpbl/initrd" in kx.WRAPPER
    assert payload["rhaas/lib/ld-linux-x86-64.so.2"].data == b"ld-linux-x86-64.so.2"
    assert {"rhaas/bin/busybox", "rhaas/bin/kexec", "rhaas/lib/libc.so.6"} <= set(payload)


# --- unit tests: disks -------------------------------------------------------------------------------


def test_image_writer_skips_zero_chunks_only_where_the_disk_is_zero(tmp_path):
    target = tmp_path / "disk"
    old = bytearray(8 * dk.MIB)
    old[3 * dk.MIB + 5] = 0xAA  # old data under what will be a zero chunk of the image
    target.write_bytes(bytes(old))
    image = bytearray(5 * dk.MIB + 100)
    image[:11] = b"RHAAS-DISK\n"
    writer = dk.ImageWriter(str(target), 8 * dk.MIB, len(image))
    for i in range(0, len(image), 77777):  # arbitrary network chunks
        writer.write(bytes(image[i : i + 77777]))
    writer.finish()
    disk = target.read_bytes()
    assert disk[: len(image)] == bytes(image), "the old byte under a zero chunk was overwritten"
    assert writer.written == 2 * dk.MIB and writer.skipped == 3 * dk.MIB + 100  # chunks 0 and 3 written
    with pytest.raises(dk.DiskError, match="does not fit"):
        dk.ImageWriter(str(target), 8 * dk.MIB, 8 * dk.MIB + 1)


def test_metadata_and_full_wipe_with_verification(tmp_path):
    size = 16 * dk.MIB
    path = tmp_path / "disk"
    path.write_bytes(b"\xff" * size)
    part = (4 * dk.MIB, 6 * dk.MIB)  # start, size
    disk = dk.Disk("vda", str(path), size, (part,))
    regions = dk.wipe(disk, "metadata").regions
    assert regions == [(0, dk.MIB), (4 * dk.MIB, dk.MIB), (9 * dk.MIB, dk.MIB), (15 * dk.MIB, dk.MIB)]
    assert dk.verify_zero(str(path), regions) == 4 * dk.MIB
    data = path.read_bytes()
    assert data[dk.MIB] == 0xFF and data[12 * dk.MIB] == 0xFF  # metadata only
    with pytest.raises(dk.DiskError, match=f"at byte {dk.MIB}"):
        dk.verify_zero(str(path), [(0, 2 * dk.MIB)])
    dk.verify_zero(str(path), dk.wipe(disk, "full").regions)
    assert path.read_bytes() == bytes(size)
    with pytest.raises(dk.DiskError):
        dk.wipe(disk, "some")


def test_a_discard_wipe_writes_zeros_where_the_device_cannot_discard(tmp_path):
    path = tmp_path / "disk"
    path.write_bytes(b"\xff" * 4 * dk.MIB)  # a regular file: BLKDISCARD is not there
    wiped = dk.wipe(dk.Disk("vda", str(path), 4 * dk.MIB), "discard")
    assert wiped == dk.Wiped([(0, 4 * dk.MIB)], "no discard on this device: written with zeros")
    assert dk.verify_zero(str(path), wiped.regions) == 4 * dk.MIB


def test_the_memory_a_crash_kernel_does_not_own_is_what_it_scrubs():
    iomem = (
        "00000000-00000fff : Reserved\n"
        "00001000-0009fbff : System RAM\n"
        "01000000-017fffff : System RAM\n"
        "  01200000-01400000 : Kernel code\n"
        "fec00000-fec003ff : IOAPIC 0\n"
    )
    own = mem.system_ram(iomem)
    assert own == [mem.Range(0x1000, 0x9FC00), mem.Range(0x1000000, 0x1800000)]
    usable = [mem.Range(0, 0x9FC00), mem.Range(0x100000, 0x2000000), mem.Range(0x2000800, 0x2003000)]
    assert mem.foreign_ranges(usable, own) == [
        mem.Range(0x100000, 0x1000000),  # above the first MiB, up to the crash kernel's own RAM
        mem.Range(0x1800000, 0x2000000),
        mem.Range(0x2001000, 0x2003000),  # whole pages only
    ]


def test_memory_scrub_zeroes_and_reads_back_only_the_ranges_given(tmp_path):
    path = tmp_path / "mem"
    path.write_bytes(b"\xaa" * 8 * dk.MIB)
    seen: list[tuple[int, int]] = []
    ranges = [mem.Range(dk.MIB, 3 * dk.MIB), mem.Range(4 * dk.MIB, 8 * dk.MIB)]
    assert mem.scrub_physical(ranges, str(path), lambda d, t: seen.append((d, t))) == (6 * dk.MIB, [])
    data = path.read_bytes()
    assert data[: dk.MIB] == b"\xaa" * dk.MIB and data[3 * dk.MIB : 4 * dk.MIB] == b"\xaa" * dk.MIB
    assert data[dk.MIB : 3 * dk.MIB] == bytes(2 * dk.MIB) and data[4 * dk.MIB :] == bytes(4 * dk.MIB)
    assert seen[-1] == (6 * dk.MIB, 6 * dk.MIB)
    with pytest.raises(mem.ScrubError, match="cannot open"):
        mem.scrub_physical(ranges, str(tmp_path / "no-such-device"))
    with pytest.raises(mem.ScrubError, match="cannot map"):
        mem.scrub_physical([mem.Range(16 * dk.MIB, 17 * dk.MIB)], "/dev/null")


def test_memory_scrub_skips_and_lists_the_pages_the_kernel_will_not_map(tmp_path, monkeypatch):
    path = tmp_path / "mem"
    path.write_bytes(b"\xaa" * 4 * dk.MIB)
    real_mmap = mem.mmap.mmap
    kernels = range(2 * dk.MIB, 2 * dk.MIB + 2 * mem.PAGE)  # /dev/mem's EPERM for a kernel's own pages

    def mapping(fd: int, size: int, offset: int) -> Any:
        if offset < kernels.stop and offset + size > kernels.start:
            raise PermissionError(1, "Operation not permitted")
        return real_mmap(fd, size, offset=offset)

    monkeypatch.setattr(mem.mmap, "mmap", mapping)
    scrubbed = mem.scrub_physical([mem.Range(dk.MIB, 4 * dk.MIB)], str(path))
    assert scrubbed == (3 * dk.MIB - 2 * mem.PAGE, [mem.Range(kernels.start, kernels.stop)])
    data = path.read_bytes()
    assert set(data[kernels.start : kernels.stop]) == {0xAA}
    assert data[dk.MIB : kernels.start] + data[kernels.stop :] == bytes(3 * dk.MIB - 2 * mem.PAGE)
    monkeypatch.setattr(mem, "MAX_REFUSED", mem.PAGE)
    with pytest.raises(mem.ScrubError, match="refuses too much memory: 0x200000-0x202000"):
        mem.scrub_physical([mem.Range(kernels.start, kernels.stop)], str(path))


def test_a_full_kernel_scrubs_by_taking_what_it_can_spare():
    assert mem.scrub_free(mem.SPARE + 8 * dk.MIB) == 8 * dk.MIB
    assert mem.scrub_free(mem.SPARE // 2) == 0


def test_list_disks_from_sysfs(tmp_path):
    vda = tmp_path / "block/vda"
    (vda / "device").mkdir(parents=True)
    (vda / "size").write_text("131072\n")
    (vda / "vda1").mkdir()
    (vda / "vda1/partition").write_text("1\n")
    (vda / "vda1/start").write_text("2048\n")
    (vda / "vda1/size").write_text("4096\n")
    (tmp_path / "block/loop0").mkdir()
    found = dk.list_disks(str(tmp_path), "/dev")
    assert found == [dk.Disk("vda", "/dev/vda", 64 * dk.MIB, ((dk.MIB, 2 * dk.MIB),))]


# --- unit tests: the agent against the fake API -------------------------------------------------------


class FakeSystem(ag.System):
    """The node, in a directory: a regular file as vda; kexec only recorded."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), str(root / "tmp"))
        self.kexecs: list[tuple[str, str, str]] = []
        self.published: list[list[kx.MemRange]] = []
        self.jumps = 0
        (root / "proc").mkdir()
        (root / "proc/meminfo").write_text("MemTotal:        1500000 kB\n")
        (root / "sys/block/vda/device").mkdir(parents=True)
        (root / "sys/block/vda/size").write_text(f"{32 * 2048}\n")
        (root / "dev").mkdir()
        (root / "dev/vda").write_bytes(b"\xee" * 32 * dk.MIB)
        kx.write_memmap_dir(str(root / "sys/firmware/memmap"), [kx.MemRange(0x100000, 1 << 30, "u")])

    def kexec_load(self, kernel: str, initrd: str, cmdline: str) -> None:
        self.kexecs.append((kernel, initrd, cmdline))

    def publish_memmap(self, ranges: list[kx.MemRange]) -> None:
        self.published.append(list(ranges))

    def set_available(self, kb: int) -> None:
        (Path(self.root) / "proc/meminfo").write_text(f"MemTotal: 348676 kB\nMemAvailable: {kb} kB\n")

    def kexec_exec(self) -> None:
        self.jumps += 1
        raise OSError("a fake node cannot jump")


def _agent(api: FakeAgentApi, system: FakeSystem, **extra: str) -> ag.Agent:
    settings = _settings(api, **extra)
    return ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=lambda s: None)


def test_deploy_refuses_a_sha_mismatch_and_keeps_polling(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    bad = fake_api.artifact("k", b"kernel", sha256="00" * 32)
    fake_api.push(
        {"action": "deploy", "job": "j1", "kernel": bad, "initrd": bad, "disk": None, "cmdline": ""}
    )
    _agent(fake_api, system).run(rounds=3)
    error = fake_api.report_of("j1", "verify", "error")
    assert error and "sha256" in error["detail"] and "refused" in error["detail"]
    assert not (tmp_path / "tmp/kernel").exists(), "a file that does not match is not kept"
    assert system.kexecs == [] and system.jumps == 0
    assert len(fake_api.polls) == 3, "the agent went on polling after the error"
    assert fake_api.checkins[0][1]["mode"] == "ready"
    assert fake_api.checkins[0][1]["disks"] == [{"name": "vda", "size": 32 * dk.MIB}]
    assert fake_api.checkins[0][1]["memory_kb"] == 1500000


def test_an_image_that_cannot_be_fetched_ends_the_deploy_in_a_clear_error(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    kernel = fake_api.artifact("k", b"KERNEL")
    gone = {**fake_api.artifact("gone", b"INITRD"), "url": "files/not-stored"}
    with socket.socket() as closed:  # a port nobody listens on: the image's host is unreachable
        closed.bind(("127.0.0.1", 0))
        unreachable = {**kernel, "url": f"http://127.0.0.1:{closed.getsockname()[1]}/k"}
    fake_api.push({"action": "deploy", "job": "j1", "kernel": kernel, "initrd": gone, "disk": None,
                   "cmdline": ""})  # fmt: skip
    fake_api.push({"action": "deploy", "job": "j2", "kernel": unreachable, "initrd": kernel, "disk": None,
                   "cmdline": ""})  # fmt: skip
    _agent(fake_api, system).run(rounds=3)
    missing = fake_api.report_of("j1", "download-initrd", "error")
    assert missing and missing["detail"] == "GET files/not-stored: HTTP 404: no such file here", missing
    refused = fake_api.report_of("j2", "download-kernel", "error")
    assert refused and refused["detail"].startswith(f"downloading {unreachable['url']} failed: "), refused
    assert "refused" in refused["detail"], refused
    assert system.kexecs == [] and system.jumps == 0
    assert len(fake_api.polls) == 3, "the agent went on polling after each error"


def test_deploy_writes_verifies_and_arms_the_return(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    image = b"RHAAS-DISK hello\n" + bytes(3 * dk.MIB)
    customer = gzip.compress(images.write_cpio([images.file_entry("init", b"x")]), mtime=0)
    fake_api.push(
        {
            "action": "deploy",
            "job": "j2",
            "kernel": fake_api.artifact("k", b"KERNEL"),
            "initrd": fake_api.artifact("i", customer),
            "disk": fake_api.artifact("d", image),
            "cmdline": "console=ttyS0",
            "secret": "s3cret-of-j2",
            "return_token": "return-token-of-j2",
        }  # fmt: skip
    )
    _agent(fake_api, system, ip="10.0.2.15/24").run(rounds=2)
    assert fake_api.denied == 0, "the agent switched to the secret the deploy's hand-out gave it"
    restarted = _agent(fake_api, system, ip="10.0.2.15/24")  # the init restarts a dead agent
    assert restarted.settings.secret == "s3cret-of-j2", "kept in this kernel's tmpfs for it"
    phases = [(r["phase"], r["state"]) for r in fake_api.reports if r["job"] == "j2" and "progress" not in r]
    assert phases == [
        ("download-kernel", "start"), ("download-kernel", "done"), ("download-initrd", "start"),
        ("download-initrd", "done"), ("download-disk", "start"), ("download-disk", "done"),
        ("verify", "done"), ("write-disk", "done"), ("kexec", "start"), ("kexec", "done"), ("kexec", "error"),
    ]  # fmt: skip
    assert (tmp_path / "dev/vda").read_bytes()[: len(image)] == image  # zero chunks over 0xee: written
    [(kernel, initrd, cmdline)] = system.kexecs
    assert Path(kernel).read_bytes() == b"KERNEL"
    assert cmdline == "console=ttyS0 rdinit=/rhaas/init crashkernel=448M unknown_nmi_panic=1"
    data = Path(initrd).read_bytes()
    payload = images.read_cpio(data[len(customer) + (-len(customer) % 4) :])
    crash = payload["rhaas/crash.cmdline"].data.decode()
    words = ["console=ttyS0", "irqpoll", "nr_cpus=1", "reset_devices", "iomem=relaxed", "rhaas.mode=return"]
    words += ["rhaas.token=return-token-of-j2", "rhaas.ip=10.0.2.15/24", "rhaas.memmap=100000-40000000u"]
    for word in words:
        assert word in crash.split(), word
    assert "rhaas.secret" not in crash, "what the customer can read holds no agent secret"
    assert all(r["at"] > 1e9 for r in fake_api.reports)


def test_a_bad_disk_image_is_scrubbed(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    image = b"EVIL" * (dk.MIB // 2)
    fake_api.push(
        {
            "action": "deploy",
            "job": "j3",
            "kernel": fake_api.artifact("k", b"K"),
            "initrd": fake_api.artifact("i", b"I"),
            "disk": fake_api.artifact("d", image, sha256="11" * 32),
            "cmdline": "",
        }  # fmt: skip
    )
    _agent(fake_api, system).run(rounds=1)
    assert fake_api.report_of("j3", "verify", "error")
    assert (tmp_path / "dev/vda").read_bytes()[: dk.MIB] == bytes(dk.MIB)
    assert system.kexecs == []


def test_wipe_in_a_full_kernel_needs_no_memory_restore(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    fake_api.push({"action": "wipe", "job": "w1", "policy": "full"})
    _agent(fake_api, system).run(rounds=1)
    assert (tmp_path / "dev/vda").read_bytes() == bytes(32 * dk.MIB)
    for phase in ("wipe", "verify-wipe", "restore-memory", "ready"):
        assert fake_api.report_of("w1", phase, "done"), phase


MEMMAP = "0-9fc00u,100000-60000000u,feffc000-ff000000r"


def _crashed_agent(api: FakeAgentApi, system: FakeSystem) -> ag.Agent:
    """An agent as the return FPBL runs it: the crash kernel (elfcorehdr=), the node's map passed on."""
    agent = _agent(api, system, mode="return", memmap=MEMMAP)
    agent.settings = ag.parse_cmdline(agent.settings.cmdline + " elfcorehdr=884K")
    return agent


def test_a_return_with_memory_scrub_zeroes_the_previous_kernels_memory(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    (tmp_path / "dev/mem").write_bytes(b"\xaa" * 32 * dk.MIB)  # physical memory, as /dev/mem shows it
    (tmp_path / "proc/iomem").write_text("01000000-017fffff : System RAM\n")  # the crash kernel's own
    fake_api.push({"action": "wipe", "job": "w9", "policy": "metadata", "scrub_memory": True})
    agent = _agent(fake_api, system, mode="return", memmap="0-9fc00u,100000-2000000u")
    agent.settings = ag.parse_cmdline(agent.settings.cmdline + " elfcorehdr=884K")
    agent.run(rounds=1)
    done = fake_api.report_of("w9", "scrub-memory", "done")
    assert done, fake_api.reports
    assert done["detail"].startswith(
        f"{23 * dk.MIB} bytes in 2 ranges outside this kernel zeroed and read back;"
    )
    assert done["detail"].endswith("(its RAM: 0x1000000-0x1800000)")
    data = (tmp_path / "dev/mem").read_bytes()
    assert data[dk.MIB : 16 * dk.MIB] == bytes(15 * dk.MIB) and data[24 * dk.MIB :] == bytes(8 * dk.MIB)
    assert set(data[16 * dk.MIB : 24 * dk.MIB]) == {0xAA}, "the crash kernel's own memory is left alone"
    assert set(data[: dk.MIB]) == {0xAA}, "the firmware's first MiB is left alone"
    assert fake_api.report_of("w9", "ready", "done")


def test_a_memory_scrub_that_fails_ends_the_return_in_error(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    (tmp_path / "proc/iomem").write_text("01000000-017fffff : System RAM\n")  # and no dev/mem
    fake_api.push({"action": "wipe", "job": "w8", "policy": "metadata", "scrub_memory": True})
    _crashed_agent(fake_api, system).run(rounds=1)
    error = fake_api.report_of("w8", "scrub-memory", "error")
    assert error and error["detail"].startswith("cannot open "), error
    assert not fake_api.report_of("w8", "ready", "done")


def test_wipe_in_the_crash_kernel_is_ready_without_a_second_boot(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    fake_api.push({"action": "wipe", "job": "w2", "policy": "metadata"})
    _crashed_agent(fake_api, system).run(rounds=1)
    assert fake_api.checkins[0][1]["mode"] == "return"
    assert fake_api.report_of("w2", "verify-wipe", "done")
    restore = fake_api.report_of("w2", "restore-memory", "done")
    assert restore and restore["detail"] == f"at the next deploy: {0x9FC00 + 0x5FF00000} bytes usable"
    assert fake_api.report_of("w2", "ready", "done")
    assert system.kexecs == [] and system.jumps == 0, "the node idles in the return FPBL"
    assert system.published == [], "the map is shown to kexec-tools only for a deploy"


def _deploy_item(api: FakeAgentApi, job: str, initrd: bytes = b"") -> dict[str, Any]:
    customer = initrd or gzip.compress(images.write_cpio([images.file_entry("init", b"x")]), mtime=0)
    return {"action": "deploy", "job": job, "kernel": api.artifact("k", b"KERNEL"),
            "initrd": api.artifact("i", customer), "disk": None, "cmdline": "console=ttyS0"}  # fmt: skip


def test_a_deploy_from_the_crash_kernel_hands_the_customer_the_full_memory_map(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    system.set_available(250_000)
    fake_api.push(_deploy_item(fake_api, "j5"))
    _crashed_agent(fake_api, system).run(rounds=1)
    assert system.published == [kx.parse_memmap(MEMMAP)], "kexec-tools reads the full map, not the crash one"
    [(kernel, _, cmdline)] = system.kexecs
    assert Path(kernel).read_bytes() == b"KERNEL"
    assert cmdline == "console=ttyS0 rdinit=/rhaas/init crashkernel=448M unknown_nmi_panic=1"
    assert fake_api.report_of("j5", "kexec", "done") and not fake_api.report_of(
        "j5", "restore-memory", "start"
    )
    assert not os.path.exists(tmp_path / "tmp/return-static.cpio"), "copied into the initrd, then freed"


def test_a_deploy_too_big_for_the_crash_kernel_restores_the_memory_first(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    system.set_available(200_000)  # 3 x (kernel + initrd + the return payload) + headroom is more than that
    fake_api.push(_deploy_item(fake_api, "j6", b"\x00" * (20 << 20)))
    _crashed_agent(fake_api, system).run(rounds=1)
    start = fake_api.report_of("j6", "restore-memory", "start")
    assert start and start["detail"] == (  # 3 x (kernel + 20 MiB initrd + 30 MiB payload) + 64 MiB
        "the deploy needs 214 MiB, the return FPBL has 195 MiB available; booting the full FPBL"
        f" ({0x9FC00 + 0x5FF00000} bytes usable)"
    )
    [(kernel, _, cmdline)] = system.kexecs
    assert kernel.endswith("rhaas/fpbl/vmlinuz"), "the full FPBL, not the customer's kernel"
    words = cmdline.split()
    assert words[:2] == ["console=ttyS0", "memmap=exactmap"]
    assert "memmap=0x5ff00000@0x100000" in words and "memmap=0x4000$0xfeffc000" in words
    assert {"rhaas.mode=ready", f"rhaas.memmap={MEMMAP}"} <= set(words)
    assert not any(w.startswith(("elfcorehdr", "irqpoll", "nr_cpus", "iomem", "rhaas.job")) for w in words)
    assert not fake_api.report_of("j6", "download-kernel", "start"), "nothing downloaded before the restore"


def test_a_crash_kernel_without_the_nodes_memory_map_refuses_to_deploy(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    fake_api.push(_deploy_item(fake_api, "j7"))
    agent = _agent(fake_api, system, mode="return")
    agent.settings = ag.parse_cmdline(agent.settings.cmdline + " elfcorehdr=884K")
    agent.run(rounds=1)
    error = fake_api.report_of("j7", "restore-memory", "error")
    assert error and "only the crash region's memory" in error["detail"]
    assert system.kexecs == []


class Stop(Exception):
    """Ends an agent's loop from its sleep (it never ends on its own)."""


def _stop_after(n: int) -> Callable[[float], None]:
    calls = [0]

    def sleep(_seconds: float) -> None:
        calls[0] += 1
        if calls[0] >= n:
            raise Stop

    return sleep


@pytest.fixture(scope="module")
def tls_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two agents' listener keys: the instance's, and an impostor's."""
    root = tmp_path_factory.mktemp("tls")
    for name in ("instance.pem", "impostor.pem"):
        agenttls.ensure_key(root / name)
    return root / "instance.pem", root / "impostor.pem"


def test_the_agent_talks_tls_to_the_pinned_server(tls_keys, tmp_path):
    server = FakeAgentApi(tls_key=tls_keys[0])
    try:
        system = FakeSystem(tmp_path)
        _fake_fpbl(tmp_path)
        server.push({"action": "wipe", "job": "j1", "policy": "metadata"})
        _agent(server, system).run(rounds=2)
        assert server.url.startswith("https://") and len(server.checkins) == 1
        assert server.report_of("j1", "ready", "done"), server.reports
    finally:
        server.close()


def test_the_agent_refuses_an_impostor_loudly_and_tells_it_nothing(tls_keys, tmp_path, capsys):
    """Someone on the provisioning network answers at the server's address with another key, and hands
    out a deploy: the agent sends it no request (so no secret), takes no work, and says why on the
    console each time."""
    impostor = FakeAgentApi(tls_key=tls_keys[1])
    try:
        system = FakeSystem(tmp_path)
        kernel = impostor.artifact("k", b"EVIL KERNEL")
        impostor.push({"action": "deploy", "job": "evil", "kernel": kernel, "initrd": kernel, "disk": None,
                       "cmdline": ""})  # fmt: skip
        settings = _settings(impostor, pin=agenttls.pin_of(tls_keys[0]))
        agent = ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=_stop_after(3))
        with pytest.raises(Stop):
            agent.run(rounds=2)
        with pytest.raises(wire.ImpostorError, match="REFUSED"):
            agent.api.call("GET", "work")
        assert impostor.requests == 0 and impostor.checkins == [] and impostor.polls == []
        assert system.kexecs == [] and impostor.work, "the forged deploy was never taken"
        console = capsys.readouterr().out
        assert console.count("REFUSED") == 3 and agenttls.pin_of(tls_keys[1]) in console, console
    finally:
        impostor.close()


def test_a_pinned_agent_never_falls_back_to_plain_http(tls_keys):
    pin = agenttls.pin_of(tls_keys[0])
    with pytest.raises(ValueError, match="needs rhaas.pin"):
        ag.parse_cmdline("rhaas.agent=https://10.0.0.1:8443 rhaas.node=n rhaas.secret=s")
    with pytest.raises(ValueError, match="needs an https"):
        ag.parse_cmdline(f"rhaas.agent=http://10.0.0.1:8080 rhaas.node=n rhaas.secret=s rhaas.pin={pin}")
    with pytest.raises(ValueError, match="not a SHA-256"):
        ag.parse_cmdline("rhaas.agent=https://10.0.0.1:8443 rhaas.node=n rhaas.secret=s rhaas.pin=abc")
    settings = ag.parse_cmdline(f"rhaas.agent=https://h:8443 rhaas.node=n rhaas.secret=s rhaas.pin={pin}")
    assert f"rhaas.pin={pin}" in settings.passed_on(token="t"), "the return FPBL pins the same server"
    api = ag.Api(settings)
    with pytest.raises(ag.ProtocolError, match="only https"):
        api.download(ag.Artifact("http://h:8080/blob", "00" * 32, 1), lambda b: None, lambda d, t: None)


def test_the_agent_asks_for_work_with_a_long_poll_and_polls_where_the_server_refuses_it(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    slept: list[float] = []
    settings = _settings(fake_api)
    ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=slept.append).run(rounds=2)
    assert fake_api.work_paths == [f"work?wait={ag.WORK_WAIT}"] * 2
    fake_api.long_polls = False
    fake_api.work_paths.clear()
    ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=slept.append).run(rounds=3)
    assert fake_api.work_paths == [f"work?wait={ag.WORK_WAIT}", "work", "work"], "asked once, then polls"
    assert slept[2:] == [fake_api.poll_after] * 2, "no back-off for a refused long poll"


def test_the_agent_reports_unexpected_errors_and_backs_off(fake_api, tmp_path):
    system = FakeSystem(tmp_path)
    os.unlink(tmp_path / "dev/vda")  # the wipe will fail to open it
    fake_api.push({"action": "wipe", "job": "w3", "policy": "full"})
    slept: list[float] = []
    settings = _settings(fake_api)
    agent = ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=slept.append)
    agent.run(rounds=2)
    error = fake_api.report_of("w3", "wipe", "error")
    assert error and "FileNotFoundError" in error["detail"]
    assert slept == [fake_api.poll_after], "a wait answer is honoured, never a spin"


# --- on a real QEMU node: deploy with kexec, return with an NMI ---------------------------------------


def _ram_hits(node: QemuNode, workdir: Path, memory_mb: int, needle: bytes) -> list[int]:
    """Physical addresses of ``needle`` in the node's RAM, read from the host (QMP ``pmemsave``)."""
    dump = workdir / "ram.bin"
    node.qmp("pmemsave", {"val": 0, "size": memory_mb << 20, "filename": str(dump)}, timeout=120)
    try:
        data = dump.read_bytes()
    finally:
        dump.unlink()
    return [m.start() for m in re.finditer(re.escape(needle), data)]


def _inside(address: int, ranges: str) -> bool:
    """Whether ``address`` lies in one of ``ranges`` (``0xa-0xb, 0xc-0xd``, ends exclusive)."""
    for span in ranges.split(", "):
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return True
    return False


def _disk_bytes(disk: Path, workdir: Path) -> bytes:
    raw = workdir / "readback.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(disk), str(raw)], check=True)
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


#: RHAAS_FPBL_FLAVOUR=generic runs the QEMU test with the generic FPBL (on the same virtio node).
FLAVOUR = os.environ.get("RHAAS_FPBL_FLAVOUR", "cloud")


@pytest.fixture(scope="module")
def fpbl():
    from rhaas.provisioning.fpbl import build_fpbl

    return build_fpbl(flavour=FLAVOUR)


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")
def test_deploy_by_kexec_and_return_by_nmi(fpbl, fake_api, tmp_path_factory, nodes):
    workdir = tmp_path_factory.mktemp("fp")  # short: the QMP socket path must fit in a unix socket
    testos = images.build_test_os("fpos", "RHAAS-TESTOS fpos")
    print(f"\nFPBL: kernel {fpbl.sizes['kernel']} B, core initramfs {fpbl.sizes['core']} B "
          f"({fpbl.sizes['core_uncompressed']} B unpacked, {fpbl.sizes['python_modules']} stdlib modules), "
          f"initrd with self-copy {fpbl.sizes['initrd']} B")  # fmt: skip
    memory_mb = 1536
    node = QemuNode(
        "fp", workdir, memory_mb=memory_mb, user_net=True, disk_size="64M", kernel=fpbl.kernel,
        initrd=fpbl.initrd,
        append=fpbl.cmdline_for(
            f"http://10.0.2.2:{fake_api.port}", "fp", SECRET, ip="10.0.2.15/24", gw="10.0.2.2"
        ),
    )  # fmt: skip
    nodes.append(node)
    timings: dict[str, float] = {}

    # (1) the FPBL boots and the agent checks in, ready, with (nearly) all the memory
    started = time.monotonic()
    node.start()
    ready = fake_api.wait_for("ready check-in", lambda: fake_api.checkins, BOOT_TIMEOUT)[0]
    timings["QEMU start -> FPBL check-in"] = ready[0] - started
    first = ready[1]
    assert first["mode"] == "ready" and first["disks"] == [{"name": "vda", "size": 64 * 1024 * 1024}]
    assert first["memory_kb"] > 0.9 * memory_mb * 1024

    # (4) a kernel whose sha256 does not match is refused, and the agent goes on polling
    bad = fake_api.artifact("bad-kernel", testos.kernel.read_bytes(), sha256="00" * 32)
    good_initrd = fake_api.artifact("initrd", testos.initrd.read_bytes())
    fake_api.push({"action": "deploy", "job": "bad", "kernel": bad, "initrd": good_initrd, "disk": None,
                   "cmdline": testos.cmdline})  # fmt: skip
    error = fake_api.wait_for("refusal", lambda: fake_api.report_of("bad", "verify", "error"), BOOT_TIMEOUT)
    assert "sha256" in error["detail"]
    polls = len(fake_api.polls)
    fake_api.wait_for("a poll after the refusal", lambda: len(fake_api.polls) > polls + 1, 60)
    assert not fake_api.report_of("bad", "kexec", "start")

    # (2) deploy: download, verify, write the disk, kexec; the customer OS comes up without firmware
    nonce = os.urandom(6).hex()
    image = bytearray(8 * 1024 * 1024)
    line = f"RHAAS-DISK customer-data {nonce}\n".encode()
    image[: len(line)] = line
    image[5 * 1024 * 1024 : 5 * 1024 * 1024 + 4096] = os.urandom(4096)
    kernel = fake_api.artifact("kernel", testos.kernel.read_bytes())
    kernel["url"] = f"http://10.0.2.2:{fake_api.port}/files/kernel"  # an absolute URL too
    offset = node.console_offset()
    deployed = time.monotonic()
    fake_api.push({"action": "deploy", "job": "dep", "kernel": kernel, "initrd": good_initrd,
                   "disk": fake_api.artifact("disk", bytes(image)), "cmdline": testos.cmdline})  # fmt: skip
    fake_api.wait_for("kexec", lambda: fake_api.report_of("dep", "kexec", "done"), BOOT_TIMEOUT)
    timings["deploy: work -> kexec"] = time.monotonic() - deployed
    node.wait_for_console(r"RHAAS-RETURN armed crash_loaded=1", BOOT_TIMEOUT, offset=offset)
    node.wait_for_console(testos.up_regex, BOOT_TIMEOUT, offset=offset)
    timings["deploy: work -> customer OS up"] = time.monotonic() - deployed
    assert f"RHAAS-DISK customer-data {nonce}" in node.console_text(offset)
    assert node.firmware_boots == 1
    write = fake_api.report_of("dep", "write-disk", "done")
    assert write and "zero bytes skipped" in write["detail"]

    # (3) return: NMI -> the crash FPBL checks in, wipes, and is ready: no second boot
    first_os_kb = testos.memory_kb(node.console_text(offset))
    fake_api.push({"action": "wipe", "job": "ret", "policy": "full"})
    checkins = len(fake_api.checkins)
    nmi = time.monotonic()
    node.nmi()
    back = fake_api.wait_for(
        "return check-in", lambda: [c for c in fake_api.checkins[checkins:] if c[1]["mode"] == "return"], 120
    )[0]
    timings["return: NMI -> return check-in"] = back[0] - nmi
    assert back[1]["memory_kb"] < kx.CRASH_MIB * 1024, "the crash kernel sees only the reserved region"
    fake_api.wait_for("verified wipe", lambda: fake_api.report_of("ret", "verify-wipe", "done"), BOOT_TIMEOUT)
    fake_api.wait_for("ready report", lambda: fake_api.report_of("ret", "ready", "done"), 60)
    timings["return: NMI -> wiped and ready"] = time.monotonic() - nmi
    restore = fake_api.report_of("ret", "restore-memory", "done")
    assert restore and restore["detail"].startswith("at the next deploy")
    assert back[1]["boot_id"] != first["boot_id"]
    # Without a memory scrub (the default) the first customer's data is still in the node's RAM.
    left_in_ram = _ram_hits(node, workdir, memory_mb, f"customer-data {nonce}".encode())
    assert left_in_ram, "the customer's data should be in RAM: the scrub's check below would prove nothing"

    # (5) the next customer, deployed from the return FPBL, gets all the memory the first one had
    nonce2 = os.urandom(6).hex()
    image2 = f"RHAAS-DISK customer-data {nonce2}\n".encode().ljust(2 * 1024 * 1024, b"\0")
    offset = node.console_offset()
    again = time.monotonic()
    fake_api.push({"action": "deploy", "job": "dep2", "kernel": kernel, "initrd": good_initrd,
                   "disk": fake_api.artifact("disk2", image2), "cmdline": testos.cmdline})  # fmt: skip
    node.wait_for_console(r"RHAAS-RETURN armed crash_loaded=1", BOOT_TIMEOUT, offset=offset)
    node.wait_for_console(testos.up_regex, BOOT_TIMEOUT, offset=offset)
    timings["deploy from the return FPBL: work -> customer OS up"] = time.monotonic() - again
    assert f"RHAAS-DISK customer-data {nonce2}" in node.console_text(offset)
    second_os_kb = testos.memory_kb(node.console_text(offset))
    assert abs(second_os_kb - first_os_kb) < 0.02 * first_os_kb, (first_os_kb, second_os_kb)
    assert len(fake_api.checkins) == checkins + 1, "no FPBL booted between the return and the deploy"

    # (6) and that customer returns the same way: the cycle repeats with no full FPBL in between; this
    # time the disk is discarded and the RAM scrubbed
    fake_api.push({"action": "wipe", "job": "ret2", "policy": "discard", "scrub_memory": True})
    scrubbed = time.monotonic()
    node.nmi()
    fake_api.wait_for("ready again", lambda: fake_api.report_of("ret2", "ready", "done"), BOOT_TIMEOUT)
    timings["return with discard and memory scrub: NMI -> ready"] = time.monotonic() - scrubbed
    assert [c[1]["mode"] for c in fake_api.checkins] == ["ready", "return", "return"]
    wiped = fake_api.report_of("ret2", "wipe", "done")
    assert wiped and "discarded;" in wiped["detail"], wiped
    scrub = fake_api.report_of("ret2", "scrub-memory", "done")
    assert scrub and "zeroed and read back" in scrub["detail"], fake_api.reports
    outside = int(scrub["detail"].split()[0])
    assert outside > (memory_mb - kx.CRASH_MIB - 16) << 20, scrub["detail"]  # all but the crash region, holes
    assert "not reachable" not in scrub["detail"]
    print(scrub["detail"])
    own = scrub["detail"].split("(its RAM: ", 1)[1].split(")", 1)[0]
    for needle in (nonce, nonce2):
        hits = _ram_hits(node, workdir, memory_mb, f"customer-data {needle}".encode())
        print(f"RAM after the scrub: customer-data {needle} at {[hex(a) for a in hits]}; FPBL has {own}")
        assert not [a for a in hits if not _inside(a, own)], "the customer's memory was scrubbed"
    assert node.firmware_boots == 1, "no firmware ran on the fast path"
    assert "cannot publish" not in node.console_text()

    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s")
    print(f"memory_kb: FPBL {first['memory_kb']}, return FPBL {back[1]['memory_kb']}; "
          f"customer OS {first_os_kb} then {second_os_kb}")  # fmt: skip
    node.stop()
    data = _disk_bytes(node.disk, workdir)
    assert nonce.encode() not in data and data.count(0) == len(data), "the customer's data is gone"


@pytest.mark.slow
def test_rhaas_admin_fpbl_build_is_a_cache_hit_the_second_time(fpbl):
    done = subprocess.run([sys.executable, "-m", "rhaas.admin", "fpbl", "build", "--flavour", FLAVOUR,
                           "--json"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = json.loads(done.stdout)
    assert built["key"] == fpbl.key and built["built"] is False
    assert Path(built["kernel"]).stat().st_size == fpbl.sizes["kernel"] and Path(built["initrd"]).exists()
    assert "kexec-tools" in built["packages"] and "busybox-static" in built["packages"]


def test_the_return_fpbl_checks_in_with_its_token_once_then_works_with_the_secret_it_is_given(
    fake_api, tmp_path
):
    system = FakeSystem(tmp_path)
    _fake_fpbl(tmp_path)
    fake_api.token, fake_api.secret = "return-token-of-j2", "dead-after-kexec"
    settings = ag.parse_cmdline(
        f"console=ttyS0 rhaas.agent={fake_api.url} rhaas.node=n1 rhaas.token=return-token-of-j2"
        f" rhaas.mode=return rhaas.memmap={MEMMAP} elfcorehdr=884K"
    )
    assert settings.secret == "" and settings.token == "return-token-of-j2"
    fake_api.push({"action": "wipe", "job": "w3", "policy": "metadata"})
    agent = ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=lambda s: None)
    agent.run(rounds=1)
    [(_, checkin)] = fake_api.checkins
    assert checkin["mode"] == "return" and checkin["elfcorehdr"] is True
    assert fake_api.token is None and agent.settings.secret == fake_api.token_secret
    assert fake_api.denied == 0 and fake_api.report_of("w3", "ready", "done")
    assert "rhaas.secret=s3cret-after-return" in agent.settings.passed_on()
    restarted = ag.Agent(settings, ag.Api(settings, timeout=5), system, sleep=lambda s: None)
    assert restarted.settings.token is None and restarted.api.headers == agent.api.headers
