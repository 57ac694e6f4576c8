"""The house: no import circle among the engine's modules, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import medbench

ROOT = Path(medbench.__file__).resolve().parent


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """Names (without .py) of medbench's own modules that ``path`` imports anywhere in
    its source: at the top, inside functions, under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:                      # from .x import ..., from . import x
                names = [mod.split(".")[0]] if mod else [a.name for a in node.names]
            elif mod == "medbench":                  # from medbench import x
                names = [a.name for a in node.names]
            elif mod.startswith("medbench."):        # from medbench.x import ...
                names = [mod.split(".")[1]]
            else:
                names = []
        elif isinstance(node, ast.Import):           # import medbench.x
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("medbench.")]
        else:
            names = []
        found.update(n for n in names if n in modules)
    found.discard(path.stem)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in ROOT.glob("*.py")}
    return {m: module_imports(ROOT / f"{m}.py", modules) for m in sorted(modules)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_lazy_imports(tmp_path):
    f = tmp_path / "lazy.py"
    f.write_text("def f():\n    from .report import x\n    import medbench.cache\n")
    assert module_imports(f, {"report", "cache", "lazy"}) == {"report", "cache"}


def test_no_import_circle_among_the_engine_modules():
    graph = import_graph()
    assert {"engine", "runner", "execution", "report", "tables"} <= set(graph)
    assert "engine" in graph["execution"] and "execution" in graph["runner"]   # the walk works
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_layers_point_one_way():
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph[m]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    # the engine never reaches up to orchestration, reporting or the command line
    assert not reach("engine") & {"runner", "execution", "fidelity", "tuning", "ablation", "report",
                                  "figures", "html", "tables", "ablation_report", "cli"}
    # the tables are a leaf of the report side
    assert not reach("tables") & {"report", "html", "figures", "ablation", "ablation_report"}


def test_runner_and_fidelity_each_hold_one_job():
    # orchestration and measuring; the engine itself (cells, fits, draws) is engine.py
    for name in ("runner", "fidelity"):
        lines = len((ROOT / f"{name}.py").read_text().splitlines())
        assert lines <= 350, f"{name}.py has {lines} lines"


def test_perf_benchmarks_run_only_when_named(tmp_path):
    """`python -m pytest -q` (CI) leaves the tests/perf benchmarks out; naming their
    folder or a file in it, or any -m expression, keeps them."""
    from types import SimpleNamespace

    from conftest import ROOT, pytest_collection_modifyitems

    class Item:
        def __init__(self, name, perf):
            self.name, self.perf = name, perf

        def get_closest_marker(self, name):
            return object() if name == "perf" and self.perf else None

    def collect(args, markexpr=""):
        deselected = []
        config = SimpleNamespace(
            option=SimpleNamespace(markexpr=markexpr), args=args,
            hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)))
        items = [Item("unit", False), Item("bench", True)]
        pytest_collection_modifyitems(config, items)
        return [i.name for i in items], [i.name for i in deselected]

    assert collect([]) == (["unit"], ["bench"])
    assert collect([str(ROOT / "tests")]) == (["unit"], ["bench"])
    assert collect([str(ROOT / "tests" / "perf")]) == (["unit", "bench"], [])
    assert collect([str(ROOT / "tests" / "perf" / "test_x.py") + "::test_y"]) == (["unit", "bench"], [])
    assert collect([], markexpr="perf") == (["unit", "bench"], [])
