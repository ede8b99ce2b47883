"""The import graph of harness/: no cycle among its modules (every import counts: module level, under
TYPE_CHECKING and inside functions, since each is a dependency), the pipeline's layers (check.py
does not reach up into matrix/), and what a qabi process imports for a verb that needs little
(`--help`, a check whose captures are cached): none of the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

HARNESS = REPO / "harness"
HEAVY = ("paramiko", "pexpect", "pandas", "jinja2", "deepdiff", "rich", "jsonschema", "qemu.qmp")


def _modules() -> dict[str, Path]:
    out = {}
    for path in HARNESS.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules it names in an import statement: `import a.b` and `from a.b import
    x` name a.b; `from a import b` names a.b when that is a module, else a. (The registry-side packages,
    drift/ and fingerprint/, import nothing in their __init__: their names are lazy, harness/lazy.py.)"""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_finds_a_cycle_it_is_shown() -> None:
    """The checker itself: a cycle through a package __init__ and one through a function-level import."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "harness.transport.firmware.qtest" in graph["harness.transport.firmware"]
    assert "harness.drift.engine" in graph["harness.check"]


def test_no_import_cycle_among_harness_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_check_does_not_reach_up_into_matrix() -> None:
    """matrix/ loops over check.py; shards and machine-type bumps sit below both."""
    graph = import_graph()
    assert not {m for m in graph["harness.check"] if m.startswith("harness.matrix")}


def _imported(*argv: str) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness.cli", *argv], check=False,
                          capture_output=True,
                          text=True, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert names, done.stderr[-2000:]
    return names


@pytest.mark.parametrize("argv", [("--help",), ("check", "--help"), ("report", "--help")])
def test_help_imports_none_of_the_heavy_libraries(argv: tuple[str, ...]) -> None:
    names = _imported(*argv)
    assert not {n for n in names for h in HEAVY if n == h or n.startswith(h + ".")}
    assert "harness.transport.ssh" not in names and "harness.qemu.build" not in names


@pytest.mark.integration
def test_a_cached_check_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    """The same check twice: the second reuses both captures (its verdict is the first one's), and
    imports no SSH, console, table, HTML, diff, progress-bar, schema or QMP library."""
    argv = ("check", "--old", "system", "--new", "system", "--machine", "pc-q35-7.2", "--guest", "minimal")
    first = subprocess.run([sys.executable, "-m", "harness.cli", *argv], check=False, capture_output=True, text=True,
                           cwd=REPO,
                           timeout=300, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr
    names = _imported(*argv)
    assert not {n for n in names for h in HEAVY if n == h or n.startswith(h + ".")}


def test_policy_rows_follow_the_registry():
    """The policy keeps each built-in category's rows itself (it sits below the registry); they are
    the rows the registry names, in the registry's order."""
    from harness.categories import registry
    from harness.drift.policy import CATEGORY_ROWS

    assert list(CATEGORY_ROWS) == list(registry())
    assert all(CATEGORY_ROWS[name] == category.policy for name, category in registry().items())


def _after_a_difference(prelude: str) -> tuple[set[str], str]:
    code = (f"import sys\n{prelude}\nfrom harness.drift.diffing import changes\n"
            "atoms = changes({'bars': [1, 2], 'id': 'a'}, {'bars': [1, 3], 'id': 'b'})\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pandas', 'pydantic'))))\n"
            "print(repr([(a.path, a.old, a.new) for a in atoms]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded, atoms = done.stdout.splitlines()
    return set(loaded.split()), atoms


def test_describing_a_difference_leaves_numpy_and_pandas_out() -> None:
    """deepdiff imports numpy, pandas and pydantic when installed; the fingerprints hold only JSON
    values, so the differ imports it without them, and still describes the difference."""
    loaded, atoms = _after_a_difference("")
    assert loaded == set()
    assert atoms == "[('bars[1]', 2, 3), ('id', 'a', 'b')]"


def test_a_process_that_has_pandas_keeps_it_for_deepdiff() -> None:
    loaded, atoms = _after_a_difference("import pandas")
    assert "pandas" in loaded and "numpy" in loaded
    assert atoms == "[('bars[1]', 2, 3), ('id', 'a', 'b')]"
