"""The packages form layers that point one way (docs/decisions.md, "Layers"; docs/architecture.md).

A module may import from its own package or from a lower layer, never from a higher one or a
peer, and no two packages import each other. Every import counts: top-level, inside a function
(lazy), under `if TYPE_CHECKING:`, relative. Checked on the source with `ast`: no dependency, and
no module is imported (importing would run the app's side effects).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PACKAGES, REPO

# bottom first; a layer may hold several packages (peers: they may not import each other)
LAYERS: list[tuple[str, ...]] = [
    ("core",),        # shared records and pure helpers: imports no project package
    ("config",),      # settings, metrics, the configuration reference
    ("schemas",),     # the canonical alert, provider normalizers, rules, fingerprints
    ("tables",),      # the dedup state table
    ("pipeline",),    # per-record stage logic: normalize, plan dedup, throttle
    ("sinks",),       # Postgres, search, raw store, maintenance, archiver, Keep import
    ("query",),       # federated search over the sinks' stores
    ("streams",),     # the Faust app, stages, DLQ tools, health, topics, local stack
    ("gateway",),     # the HTTP gateway (reuses streams' health checks, topics, retry tiers)
    ("benchmarks",),  # load generator and benchmark runner (starts workers and gateways)
    ("cli",),         # the `alertstream` command: every subcommand of every package
]


@dataclass(frozen=True)
class Edge:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported module (or module.name), dotted

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[Edge]:
    """Every import statement of one file, wherever it is, resolved to absolute dotted names."""
    module = module_name(root, path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:  # `from pkg import module` names a module too
                yield Edge(module, node.lineno, f"{prefix}.{alias.name}" if prefix else alias.name)


def package_edges(root: Path, packages: list[str]) -> Iterator[tuple[str, str, Edge]]:
    """(importing package, imported package, the import) for imports across project packages."""
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for edge in imports(root, path):
                target = edge.target.split(".")[0]
                if target in packages and target != package:
                    yield package, target, edge


def layer_violations(root: Path, layers: list[tuple[str, ...]]) -> list[str]:
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    found = []
    for source, target, edge in package_edges(root, list(rank)):
        if rank[target] >= rank[source]:
            how = "a peer" if rank[target] == rank[source] else "a higher layer"
            found.append(f"{edge}: {source} (layer {rank[source]}) -> {target} ({how}, layer {rank[target]})")
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of nodes that reach each other (Tarjan): each group of two or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def package_cycles(root: Path, packages: list[str]) -> list[list[str]]:
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for source, target, _ in package_edges(root, packages):
        graph[source].add(target)
    return strongly_connected(graph)


def module_cycles(root: Path, packages: list[str]) -> list[list[str]]:
    """Import cycles between modules, lazy imports included (sinks/postgres.py <-> raw_storage.py was one)."""
    paths = {module_name(root, path): path for package in packages for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        for edge in imports(root, path):
            target = edge.target
            while target and target not in paths:  # `from pkg.mod import name` -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != module:
                graph[module].add(target)
    return strongly_connected(graph)


# --- the project ---------------------------------------------------------------------------------

def test_every_package_has_a_layer() -> None:
    layered = [p for layer in LAYERS for p in layer]
    assert sorted(layered) == sorted(PACKAGES), "pyproject.toml's packages and LAYERS differ"
    assert [p for p in PACKAGES] == layered, "pyproject.toml lists the packages bottom layer first, as LAYERS does"


def test_no_import_points_up_or_sideways() -> None:
    found = layer_violations(REPO, LAYERS)
    assert not found, "imports against the layers (docs/decisions.md, 'Layers'):\n" + "\n".join(found)


def test_no_import_cycle_between_packages() -> None:
    assert package_cycles(REPO, PACKAGES) == []


def test_no_import_cycle_between_modules() -> None:
    assert module_cycles(REPO, PACKAGES) == []


def test_core_imports_no_project_package() -> None:
    found = [str(edge) for source, _, edge in package_edges(REPO, PACKAGES) if source == "core"]
    assert not found


def test_no_module_imports_a_private_name_of_another() -> None:
    """`from sinks.postgres import _X` couples to what a module may change freely (tests excepted)."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
                    if node.module != module_name(REPO, path):
                        found += [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name}"
                                  for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


