"""The docs cannot rot.

- Every ``rhaas``/``rhaas-admin`` command line in a shell block of README.md and docs/*.md parses against
  the real command tree (command names, options, argument counts).
- Every block marked runnable (``<!-- runnable -->``; the convention is in docs/developers.md and
  `tests.docs_runner`) runs: one real ``rhaas-admin serve`` per file, the file's runnable blocks in
  document order, each command with bash, in a fresh working directory; a command must succeed and print
  the output its ``console`` block shows.
- Every TOML block is a valid settings file, and every script the README names exists.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
from docs_runner import DOCS, ROOT, DocShell, all_blocks, missing_output, parse

from rhaas.admin import main as admin_cli
from rhaas.cli.main import cli
from rhaas.config import load_settings
from rhaas.lab.servers import Server

#: The administrator of each file's server: the credentials docs/admin.md creates.
ADMIN = ("admin", "a long secret")
#: The VLAN pool of each file's server: docs/admin.md's.
VLANS = "1000-1999"


def command_lines() -> list[tuple[str, str]]:
    found = []
    for block in all_blocks():
        if block.hidden:  # set-up for the runnable blocks: it runs, so it is checked there
            continue
        for command in block.commands:
            line = command.one_line.split("  #")[0].strip().rstrip("&").strip()
            words = shlex.split(line, comments=True) if line else []
            if words and Path(words[0]).name in ("rhaas", "rhaas-admin"):
                found.append((f"{command.where}: {line}", line))
    return found


LINES = command_lines()
RUNNABLE_DOCS = [doc for doc in DOCS if any(block.runnable for block in parse(doc)[0])]


def test_the_docs_have_command_lines():
    assert len(LINES) > 30


def test_runnable_markers_are_well_formed():
    problems = [problem for doc in DOCS for problem in parse(doc)[1]]
    assert not problems, "\n".join(problems)
    assert len(RUNNABLE_DOCS) >= 5, [doc.name for doc in RUNNABLE_DOCS]


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


def _environment(home: Path, server: Server) -> dict[str, str]:
    """What the docs assume: .venv/bin first on PATH, and RHAAS_* naming this file's server and its admin
    (none of the caller's own RHAAS_*/HIL_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RHAAS_", "HIL_"))}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env.update(RHAAS_ENDPOINT=server.url, RHAAS_USERNAME=ADMIN[0], RHAAS_PASSWORD=ADMIN[1])
    return env


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=[doc.name for doc in RUNNABLE_DOCS])
def test_runnable_blocks_run(doc: Path, tmp_path: Path) -> None:
    blocks = [block for block in parse(doc)[0] if block.runnable]
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    (workdir / ".venv").symlink_to(ROOT / ".venv")  # the README's commands run from a clone's root
    log = tmp_path / "server.log"
    server = Server(f"sqlite:///{tmp_path / 'server.sqlite3'}", log, "--vlans", VLANS, admin=ADMIN)
    server.start()
    shell = DocShell(workdir, _environment(home, server))
    try:
        for block in blocks:
            for command in block.commands:
                rc, output = shell.run(command)
                if rc != 0:
                    pytest.fail(
                        f"{command.where}: `{command.one_line}` exited with status {rc}; it printed:\n"
                        f"{output}\n(last lines of the server log:)\n{log.read_text()[-1500:]}",
                        pytrace=False,
                    )
                missing = missing_output(command.expected, output)
                if missing is not None:
                    pytest.fail(
                        f"{command.where}: `{command.one_line}` did not print the line {missing!r} the doc "
                        f"shows; it printed:\n{output}",
                        pytrace=False,
                    )
    finally:
        shell.close()
        server.stop()
    total = sum(seconds for seconds, _ in shell.timings)
    print(f"{doc.name}: {len(blocks)} blocks, {len(shell.timings)} commands, {total:.1f} s")
    for seconds, command in shell.timings:
        print(f"  {seconds:5.2f} s  {command.where}  {command.one_line[:80]}")


TOML = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
TOML_BLOCKS = [(doc, text) for doc in DOCS for text in TOML.findall(doc.read_text())]


@pytest.mark.parametrize(
    ("doc", "text"), TOML_BLOCKS, ids=[f"{doc.name}-{i}" for i, (doc, _) in enumerate(TOML_BLOCKS)]
)
def test_toml_block_is_valid_settings(doc: Path, text: str, tmp_path: Path) -> None:
    tomllib.loads(text)
    path = tmp_path / "settings.toml"
    path.write_text(text)
    load_settings(path)


def test_developers_md_names_the_next_migration():
    newest = max(
        int(p.name[:4]) for p in (ROOT / "rhaas/db/migrations/versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )
    named = re.findall(r"rev_id='(\d{4})'", (ROOT / "docs/developers.md").read_text())
    assert named == [f"{newest + 1:04}"], (
        f"docs/developers.md: rev_id {named}, the next free is {newest + 1:04}"
    )


def test_readme_scripts_exist_and_are_executable():
    readme = (ROOT / "README.md").read_text()
    for script in re.findall(r"^(scripts/\w+)", readme, re.MULTILINE):
        path = ROOT / script
        assert path.exists() and path.stat().st_mode & 0o111, script
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/test" in ci, ".ci/run must run the README's test command"
