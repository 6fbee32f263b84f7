"""A lab node for fast provisioning without a switch: a QEMU node on QEMU's user-mode network, with its
own virtual BMC process speaking real IPMI on 127.0.0.1.

The node reaches the host's loopback as 10.0.2.2, so an rhaas server on 127.0.0.1 is its agent API. Power
on boots the FPBL straight from its kernel and initrd (QEMU's direct kernel boot stands in for the PXE
boot of the full lab), with the command line last given to `FastNode.boot_fpbl`; from then on everything
goes as on real hardware: kexec into the customer's OS, NMI through the BMC back into the FPBL, power
cycle for the reboot path. The BMC is `rhaas.lab.daemon` in a process of its own (pyghmi's I/O is
process-global: two BMCs in one process stall each other), which owns the QEMU process; this object
reads the node's console and the BMC's counters from their files. Used by
``bench/provision.py`` and the provisioning tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from rhaas.lab.qemu import QemuNode, mac_for
from rhaas.lab.vbmc import BMCState

#: The node's address on QEMU's user-mode network, and the host's loopback as the node sees it.
NODE_IP, HOST_IP = "10.0.2.15/24", "10.0.2.2"
BMC_USER = "admin"


class FastNodeError(RuntimeError):
    """The node's BMC did not start, or refused a power call."""


class FastNode:
    """One node and its BMC; `close` (or leaving ``with``) stops both, by PID, however the caller ends."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        bmc_password: str,
        kernel: Path,
        initrd: Path,
        memory_mb: int = 1536,
        disk_size: str = "64M",
        timeout: float = 30.0,
        ssh_port: int | None = None,
    ) -> None:
        self.name, self.bmc_password = name, bmc_password
        self.state_file = workdir / f"{name}.bmc.json"
        self.append_file = workdir / f"{name}.append"
        self.append_file.write_text("")
        self.state_file.unlink(missing_ok=True)
        self.node = QemuNode(
            name, workdir, memory_mb=memory_mb, user_net=True, disk_size=disk_size, ssh_port=ssh_port
        )
        cmd = [sys.executable, "-m", "rhaas.lab.daemon", "--workdir", str(workdir), "--node", name]
        cmd += ["--port", "0", "--user", BMC_USER, "--mac", mac_for(name), "--user-net"]
        cmd += ["--memory", str(memory_mb), "--disk-size", disk_size]
        cmd += ["--ssh-port", str(ssh_port)] if ssh_port else []
        cmd += ["--kernel", str(kernel), "--initrd", str(initrd), "--append-file", str(self.append_file)]
        self._log = open(workdir / f"{name}.bmc.log", "ab")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "RHAAS_LAB_BMC_PASSWORD": bmc_password}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self.port = self._wait_serving(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_serving(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = BMCState.read(self.state_file)
                if state.serving and state.pid == self.proc.pid:
                    return state.port
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise FastNodeError(f"the BMC of {self.name} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise FastNodeError(f"the BMC of {self.name} does not serve after {timeout:g} s")
            time.sleep(0.05)

    def bmc_state(self) -> BMCState:
        return BMCState.read(self.state_file)

    def boots(self) -> int:
        """Firmware boots so far (power-ons from off, resets, power cycles), as the BMC counts them."""
        return self.bmc_state().boots

    def nmis(self) -> int:
        return self.bmc_state().nmis

    def ipmitool(self, *args: str) -> str:
        """Run ``ipmitool -I lanplus`` against this node's BMC; FastNodeError if it fails."""
        cmd = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", BMC_USER, "-E"]
        env = {**os.environ, "IPMI_PASSWORD": self.bmc_password}
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env, check=False)
        if done.returncode != 0:
            raise FastNodeError(f"ipmitool {' '.join(args)} on {self.name}: {done.stderr.strip()}")
        return done.stdout

    def boot_fpbl(self, cmdline: str) -> None:
        """Power on (through the BMC) into the FPBL; ``cmdline`` is the FPBL's own plus its enrolment's."""
        self.append_file.write_text(f"{cmdline} rhaas.ip={NODE_IP} rhaas.gw={HOST_IP}\n")
        self.ipmitool("chassis", "power", "on")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.node.stop()  # the QEMU outlives its BMC on purpose (rhaas.lab.daemon): end it by pidfile
            self._log.close()

    def __enter__(self) -> FastNode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def agent_url(port: int) -> str:
    """The agent API of an rhaas server on the host's loopback ``port``, as a `FastNode` reaches it."""
    return f"https://{HOST_IP}:{port}"
