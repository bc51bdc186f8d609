"""The package's import graph, built from its source: no cycles, and the low layers know nothing of the stages.

Every import counts, at module level or inside a function (a lazy import is still a dependency, only a later
one), and importing ``a.b.c`` also imports the packages ``a`` and ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prefalign"

# the stages and the one-command pipelines: commands that read and write documented files, one module each
STAGES_PACKAGE = "prefalign.stages"
# what every stage builds on; none of it may import a stage
LOW_LAYERS = (
    "prefalign.data",
    "prefalign.models",
    "prefalign.logprobs",
    "prefalign.losses",
    "prefalign.module",
    "prefalign.trainer",
    "prefalign.keys",
    "prefalign.run_setup",
    "prefalign.reference",
    "prefalign.atomic",
    "prefalign.rewards",
    "prefalign.inrun",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> the prefalign modules it imports`` for every module of the package."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package of this module
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets.add(origin)
                # `from package import module` imports the submodule
                targets.update(f"{origin}.{alias.name}" for alias in node.names if f"{origin}.{alias.name}" in modules)
        edges = set()
        for target in targets:
            if not target.startswith("prefalign"):
                continue
            parts = target.split(".")
            # the module itself (or its nearest existing ancestor) and every package above it
            for size in range(1, len(parts) + 1):
                prefix = ".".join(parts[:size])
                if prefix in modules and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None`` (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_built_from_the_source():
    graph = import_graph()
    assert len(graph) > 30
    # edges that exist, so that a graph without edges cannot pass the checks below
    assert "prefalign.stages.train" in graph["prefalign.stages.pipeline"]
    assert "prefalign.scoring.base" in graph["prefalign.stages.score"]
    assert "prefalign.scoring" in graph["prefalign.stages.score"]  # the package of an imported submodule


def test_cycle_detection_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def stages(graph: dict[str, set[str]]) -> set[str]:
    return {module for module in graph if module.startswith(STAGES_PACKAGE + ".")}


def test_every_stage_has_its_module_in_the_stages_floor():
    names = {module.rsplit(".", 1)[1] for module in stages(import_graph())}
    assert {"train", "score", "select", "evaluate", "sample", "pipeline", "iterative", "curriculum"} <= names


def test_nothing_below_the_stages_imports_a_stage():
    graph = import_graph()
    floor = stages(graph)
    offending = {
        module: sorted(graph[module] & floor)
        for module in graph
        if not module.startswith(STAGES_PACKAGE) and graph[module] & floor
    }
    assert not offending, offending
    assert any(module.startswith(LOW_LAYERS) for module in graph)


def test_scoring_does_not_import_the_training_pipeline():
    graph = import_graph()
    scoring = {module: graph[module] for module in graph if module.startswith("prefalign.scoring")}
    assert not {m: e for m, e in scoring.items() if e & {"prefalign.stages.pipeline", "prefalign.stages.train"}}


def test_sampling_builds_on_libraries_not_on_other_stages():
    graph = import_graph()
    # the rounds of iterative DPO are a sequence of stages; the libraries of the sampling stage import none
    libraries = ("prefalign.online.responses", "prefalign.online.rewards", "prefalign.online.pairs", "prefalign.stages.sample")
    online = {module: graph[module] & (stages(graph) - {"prefalign.stages.sample"}) for module in libraries}
    assert graph["prefalign.stages.sample"] & {"prefalign.online.responses", "prefalign.online.pairs"}
    assert not {m: e for m, e in online.items() if e}, online