# the only modules of `streams` the gateway may use: the worker's runtime it shares, never the app
GATEWAY_USES_OF_STREAMS = {"streams.health", "streams.loop_monitor", "streams.retry", "streams.topics"}


def test_the_gateway_uses_the_workers_runtime_not_its_app() -> None:
    used = {".".join(edge.target.split(".")[:2]) for source, target, edge in package_edges(REPO, PACKAGES)
            if source == "gateway" and target == "streams"}
    assert used <= GATEWAY_USES_OF_STREAMS, sorted(used - GATEWAY_USES_OF_STREAMS)


def drawn_edges(markdown: str) -> set[tuple[str, str]]:
    block = markdown.split("<!-- packages:begin -->", 1)[1].split("<!-- packages:end -->", 1)[0]
    return {(a, b) for a, b in re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, re.M)}


def test_the_package_diagram_is_the_import_graph() -> None:
    """docs/architecture.md draws exactly the package imports of the code (and in layer order)."""
    actual = {(source, target) for source, target, _ in package_edges(REPO, PACKAGES)}
    drawn = drawn_edges((REPO / "docs" / "architecture.md").read_text())
    assert drawn - actual == set(), f"drawn, but no such import: {sorted(drawn - actual)}"
    assert actual - drawn == set(), f"imports missing from the diagram: {sorted(actual - drawn)}"


# --- the check itself: it must see a real violation ----------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SYNTHETIC_LAYERS = [("low",), ("mid",), ("top_a", "top_b")]


def test_a_lazy_upward_import_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "low/__init__.py": "",
        "low/types.py": "def f():\n    from mid.stage import g  # lazy, inside a function\n    return g\n",
        "mid/__init__.py": "",
        "mid/stage.py": "from low.types import f\n\ndef g():\n    return f\n",
        "top_a/__init__.py": "",
        "top_b/__init__.py": "",
    })
    found = layer_violations(root, SYNTHETIC_LAYERS)
    assert found == ["low.types:2 imports mid.stage.g: low (layer 0) -> mid (a higher layer, layer 1)"]
    assert package_cycles(root, ["low", "mid", "top_a", "top_b"]) == [["low", "mid"]]


def test_type_checking_relative_and_peer_imports_are_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mid.x\n",
        "mid/__init__.py": "from . import x\n",  # relative, within the package: fine
        "mid/x.py": "from .y import z\n",
        "mid/y.py": "z = 1\n",
        "top_a/__init__.py": "from top_b import something\n",
        "top_b/__init__.py": "import low.a\n",
    })
    found = layer_violations(root, SYNTHETIC_LAYERS)
    assert [f.split(":")[0] for f in found] == ["low.a", "top_a"]
    assert module_cycles(root, ["low", "mid", "top_a", "top_b"]) == []
    assert "a peer" in found[1]


def test_a_module_cycle_inside_a_package_is_reported(tmp_path: Path) -> None:
    """The shape sinks/postgres.py and sinks/raw_storage.py had: one import at the top, one lazy."""
    root = _tree(tmp_path, {"low/__init__.py": "",
                            "low/store.py": "from low.policy import COLUMNS\n",
                            "low/policy.py": "COLUMNS = ()\n\ndef sink():\n    from low.store import Store\n"})
    assert layer_violations(root, SYNTHETIC_LAYERS) == []
    assert module_cycles(root, ["low"]) == [["low.policy", "low.store"]]


def test_imports_resolve_relative_names(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pkg/__init__.py": "from .sub import a\n", "pkg/sub/__init__.py": "",
                            "pkg/sub/mod.py": "from .. import b\nfrom ..other import c\n"})
    assert [e.target for e in imports(root, root / "pkg/sub/mod.py")] == ["pkg.b", "pkg.other.c"]
    assert [e.target for e in imports(root, root / "pkg/__init__.py")] == ["pkg.sub.a"]


@pytest.mark.parametrize("package", ["core", "config", "pipeline", "sinks"])
def test_the_lower_packages_import_nothing_above_them(package: str) -> None:
    """The moves of issue #19, spelled out: a regression names the package it broke."""
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    above = [str(edge) for source, target, edge in package_edges(REPO, PACKAGES)
             if source == package and rank[target] > rank[package]]
    assert not above
