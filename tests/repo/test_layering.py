"""The layers point down only (issue 34), every import counted, deferred ones too.

base (data, metrics, io) < models (backbones, features, families, loading) < retrieval (vector index, stores,
gallery, text search, bulk embedding) < evaluation < training < command lines < apps. Each module of
`model_pkg` and `app` gets its layer from `LAYERS` (the longest matching prefix); an import (at the top of a
file or inside a function, `if TYPE_CHECKING:` blocks excepted) may name its own layer or a lower one, and the
imports may form no cycle. The map of the layers, in words, is docs/layers.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model_pkg", "app")

BASE, MODELS, RETRIEVAL, EVALUATION, TRAINING, COMMAND_LINES, APPS = range(7)
LAYER_NAMES = ("base", "models", "retrieval", "evaluation", "training", "command lines", "apps")

# module or package prefix -> layer; the longest prefix that matches a module decides.
LAYERS: dict[str, int] = {
    # base: data, metrics, files
    "model_pkg.data": BASE,
    "model_pkg.dual_encoder.data": BASE,
    "model_pkg.metrics": BASE,
    "model_pkg.fileio": BASE,
    "model_pkg.lazy": BASE,
    "model_pkg.embedding_store": BASE,
    "model_pkg.hub": BASE,
    "model_pkg.markdown_tables": BASE,  # the model cards' tables (hub)
    # models: backbones, features, the families' configs and models, loading, ONNX Runtime, the intake
    "model_pkg": MODELS,  # the package root only (`EXACT`): the lazy model and config classes
    "model_pkg.backbones": MODELS,
    "model_pkg.transforms": MODELS,
    "model_pkg.features": MODELS,
    "model_pkg.modeling_utils": MODELS,
    "model_pkg.loading": MODELS,
    "model_pkg.losses": MODELS,
    "model_pkg.batching": MODELS,
    "model_pkg.photo_batches": MODELS,  # photos -> vectors: loading, batching, the failure policy, progress
    "model_pkg.stand_in": MODELS,  # what a backbone / text tower knows of ONNX Runtime: a stand-in, attached from outside
    "model_pkg.onnx_runtime": MODELS,
    "model_pkg.onnx_check": MODELS,
    "model_pkg.onnx_quantization": MODELS,
    "model_pkg.export": MODELS,  # the exporter (library); its command line is `model_pkg.export.__main__`
    "model_pkg.intake": MODELS,
    "model_pkg.align": MODELS,
    "model_pkg.arcface": MODELS,
    "model_pkg.pair_matcher": MODELS,
    "model_pkg.dual_encoder": MODELS,
    # retrieval: vector index, gallery, the people's gallery store, bulk embedding, text search
    "model_pkg.vector_index": RETRIEVAL,
    "model_pkg.gallery": RETRIEVAL,
    "model_pkg.gallery_store": RETRIEVAL,
    "model_pkg.embed": RETRIEVAL,
    "model_pkg.dual_encoder.search": RETRIEVAL,
    # evaluation: the evaluation tasks, calibration of thresholds, backbone recommendation
    "model_pkg.evaluation": EVALUATION,
    "model_pkg.dual_encoder.evaluation": EVALUATION,
    "model_pkg.arcface.calibration": EVALUATION,
    "model_pkg.pair_matcher.calibration": EVALUATION,
    "model_pkg.recommend": EVALUATION,
    # training: what the families' runs share, and each family's run
    "model_pkg.training": TRAINING,
    "model_pkg.arcface.trainer": TRAINING,
    "model_pkg.arcface.training": TRAINING,
    "model_pkg.pair_matcher.training": TRAINING,
    "model_pkg.pair_matcher.trainer": TRAINING,  # the seed's PairMatchingTrainer, save_with_card
    "model_pkg.dual_encoder.trainer": TRAINING,
    "model_pkg.dual_encoder.training": TRAINING,
    # command lines
    "model_pkg.evaluate": COMMAND_LINES,
    "model_pkg.export.__main__": COMMAND_LINES,
    "model_pkg.match": COMMAND_LINES,
    "model_pkg.embed.__main__": COMMAND_LINES,
    "model_pkg.gallery.__main__": COMMAND_LINES,
    "model_pkg.recommend.__main__": COMMAND_LINES,
    # apps, and the scripts beside them (never imported by the library)
    "app": APPS,
    "train": APPS,
    "bench": APPS,
    "scripts": APPS,
    "spaces": APPS,
}


# keys that name one module, not a prefix: a new module at the package root must be given its layer
EXACT = frozenset({"model_pkg"})


def layer_of(module: str, layers: Mapping[str, int] = LAYERS) -> int | None:
    """The layer of the longest prefix of `module` in `layers` (None: no prefix matches, e.g. a third party)."""
    name = module
    while name:
        if name in layers and (name == module or name not in EXACT):
            return layers[name]
        name = name.rpartition(".")[0]
    return None


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__.py)."""
    modules = {}
    for package in packages:
        for file in sorted((root / package).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = file
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return guarded


def imported_names(module: str, is_package: bool, source: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in `source`, at any depth, `if TYPE_CHECKING:` excepted. A
    `from X import a` gives both `X` and `X.a` (`a` may be a submodule); relative imports are resolved."""
    tree = ast.parse(source)
    guarded = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return out


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported module of the tree or other top-level name of `LAYERS`: first line}."""
    modules = find_modules(root, packages)
    tops = {name.partition(".")[0] for name in LAYERS}
    graph: dict[str, dict[str, int]] = {}
    for module, file in modules.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(module, file.name == "__init__.py", file.read_text(encoding="utf-8")):
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target and name.partition(".")[0] in tops and name.partition(".")[0] not in packages:
                target = name.partition(".")[0]  # a script folder (train, bench, ...): never imported by the library
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        # iterative Tarjan: (node, iterator over its successors)
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph.get(succ, ()))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def upward_imports(graph: Mapping[str, Mapping[str, int]], layers: Mapping[str, int] = LAYERS) -> list[str]:
    """'module:line imports target (layer a < layer b)' for every import of a higher layer."""
    found = []
    for module, edges in sorted(graph.items()):
        own = layer_of(module, layers)
        for target, line in sorted(edges.items()):
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{module}:{line} imports {target} ({LAYER_NAMES[own]} < {LAYER_NAMES[theirs]})")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    missing = [module for module in graph if layer_of(module) is None]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles (deferred imports counted):\n" + "\n".join(", ".join(c) for c in found)


def test_imports_point_down_only(graph):
    found = upward_imports(graph)
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """A synthetic tree: a deferred import closes a cycle, and data imports training."""
    graph = {
        "pkg.data": {"pkg.training": 3},
        "pkg.training": {"pkg.models": 1},
        "pkg.models": {"pkg.data": 1, "pkg.models.b": 2},
        "pkg.models.b": {"pkg.models": 9},
        "pkg.alone": {},
    }
    layers = {"pkg.data": BASE, "pkg.models": MODELS, "pkg.training": TRAINING, "pkg.alone": APPS}
    assert cycles(graph) == [["pkg.data", "pkg.models", "pkg.models.b", "pkg.training"]]
    assert upward_imports(graph, layers) == ["pkg.data:3 imports pkg.training (base < training)"]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_deferred_relative_and_type_checking_imports_are_read():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from ..training import Trainer\n"
        "def f():\n"
        "    from ..evaluation import hard_neighbours\n"
    )
    names = imported_names("model_pkg.data.mining", False, source)
    assert ("model_pkg.data", 2) in names and ("model_pkg.data.sibling", 2) in names
    assert ("model_pkg.evaluation.hard_neighbours", 6) in names
    assert not any(name.startswith("model_pkg.training") for name, _ in names)
    assert layer_of("model_pkg.arcface.training") == TRAINING and layer_of("model_pkg.arcface.modeling_arcface") == MODELS
    assert layer_of("numpy") is None
    assert layer_of("model_pkg") == MODELS and layer_of("model_pkg.new_root_module") is None
