"""A built FPBL as the rest of rhaas sees it, and the exported copy a boot service serves.

`Fpbl` says where an FPBL's files are and what it is made of. `export` copies one into a directory
(``vmlinuz``, ``initrd`` and ``fpbl.json``: the directory ``[provisioning] fpbl_dir`` names) and
`load_exported` reads it back: the API server calls it for the FPBL's command line.

This module must not import the builder (`rhaas.provisioning.fpbl`) or anything that builds images: the
API imports it, and a server has no business with apt or the lab.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fpbl:
    """A built FPBL: boot ``kernel`` with ``initrd`` and ``cmdline`` plus the agent's settings."""

    kernel: Path
    initrd: Path
    core: Path
    cmdline: str
    manifest: Path
    #: Every Debian package the FPBL took files from: name -> version.
    packages: dict[str, str]
    #: Bytes: kernel, core (the initramfs proper), initrd (core + self-copy), and uncompressed core.
    sizes: dict[str, int]
    key: str
    #: False if this call found the build in the cache.
    built: bool

    def cmdline_for(
        self,
        agent: str,
        node: str,
        secret: str,
        ip: str | None = None,
        gw: str | None = None,
        extra: str = "",
    ) -> str:
        """The command line for a node: the FPBL's own plus the agent's settings."""
        parts = [self.cmdline, f"rhaas.agent={agent}", f"rhaas.node={node}", f"rhaas.secret={secret}"]
        parts += [f"rhaas.{k}={v}" for k, v in (("ip", ip), ("gw", gw)) if v]
        return " ".join([*parts, extra] if extra else parts)

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def export(fpbl: Fpbl, out: Path) -> Fpbl:
    """Copy the FPBL's kernel and initrd to ``out`` (``vmlinuz``, ``initrd``) with ``fpbl.json`` (its
    command line, package versions and sizes); the copy, as an `Fpbl`. Files are replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for source, name in ((fpbl.kernel, "vmlinuz"), (fpbl.initrd, "initrd")):
        tmp = out / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        tmp.rename(out / name)
    exported = dataclasses.replace(fpbl, kernel=out / "vmlinuz", initrd=out / "initrd")
    tmp = out / "fpbl.json.tmp"
    tmp.write_bytes(json.dumps(exported.as_dict(), indent=2, sort_keys=True).encode())
    tmp.rename(out / "fpbl.json")
    return exported


def load_exported(directory: Path) -> Fpbl:
    """The FPBL `export` wrote to ``directory``; OSError or ValueError if it is not there or damaged."""
    data = json.loads((directory / "fpbl.json").read_text())
    paths = {k: Path(data[k]) for k in ("core", "manifest")}
    return Fpbl(
        kernel=directory / "vmlinuz", initrd=directory / "initrd", cmdline=str(data["cmdline"]),
        packages=dict(data["packages"]), sizes=dict(data["sizes"]), key=str(data["key"]), built=False,
        **paths,
    )  # fmt: skip
