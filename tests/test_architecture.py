"""The import graph of the core library points one way.

The core is every module of tvtheory/ except tvtheory/experiments/ and tvtheory/vision/ (the layers built on
it). Read from the source with ``ast`` (every import statement, also those inside functions), the graph must
have no edge from the core into vision/ or experiments/, no cycle among core modules, and every core edge must
point down ``LAYERS``: data -> models -> trajectory -> task vectors / expansion / bounds / fp ->
remainder / table -> theorems -> cli. The checker is tested on small made-up trees, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tvtheory"
# the recorder and its framework callbacks are built on the core and on experiments' storage and E2 statistics
OUTSIDE_CORE = ("tvtheory.experiments", "tvtheory.vision", "tvtheory.recorder", "tvtheory.integrations")

#: Rank of each core module; a module may import modules of its own rank or lower. A new core module
#: gets a rank here.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["tvtheory", "tvtheory.activations", "tvtheory.losses", "tvtheory.params", "tvtheory.data",
                     "tvtheory.io", "tvtheory.symbolic", "tvtheory.spectral", "tvtheory.models.seeding"], 0),
    **dict.fromkeys(["tvtheory.models", "tvtheory.models.mlp", "tvtheory.models.vit", "tvtheory.models.cnn",
                     "tvtheory.models.pretrained", "tvtheory.objective",
                     "tvtheory.curvature"], 1),
    **dict.fromkeys(["tvtheory.trajectory", "tvtheory.problem"], 2),
    **dict.fromkeys(["tvtheory.task_vectors", "tvtheory.expansion", "tvtheory.bounds", "tvtheory.fp",
                     "tvtheory.optimizers", "tvtheory.replay", "tvtheory.certificate"], 3),
    **dict.fromkeys(["tvtheory.remainder", "tvtheory.table", "tvtheory.atm"], 4),
    "tvtheory.theorems": 5,
    **dict.fromkeys(["tvtheory.cli", "tvtheory.user_model"], 6),
    **dict.fromkeys(["tvtheory.bound", "tvtheory.report"], 7),
}


def module_name(path: Path, root: Path) -> str:
    """tvtheory/models/vit.py -> tvtheory.models.vit; a package's __init__.py is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the file imports (absolute and relative, at any depth of the code),
    with the packages whose __init__ such an import runs first (except the importer's own packages).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if node.module:
                named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)       # from . import mlp
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    parents = {".".join(t.split(".")[:i]) for t in named for i in range(1, t.count(".") + 1)}
    return ((named & modules) | (parents & (modules - own))) - {name}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the package at ``root`` it imports, for every .py file under root."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: imports_of(path, name, modules) for name, path in files.items()}


def is_core(name: str, outside=OUTSIDE_CORE) -> bool:
    """Whether a module is in the core (not experiments/ or vision/ and not below them)."""
    return not any(name == o or name.startswith(o + ".") for o in outside)


def edges_out_of_core(graph: dict[str, set[str]], outside=OUTSIDE_CORE) -> list[tuple[str, str]]:
    """Imports from a core module into vision/ or experiments/."""
    return sorted((a, b) for a, targets in graph.items() if is_core(a, outside)
                  for b in targets if not is_core(b, outside))


def core_cycles(graph: dict[str, set[str]], outside=OUTSIDE_CORE) -> list[list[str]]:
    """The groups of core modules that import each other in a cycle (each group sorted; [] when none)."""
    core = {a: {b for b in targets if is_core(b, outside)} for a, targets in graph.items() if is_core(a, outside)}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(core[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(core.get(node, ()))
        return seen

    reach = {a: reachable(a) for a in core}
    groups = {frozenset(b for b in reach[a] if a in reach.get(b, ())) for a in core if a in reach[a]}
    return sorted(sorted(group) for group in groups)


def upward_edges(graph: dict[str, set[str]], layers: dict[str, int], outside=OUTSIDE_CORE) -> list[str]:
    """Core imports that point up ``layers``, and core modules that have no rank there."""
    problems = [f"{a} has no rank in LAYERS" for a in sorted(graph) if is_core(a, outside) and a not in layers]
    problems += [f"{a} (rank {layers[a]}) imports {b} (rank {layers[b]})" for a in sorted(graph)
                 if a in layers for b in sorted(graph[a]) if b in layers and layers[b] > layers[a]]
    return problems


# --------------------------------------------------------------------------------------------------------
# the library itself
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_graph_is_read(graph):
    """The reader finds the edges it should (a reader that finds nothing would pass every check below)."""
    assert {"tvtheory.theorems", "tvtheory.table"} <= graph["tvtheory.cli"]
    assert "tvtheory.fp" in graph["tvtheory.bounds"] and "tvtheory.models.mlp" in graph["tvtheory.bounds"]
    assert "tvtheory.models" in graph["tvtheory.bounds"]                # its __init__ runs on that import
    assert "tvtheory" in graph["tvtheory.io"]                           # `import tvtheory` inside a function
    assert any(not is_core(name) for name in graph)                     # vision/ and experiments/ are read too


def test_no_import_from_the_core_into_vision_or_experiments(graph):
    assert edges_out_of_core(graph) == []


def test_no_cycle_among_core_modules(graph):
    assert core_cycles(graph) == []


def test_core_imports_point_down_the_layers(graph):
    assert upward_edges(graph, LAYERS) == []


# --------------------------------------------------------------------------------------------------------
# the checker, on made-up trees
# --------------------------------------------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tvtheory"
    for name, text in {"__init__.py": "", "vision/__init__.py": "", "experiments/__init__.py": "",
                       **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_finds_an_import_into_vision_at_any_depth(tmp_path):
    root = _tree(tmp_path, {"vision/clip.py": "", "experiments/run.py": "from ..fp import x\n",
                            "fp.py": "def f():\n    from .vision import clip\n",
                            "models/__init__.py": "", "models/mlp.py": "import tvtheory.experiments.run\n"})
    graph = import_graph(root)
    assert edges_out_of_core(graph) == [("tvtheory.fp", "tvtheory.vision"), ("tvtheory.fp", "tvtheory.vision.clip"),
                                        ("tvtheory.models.mlp", "tvtheory.experiments"),
                                        ("tvtheory.models.mlp", "tvtheory.experiments.run")]


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    root = _tree(tmp_path, {"a.py": "from .b import x\n", "b.py": "from . import c\n", "c.py": "import tvtheory.a\n",
                            "d.py": "from .e import y\n", "e.py": ""})
    graph = import_graph(root)
    assert core_cycles(graph) == [["tvtheory.a", "tvtheory.b", "tvtheory.c"]]
    layers = {"tvtheory": 0, "tvtheory.a": 0, "tvtheory.b": 0, "tvtheory.c": 0, "tvtheory.d": 0, "tvtheory.e": 1}
    assert upward_edges(graph, layers) == ["tvtheory.d (rank 0) imports tvtheory.e (rank 1)"]
    del layers["tvtheory.e"]
    assert upward_edges(graph, layers) == ["tvtheory.e has no rank in LAYERS"]
