"""The agent's settings, read from the kernel command line (standard library only).

The FPBL's boot loader (iPXE, or the agent itself before a kexec) puts them there::

    rhaas.agent=https://10.0.2.2:8443  base URL of the agent API
    rhaas.pin=<sha256 hex>             the SHA-256 of that listener's TLS certificate: the agent talks to
                                       no other server (https:// needs it; http:// is for tests only)
    rhaas.node=n1                      this node's name
    rhaas.secret=...                   the agent's secret (a network boot's; replaced at each deploy)
    rhaas.token=...                    instead of a secret, in the return FPBL: the deploy's return token,
                                       good for one return check-in (the customer can read it)
    rhaas.ip=10.0.2.15/24 rhaas.gw=10.0.2.2   static address (the init script configures eth0)
    rhaas.ip=10.0.0.11 rhaas.netmask=255.255.255.0   the same, as a network boot's iPXE script says it
    rhaas.mode=ready|return            return: booted as the crash kernel after an NMI
    rhaas.memmap=...                   the node's full memory map (set by the agent itself, see kexec.py)

This module only parses; it reads no file and talks to no one.
"""

from __future__ import annotations

import urllib.parse
from typing import NamedTuple

from rhaas.agent import kexec


class Settings(NamedTuple):
    agent: str
    node: str
    secret: str
    mode: str = "ready"
    ip: str | None = None
    gw: str | None = None
    memmap: str | None = None
    cmdline: str = ""
    #: The deploy's return token (the return FPBL has it instead of a secret; see `passed_on`).
    token: str | None = None
    #: The SHA-256 of the agent API's TLS certificate (None: plain HTTP, which authenticates no server).
    pin: str | None = None

    @property
    def crashed(self) -> bool:
        """Whether this kernel is the crash kernel (it then sees only the reserved memory)."""
        return "elfcorehdr=" in self.cmdline

    def passed_on(self, token: str | None = None) -> list[str]:
        """The settings the next FPBL needs, as kernel parameters (without mode). With ``token`` (a return
        FPBL's, which the customer's OS can read) that token stands in for the agent's secret."""
        credential = f"rhaas.token={token}" if token else f"rhaas.secret={self.secret}"
        args = [f"rhaas.agent={self.agent}", f"rhaas.node={self.node}", credential]
        args += [f"rhaas.{k}={v}" for k, v in (("pin", self.pin), ("ip", self.ip), ("gw", self.gw)) if v]
        return args


def parse_cmdline(text: str) -> Settings:
    """The agent's settings from a kernel command line. Raises ValueError if one is missing or bad."""
    found: dict[str, str] = {}
    for arg in text.split():
        if arg.startswith("rhaas.") and "=" in arg:
            key, value = arg[len("rhaas.") :].split("=", 1)
            found[key] = value
    missing = [k for k in ("agent", "node") if not found.get(k)]
    if not found.get("secret") and not found.get("token"):
        missing.append("secret")
    if missing:
        raise ValueError("the kernel command line lacks " + ", ".join(f"rhaas.{k}=" for k in missing))
    url = urllib.parse.urlsplit(found["agent"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"rhaas.agent={found['agent']} is not an https:// URL")
    pin = found.get("pin") or None
    if pin is not None and (len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin.lower())):
        raise ValueError(f"rhaas.pin={pin[:80]} is not a SHA-256 (64 hex digits)")
    if (url.scheme == "https") != (pin is not None):
        raise ValueError(
            f"rhaas.agent={found['agent']} needs rhaas.pin= (the SHA-256 of its certificate)"
            if pin is None
            else f"rhaas.pin= needs an https:// rhaas.agent=, not {found['agent']}"
        )
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
        agent=found["agent"].rstrip("/"), node=found["node"], secret=found.get("secret", ""), mode=mode,
        ip=ip, gw=found.get("gw") or None, memmap=found.get("memmap"),
        cmdline=text.strip(), token=found.get("token") or None, pin=pin.lower() if pin else None,
    )  # fmt: skip
