"""A whole-disk image booted straight from (a copy of) its own disk in QEMU, with no rhaas: the baseline a
provision is measured against. Same node shape as the lab's (TCG, one vCPU, the firmware, NIC and disk of
a lab profile, `rhaas.lab.qemu.PROFILES`); the SSH key reaches cloud-init through a NoCloud seed (an ISO
labelled ``cidata``, on a virtio disk of its own), and SSH is forwarded from a port on 127.0.0.1. The QEMU
process is the caller's to end (`Straight.stop`, by its PID).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rhaas.lab.desk import SSH_OPTIONS
from rhaas.lab.qemu import PROFILES, disk_args, uefi_firmware_args, uefi_variables
from rhaas.lab.servers import free_port


def seed_iso(directory: Path, hostname: str, public_key: str) -> Path:
    """A NoCloud seed: an ISO labelled ``cidata`` with meta-data and user-data (``genisoimage``)."""
    seed = directory / "seed"
    seed.mkdir(exist_ok=True)
    (seed / "meta-data").write_text(f"instance-id: {hostname}-1\nlocal-hostname: {hostname}\n")
    (seed / "user-data").write_text(f"#cloud-config\nssh_authorized_keys:\n  - {public_key}\n")
    iso = directory / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
                    str(seed / "user-data"), str(seed / "meta-data")], check=True)  # fmt: skip
    return iso


class Straight:
    """``disk`` (raw) copied into ``directory`` and booted with ``memory_mb`` MB and a ``cpu`` vCPU, on the
    hardware of lab profile ``profile``; ``started`` is the monotonic time QEMU was started."""

    def __init__(
        self,
        disk: Path,
        directory: Path,
        memory_mb: int,
        key: Path,
        public_key: str,
        cpu: str = "qemu64",
        profile: str = "virtio",
    ) -> None:
        hardware = PROFILES[profile]
        directory.mkdir(parents=True, exist_ok=True)
        copy = directory / "disk.raw"
        subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
        iso = seed_iso(directory, "straight", public_key.strip())
        self.key, self.port, self.console = key, free_port(), directory / "console.log"
        cmd = ["qemu-system-x86_64", "-machine", "pc", "-m", str(memory_mb), "-smp", "1", "-cpu", cpu,
               "-display", "none",
               "-monitor", "none", "-serial", f"file:{self.console}",
               "-drive", f"file={iso},if=virtio,format=raw,readonly=on",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
               "-device", f"{hardware.nic_model},netdev=n0,romfile="]  # fmt: skip
        # bootindex: the firmware boots this disk, not the seed's.
        cmd += disk_args(hardware.disk_bus, f"file={copy},format=raw", "straight", ",bootindex=0")
        if hardware.firmware == "uefi":
            variables = directory / "efivars.fd"
            variables.unlink(missing_ok=True)  # a fresh firmware, as the disk is a fresh copy
            uefi_variables(variables, "the straight boot")
            cmd += uefi_firmware_args(variables)
        self.started = time.monotonic()
        self.qemu = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=(directory / "qemu.log").open("w")
        )

    def ssh(
        self, command: str, timeout: float = 60, user: str = "debian"
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-i", str(self.key), *SSH_OPTIONS, "-p", str(self.port), f"{user}@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def answers(self) -> bool:
        """Whether SSH lets us in; raises if QEMU exited."""
        if self.qemu.poll() is not None:
            raise RuntimeError(f"QEMU exited ({self.qemu.returncode})")
        try:
            return self.ssh("true", timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        self.qemu.kill()
        self.qemu.wait(timeout=30)
