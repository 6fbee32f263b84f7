"""What production code loads: never the lab (virtual hardware for tests and demos), pyghmi, sushy or
qemu.qmp (BMC libraries load with the driver that uses them).

The API server, the ``rhaas`` and ``rhaas-admin`` command lines and the boot service run on machines
that have no lab; the lab, the demo and their commands load only when used. Each case runs in a fresh
interpreter, so that nothing a test imported before counts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Top-level names (a package and everything under it) production code must not load.
FORBIDDEN = ("rhaas.lab", "pyghmi", "sushy", "qemu")

_REPORT = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"

#: The boot-service command's body, run with `serve` replaced: the imports of the command itself count.
_BOOT_SERVICE = """
import tempfile
from click.testing import CliRunner
import rhaas.admin
import rhaas.provisioning.bootservice as bootservice
bootservice.serve = lambda *args, **kwargs: 0
with tempfile.TemporaryDirectory() as tmp:
    done = CliRunner().invoke(rhaas.admin.main, ["boot-service", "--address", "10.0.0.1/24", "--dir", tmp])
assert done.exit_code in (0, 1), done.output  # 1: no dnsmasq on this machine
"""

#: ``rhaas --help`` and ``rhaas lab --help`` list every command, with its help, without loading them.
_CLI_HELP = """
from click.testing import CliRunner
from rhaas.cli.main import cli
for args in (["--help"], ["lab", "--help"], ["lab", "headnode", "--help"], ["demo", "--help"]):
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
"""

CASES = {
    "the API app": "import rhaas.api.app",
    "the rhaas command line": "import rhaas.cli.main",
    "rhaas --help": _CLI_HELP,
    "the rhaas-admin command line": "import rhaas.admin",
    "the boot service": "import rhaas.provisioning.bootservice",
    "rhaas-admin boot-service": _BOOT_SERVICE,
    "the FPBL manifest reader": "import rhaas.provisioning.manifest",
    "the FPBL builder": "import rhaas.provisioning.fpbl",
}


def _loaded(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", code + _REPORT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


@pytest.mark.parametrize("code", CASES.values(), ids=CASES.keys())
def test_production_code_loads_no_lab(code):
    assert _forbidden(_loaded(code)) == []


def test_the_check_sees_the_lab_when_it_is_loaded():
    """The check itself works: importing the lab is seen."""
    found = _forbidden(_loaded("import rhaas.lab.vbmc"))
    assert "rhaas.lab.vbmc" in found and "pyghmi" in found


def test_the_lab_and_demo_commands_load_only_when_looked_up():
    loaded = _loaded("import rhaas.cli.main")
    assert "rhaas.cli.lab" not in loaded and "rhaas.demo" not in loaded


def test_the_cli_knows_the_labs_default_headnode_address():
    """``rhaas lab headnode --help`` shows the default without loading the lab: the two must agree."""
    from rhaas.cli import lab as cli_lab
    from rhaas.lab import site

    assert cli_lab.DEFAULT_HEADNODE_IP == site.DEFAULT_HEADNODE_IP
