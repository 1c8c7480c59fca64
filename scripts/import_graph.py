"""The import graph of ``src/regionprompt``: circles, imports that run against the layer order, largest files.

Usage: ``python scripts/import_graph.py [SRC]`` prints the figures; ``tests/test_import_graph.py`` asserts
that there is no circle and no upward import beyond :data:`ALLOWED_UPWARD`.

An edge ``a -> b`` is an ``import`` / ``from ... import`` of module ``b`` in module ``a`` (a name imported
from a package that is a submodule counts as that submodule). Importing ``regionprompt.x.y`` also runs the
package ``regionprompt.x``, so the edge to each enclosing package is added (that is how a package
``__init__`` that imports its modules closes a circle). Each edge is *module-level* (runs when ``a`` is
imported; ``if TYPE_CHECKING:`` blocks are left out, they never run) or *lazy* (inside a function, run when
it is called). Circles are counted both ways: a lazy import that closes a circle still ties the two
modules together (neither can be understood, moved or tested without the other).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "regionprompt"

#: The layer order, lowest first: a module may import modules of its own layer and of the layers below.
#: Names are the first component under ``regionprompt`` (a subpackage, or a top-level module).
LAYERS: tuple[tuple[str, ...], ...] = (
    # the ground floor: errors, file safety, result/prompt/box structures, dataset I/O, EmojiWorld
    ("", "errors", "untrusted", "logging_utils", "devices", "boxes", "card_json", "model_dir", "data", "images",
     "draw", "prompts", "results", "proposals", "concept", "concepts", "world", "sharding"),
    ("vl",),  # the vision-language core: CLIP towers, text encoders, prompt embeddings
    ("trex2", "regionclip"),  # the two models' parts
    ("detect",),  # the detection engines built on them
    ("api", "autolabel", "export"),  # the product facade (export: detector folders -> ONNX)
    ("interop",),  # readers of other projects' files (OpenAI/open_clip, RegionCLIP, detectron2)
    ("eval",),  # measurement of models and detectors
    ("train",),  # training (may evaluate to select)
    ("recipes",),  # pipelines of training + evaluation stages
    ("cli", "server", "__main__"),  # the front ends
)

#: Upward imports that stay, ``(importer, imported)`` -> why. Each is lazy (inside a function or a PEP 562
#: module ``__getattr__``), so importing the lower module never loads the higher one.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("regionprompt", "regionprompt.api"):
        "`regionprompt.Detector`: a PEP 562 lazy re-export, so `import regionprompt` stays light",
    ("regionprompt.vl.checkpoints", "regionprompt.interop.checkpoints"):
        "old path of a moved module, kept for one release (README and docs cited it): lazy re-export",
    ("regionprompt.vl.checkpoints", "regionprompt.interop.torch_files"):
        "the same old path: its file readers moved to the one safe reader; lazy re-export",
    ("regionprompt.vl.regionclip_release", "regionprompt.interop.regionclip_release"):
        "old path of a moved module, kept for one release (docs cited it): lazy re-export",
}

#: Circles that stay, closed only by lazy imports (no module-level circle is allowed) -> why.
ALLOWED_CIRCLES: dict[tuple[str, ...], str] = {
    ("regionprompt.concept", "regionprompt.concepts", "regionprompt.concepts.files", "regionprompt.concepts.library"):
        "PromptConcept.save / .load (public API) delegate to the concept file format, which builds PromptConcepts; "
        "both sit on the ground floor and the methods import the format lazily",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool  # inside a function (or a module __getattr__): runs only when called
    implied: bool = False  # only an enclosing package of what the statement names


def module_files(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package under ``src``."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of a module with whether it is lazy; TYPE_CHECKING blocks left out."""
    def walk(nodes: Iterable[ast.AST], lazy: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, lazy
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(ast.iter_child_nodes(node), True)
            else:
                yield from walk(ast.iter_child_nodes(node), lazy)

    return walk(tree.body, False)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom,
             modules: dict[str, Path]) -> dict[str, bool]:
    """``{target: implied}`` for one import statement of module ``name``."""
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    else:
        if node.level:
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        found = {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names}
    out: dict[str, bool] = {}
    for target in found:
        parts = target.split(".")
        if parts[0] != PACKAGE:
            continue
        for i in range(1, len(parts) + 1):  # the module and every package enclosing it
            out[".".join(parts[:i])] = out.get(".".join(parts[:i]), True) and i < len(parts)
    # a module's own enclosing packages are already running when it is imported
    return {t: implied for t, implied in out.items() if t in modules and t != name and not name.startswith(t + ".")}


def import_edges(src: Path) -> tuple[dict[str, Path], list[Edge]]:
    """The modules under ``src`` and their import edges (one edge per pair; module-level wins over lazy)."""
    modules = module_files(src)
    edges: dict[tuple[str, str], tuple[bool, bool]] = {}
    for name, path in modules.items():
        for node, lazy in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target, implied in _targets(name, path, node, modules).items():
                was_lazy, was_implied = edges.get((name, target), (True, True))
                edges[(name, target)] = (was_lazy and lazy, was_implied and implied)
    return modules, [Edge(a, b, lazy, implied) for (a, b), (lazy, implied) in sorted(edges.items())]


def circles(modules: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, largest first."""
    graph: dict[str, list[str]] = {m: [] for m in modules}
    for edge in edges:
        graph[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(found, key=lambda c: (-len(c), c))


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of a ``regionprompt`` module; ``KeyError`` for a name no layer lists."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise KeyError(f"{module}: {head!r} is in no layer of scripts/import_graph.py LAYERS")


def upward(edges: Iterable[Edge]) -> list[Edge]:
    """Edges from a lower layer to a higher one, as the import statements name them (a package entered only
    on the way to its module is in that module's layer and is not counted again)."""
    return [e for e in edges if not e.implied and layer_of(e.target) > layer_of(e.source)]


def largest(modules: dict[str, Path], n: int = 5) -> list[tuple[int, str]]:
    """The ``n`` longest modules as ``(lines, module)``."""
    sizes = [(len(p.read_text(encoding="utf-8").splitlines()), m) for m, p in modules.items()]
    return sorted(sizes, reverse=True)[:n]


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    modules, edges = import_edges(src)
    eager = [e for e in edges if not e.lazy]
    print(f"modules: {len(modules)}; import edges: {len(eager)} module-level + {len(edges) - len(eager)} lazy")
    print(f"circles (module-level imports): {len(circles(modules, eager))}")
    all_circles = circles(modules, edges)
    print(f"circles (all imports, lazy ones included): {len(all_circles)}")
    for component in all_circles:
        note = " (allowed)" if tuple(component) in ALLOWED_CIRCLES else ""
        print("  " + " <-> ".join(component) + note)
    up = upward(edges)
    print(f"upward imports: {len(up)} ({sum(not e.lazy for e in up)} module-level)")
    for e in up:
        note = " (allowed)" if (e.source, e.target) in ALLOWED_UPWARD else ""
        print(f"  {e.source} -> {e.target}{' [lazy]' if e.lazy else ''}{note}")
    print("largest modules: " + ", ".join(f"{m} {n}" for n, m in largest(modules)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
