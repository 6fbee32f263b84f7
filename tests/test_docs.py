"""The docs cannot rot: every ``rhaas``/``rhaas-admin`` command line in README.md and docs/*.md must parse
against the real command tree (command names, options, argument counts), and every script the README
names must exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from rhaas.admin import main as admin_cli
from rhaas.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.DOTALL)


def command_lines() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split("  #")[0].strip().rstrip("&").strip()
                words = shlex.split(line, comments=True) if line else []
                if words and Path(words[0]).name in ("rhaas", "rhaas-admin"):
                    found.append((f"{doc.name}: {line}", line))
    return found


LINES = command_lines()


def test_the_docs_have_command_lines():
    assert len(LINES) > 30


@pytest.mark.parametrize(("where", "line"), LINES, ids=[w for w, _ in LINES])
def test_command_line_parses(where: str, line: str) -> None:
    words = shlex.split(line, comments=True)
    command: click.Command = cli if Path(words[0]).name == "rhaas" else admin_cli
    args = words[1:]
    ctx = command.make_context(Path(words[0]).name, list(args), resilient_parsing=False)
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]  # click 8.2+: the subcommand and its args
        assert rest, f"{where}: a group without a command"
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, f"{where}: no command {name}"
        command = sub
        ctx = command.make_context(name or "", list(rest), parent=ctx)


def test_readme_scripts_exist_and_are_executable():
    readme = (ROOT / "README.md").read_text()
    for script in re.findall(r"^(scripts/\w+)", readme, re.MULTILINE):
        path = ROOT / script
        assert path.exists() and path.stat().st_mode & 0o111, script
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/test" in ci, ".ci/run must run the README's test command"
