"""The package layout holds: layered imports (import-linter), no cycles, names in one place,
modules split by seam with a loose size alarm, long functions only where CONTRIBUTING.md says why.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "thyroaug"
MODULE_ALARM = 900
"""Lines. Not a splitting rule (split where responsibilities split): a module this long is
worth a look."""
FUNCTION_HABIT = 60
"""Lines of code of one function (docstring, comments and blank lines excluded)."""


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


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def test_no_module_past_the_size_alarm() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > MODULE_ALARM} == {}


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    body = node.body  # type: ignore[attr-defined]
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if len(body) == 1:
            return 0
        first = body[1]
    text = lines[first.lineno - 1 : node.end_lineno]  # type: ignore[attr-defined]
    return sum(1 for t in text if t.strip() and not t.strip().startswith("#"))


def _functions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every function below ``node``, nested ones included."""
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                out.append((name, child))
            out += _functions(child, f"{name}.")
    return out


def long_functions() -> dict[str, int]:
    """``path::qualified.name`` -> lines of code, for functions over ``FUNCTION_HABIT``."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for name, node in _functions(ast.parse("\n".join(lines))):
            n = _code_lines(node, lines)
            if n > FUNCTION_HABIT:
                out[f"{path.relative_to(ROOT)}::{name}"] = n
    return out


def test_long_functions_are_the_documented_exceptions() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+::[^`]+)` \|", text, flags=re.M))
    long = long_functions()
    assert set(long) - listed == set(), (
        f"functions over {FUNCTION_HABIT} lines of code: split them at a seam, or say in "
        f"CONTRIBUTING.md why one idea is that long: {sorted(set(long) - listed)}"
    )
    assert listed - set(long) == set(), (
        f"CONTRIBUTING.md lists short functions: {listed - set(long)}"
    )


RUN_TAG_CALLS = {"set_tag", "set_tags"}


def _tag_literals(path: str, tree: ast.Module) -> list[str]:
    """Places that spell a run tag as a string literal instead of naming it from contract.py."""
    found = []

    def where(node: ast.AST, what: str) -> None:
        found.append(f"{path}:{node.lineno} {what}")  # type: ignore[attr-defined]

    def literal_keys(node: ast.AST | None) -> list[str]:
        if isinstance(node, ast.Dict):
            return [k.value for k in node.keys if isinstance(k, ast.Constant)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in RUN_TAG_CALLS:
                args = node.args
                keys = literal_keys(args[0] if args else None)
                if name == "set_tag" and args:
                    first = args[1] if len(args) > 2 else args[0]  # client.set_tag(run, key, v)
                    keys += [first.value] if isinstance(first, ast.Constant) else []
                for key in keys:
                    where(node, f"{name}({key!r})")
            for kw in node.keywords:
                if kw.arg == "tags":
                    for key in literal_keys(kw.value):
                        where(node, f"tags={{{key!r}: ...}}")
            owner = getattr(node.func, "value", None)
            key = node.args[0] if node.args else None
            if (
                name == "get"
                and getattr(owner, "attr", "") == "tags"
                and isinstance(key, ast.Constant)
            ):
                where(node, f"tags.get({key.value!r})")
        elif isinstance(node, ast.Subscript) and getattr(node.value, "attr", "") == "tags":
            if isinstance(node.slice, ast.Constant):
                where(node, f"tags[{node.slice.value!r}]")
        elif isinstance(node, ast.Constant) and re.search(r"\btags\.[`\w]", str(node.value)):
            where(node, f"search filter {node.value!r}")
    return found


def test_run_tags_are_spelled_only_in_the_contract() -> None:
    found = [
        hit
        for path, tree in _modules().items()
        if path != "thyroaug/contract.py"
        for hit in _tag_literals(path, tree)
    ]
    assert found == [], "\n".join(found)


def test_the_tag_literal_check_finds_what_it_should() -> None:
    code = (
        "mlflow.set_tag('step', 'x')\n"
        "client.set_tag(run_id, 'study_id', 'y')\n"
        "mlflow.set_tags({'scenario': 'O'})\n"
        "start_run(tags={'profile': 'quick'})\n"
        "run.data.tags.get('method')\n"
        "run.data.tags['seed']\n"
        "q = f\"tags.study_id = '{x}'\"\n"
        "mlflow.set_tag(TAG_STEP, 'x')\n"  # named: fine
    )
    hits = _tag_literals("m.py", ast.parse(code))
    assert len(hits) == 7, hits


def test_importing_every_command_leaves_logging_to_the_cli() -> None:
    """No import configures the root logger (``mlflow.pytorch`` does: it calls
    ``logging.basicConfig(level=ERROR)``), or the CLI's own ``basicConfig`` would do nothing and
    every thyroaug warning would vanish."""
    code = (
        "import importlib, logging, pkgutil, thyroaug.jobs as J\n"
        "for m in pkgutil.iter_modules(J.__path__):\n"
        "    importlib.import_module('thyroaug.jobs.' + m.name)\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0", "an import configured the root logger"
