"""The package layout holds: layered imports (import-linter), no cycles, no oversized module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "thyroaug"
MAX_LINES = 600


def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_cycle_in_the_package() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("thyroaug", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in edges.get(module, []):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for m in modules:
        if m not in state:
            visit(m, [m])
    # a package's __init__ re-exporting its own submodules is not a cycle of behaviour
    real = [c for c in cycles if not any(a.startswith(b + ".") for a, b in zip(c[1:], c))]
    assert real == [], "\n".join(" -> ".join(c) for c in real)


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    over = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert over == {}, over
