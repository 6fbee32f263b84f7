"""The import rules that keep rhaas's layers apart, read from the source (nothing is imported).

- ``drivers`` import no backend, core, API or worker: a driver is handed what it needs (the upstream
  drivers get their upstream from the backend that builds them);
- ``backends`` import no core, API or worker: core asks a backend, never the reverse;
- ``core`` imports no API or worker, and its modules import one another without a cycle;
- the API's routes import no driver: they call core, which gets drivers from the backend;
- nothing that serves the API loads the lab; image building and the boot service use no service layer;
  the client and the CLI reach the service only over HTTP; the agent imports only itself.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: an import deferred
to call time still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rhaas"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py") if "migrations" not in p.parts}


def _resolve(name: str) -> str | None:
    """The rhaas module an imported name lives in (``rhaas.core.pool.grow`` → ``rhaas.core.pool``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The rhaas modules that ``module`` imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name) for alias in node.names if alias.name.startswith("rhaas"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.startswith("rhaas"):
                found.update(_resolve(f"{base}.{alias.name}") for alias in node.names)
    found.discard(None)
    found.discard(module)
    return {name for name in found if name is not None}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


#: What serves the API or the nodes in production: it never loads the lab (virtual hardware).
_SERVICE = ("rhaas.api", "rhaas.core", "rhaas.backends", "rhaas.drivers", "rhaas.worker", "rhaas.db")
_LAB = ("rhaas.lab", "rhaas.demo", "rhaas.demo_lab")

RULES = [
    ("rhaas.drivers", ("rhaas.backends", "rhaas.core", "rhaas.api", "rhaas.worker", *_LAB)),
    ("rhaas.backends", ("rhaas.core", "rhaas.api", "rhaas.worker", *_LAB)),
    ("rhaas.core", ("rhaas.api", "rhaas.worker", *_LAB)),
    ("rhaas.worker", ("rhaas.api", *_LAB)),
    ("rhaas.api", _LAB),
    ("rhaas.api.routes", ("rhaas.drivers",)),
    # Image building and the boot service serve the product, not only the lab; the client and the CLI
    # reach the service only over HTTP.
    ("rhaas.imaging", (*_SERVICE, "rhaas.provisioning", "rhaas.client", "rhaas.cli", *_LAB)),
    ("rhaas.provisioning", (*_SERVICE, "rhaas.client", "rhaas.cli", *_LAB)),
    ("rhaas.client", (*_SERVICE, "rhaas.provisioning", "rhaas.cli", *_LAB)),
    ("rhaas.cli", _SERVICE),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[layer for layer, _ in RULES])
def test_a_layer_imports_nothing_above_it(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if _under(module, layer)
        for target in imports_of(module)
        if any(_under(target, bad) for bad in forbidden)
    )
    assert not wrong, "\n".join(wrong)


def test_core_modules_import_one_another_without_a_cycle() -> None:
    core = {m for m in MODULES if _under(m, "rhaas.core")}
    graph = {m: {t for t in imports_of(m) if t in core} for m in core}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(core):
        visit(module, [])


def test_the_checker_sees_imports() -> None:
    """The checker itself: it finds a module-level import, and one made inside a function."""
    assert "rhaas.drivers.switch.base" in imports_of("rhaas.drivers.switch.mock")
    assert "rhaas.api.app" in imports_of("rhaas.admin")  # inside `serve`


def test_the_agent_imports_only_itself() -> None:
    """The agent ships inside the FPBL with the standard library and nothing else of rhaas."""
    wrong = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if _under(module, "rhaas.agent")
        for target in imports_of(module)
        if not _under(target, "rhaas.agent")
    )
    assert not wrong, "\n".join(wrong)
