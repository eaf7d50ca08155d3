"""The rooms of diffstream.stream and their one-way layering (docs/architecture.md).

Read from the source (ast), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STREAM = ROOT / "stream"

# room -> the rooms of diffstream.stream it may import (besides itself).
ALLOWED = {
    "ops": set(),
    "io": {"ops"},
    "alerts": {"io", "ops"},
    "provenance": {"io", "ops"},
    "sim": {"ops"},
    "pipeline": {"io", "alerts", "provenance", "ops"},
    "transport": {"pipeline", "io", "alerts", "provenance", "ops"},
    "cli": {"transport", "pipeline", "io", "alerts", "provenance", "ops", "sim"},
}


def _modules():
    return sorted(p for p in STREAM.rglob("*.py") if p.name != "__init__.py")


def _imports(path: Path):
    """(imported module, imported names) for every import of diffstream.* in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["diffstream", "stream"] or len(parts) < 3:
        return None
    return parts[2]


def test_every_module_lives_in_a_room():
    top = sorted(p.name for p in STREAM.glob("*.py") if p.name != "__init__.py")
    assert top == [], f"modules at the top of diffstream.stream: {top}"
    rooms = sorted(p.name for p in STREAM.iterdir() if (p / "__init__.py").exists())
    assert set(rooms) == set(ALLOWED), rooms


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_has_a_docstring_naming_what_it_may_import(room):
    doc = ast.get_docstring(ast.parse((STREAM / room / "__init__.py").read_text()))
    assert doc and "import" in doc, f"stream/{room}/__init__.py needs its paragraph"


def test_layering_is_one_way():
    wrong = []
    for path in _modules():
        room = path.relative_to(STREAM).parts[0]
        for module, _ in _imports(path):
            target = _room_of(module)
            if target is None and module in ("diffstream.stream",):
                wrong.append(f"{path.relative_to(ROOT)} imports the bare package")
            if target and target != room and target not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(ROOT)} ({room}) imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_jitcore_imports_nothing_of_stream():
    wrong = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in sorted((ROOT / "jitcore").rglob("*.py"))
        for m, _ in _imports(p)
        if m.startswith("diffstream.stream")
    ]
    assert wrong == [], "\n".join(wrong)


def test_no_private_names_imported_across_modules():
    # jitcore/_kernels is itself private: its loops share jitted helpers among themselves.
    def shared_kernel_helper(path: Path, module: str) -> bool:
        return "_kernels" in path.parts and module.startswith("diffstream.jitcore._kernels.")

    wrong = [
        f"{p.relative_to(ROOT)}: from {m} import {n}"
        for base in (STREAM, ROOT / "jitcore")
        for p in sorted(base.rglob("*.py"))
        for m, names in _imports(p)
        if m.startswith("diffstream.") and not shared_kernel_helper(p, m)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert wrong == [], "\n".join(wrong)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "diffstream." + ".".join(parts)


def test_no_import_cycle_between_modules():
    # Imports inside functions count: a lazy import that only hides a cycle is still one.
    paths = sorted(STREAM.rglob("*.py")) + sorted((ROOT / "jitcore").rglob("*.py"))
    graph: dict[str, set[str]] = {}
    for p in paths:
        deps = set()
        for module, names in _imports(p):
            deps.add(module)
            deps.update(f"{module}.{n}" for n in names)
        graph[_module_name(p)] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a))
    assert cycles == [], "\n".join(cycles)


def test_the_layering_check_sees_a_violation(tmp_path):
    # The premise of the tests above: an upward import is recognised as one.
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from diffstream.stream.cli.main import main\n")
    targets = [_room_of(m) for m, _ in _imports(bad)]
    assert targets == ["cli"] and "cli" not in ALLOWED["io"]
