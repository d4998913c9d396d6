"""The package's import graph: no cycle, and no import that goes up the layers of docs/ARCHITECTURE.md.

Walks every module of ``vaefix_pl`` with :mod:`ast`, module-level and function-local imports alike
(``TYPE_CHECKING`` blocks too), so a cycle cannot hide inside a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaefix_pl"

#: The one definition of the layer order (docs/ARCHITECTURE.md draws it): a module may import only from
#: its own layer or a lower one. Equal ranks are siblings; imports between them must still be acyclic.
LAYERS: dict[str, float] = {
    "core": 0,
    "repair": 1,
    "metrics": 2,
    "vocoders": 3,
    "convert": 3,  # checkpoint converters (loads weights like vocoders/)
    "data": 4,
    "runs": 5,
    "pipeline": 5.5,  # a run's job, writer and plain loop without Lightning (lightning/ adds the base classes)
    "lightning": 6,
    "export": 7,
    "finetune": 7,
    "diagnose": 8,
    "report": 8,
    "testing": 9,  # tiny models: may import any library layer; only cli (the demo) and tests import it
    "cli": 10,
}
#: The facade: lazy re-exports of the public names, may name any layer.
FACADE = "vaefix_pl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import submodule` names the submodule; `from pkg import name` names pkg
            names = [f"{mod}.{a.name}" for a in node.names]
            targets = [t for t in names if t in modules]
            if len(targets) < len(names):
                targets.append(mod)
        for t in targets:
            if t.split(".")[0] != "vaefix_pl":
                continue
            resolved = _resolve(t, modules)
            if resolved and resolved != name:
                found.add(resolved)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else FACADE


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_every_module_has_a_layer():
    unknown = sorted({_layer(m) for m in _modules()} - set(LAYERS) - {FACADE})
    assert not unknown, f"add these to LAYERS and docs/ARCHITECTURE.md: {unknown}"


def test_no_import_cycle_between_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for src, dsts in _graph().items():
        if src == FACADE:
            continue
        graph.setdefault(_layer(src), set()).update(_layer(d) for d in dsts if _layer(d) != _layer(src))
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def test_no_import_goes_up_the_layers():
    upward = [
        f"{src} ({_layer(src)}) imports {dst} ({_layer(dst)})"
        for src, dsts in sorted(_graph().items())
        if src != FACADE
        for dst in sorted(dsts)
        if _layer(dst) != FACADE and LAYERS[_layer(dst)] > LAYERS[_layer(src)]
    ]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_library_code_does_not_import_the_test_fixtures():
    importers = sorted(
        src for src, dsts in _graph().items() if "vaefix_pl.testing" in dsts and _layer(src) != "cli"
    )
    assert not importers, f"library modules import vaefix_pl.testing: {importers}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600
