"""The repository's own import graph has no circle, and only what trains imports train.py: each file
can be read knowing the ones it imports, as the README's reading order says. Every import counts, also
those inside functions; `from data import arith` counts as an import of the submodule data.arith."""
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    files = [f for f in subprocess.check_output(["git", "ls-files", "*.py"], cwd=ROOT, text=True).split()
             if not f.startswith("tests/")]
    mods = {f[:-3].replace("/", ".").removesuffix(".__init__"): f for f in files}
    graph = {}
    for mod, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            else:
                continue
            deps |= {n for n in names if n in mods and n != mod}
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state = {}

    def visit(u, path):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v, path + [v])):
                return found
        state[u] = "done"
        return None
    for u in sorted(graph):
        if u not in state and (found := visit(u, [u])):
            return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert {"model", "runs", "train", "r1", "data.tasks"} <= set(graph)  # the graph was really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_only_what_trains_imports_train():
    importers = {m for m, deps in import_graph().items() if "train" in deps}
    assert importers <= {"r1", "recipe", "scale.launch", "scale.bench"}, importers


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
