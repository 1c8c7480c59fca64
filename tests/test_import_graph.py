"""The package's import graph (scripts/import_graph.py): no circle, and imports run down the layer order
(ground floor -> vl -> models -> engines -> api -> interop -> eval -> train -> recipes -> front ends),
except the exceptions that script lists with their reasons."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


graph = _load_script()


@pytest.fixture(scope="module")
def package():
    return graph.import_edges(ROOT / "src")


def test_no_module_level_import_circle(package):
    modules, edges = package
    assert graph.circles(modules, [e for e in edges if not e.lazy]) == []


def test_lazy_imports_close_only_the_listed_circles(package):
    modules, edges = package
    assert {tuple(c) for c in graph.circles(modules, edges)} == set(graph.ALLOWED_CIRCLES)


def test_imports_run_down_the_layers(package):
    _, edges = package
    upward = {(e.source, e.target): e.lazy for e in graph.upward(edges)}
    assert set(upward) == set(graph.ALLOWED_UPWARD), "an upward import, or a listed exception that is gone"
    assert all(upward.values()), "every remaining upward import must be lazy"


def test_every_module_has_a_layer(package):
    modules, _ = package
    for module in modules:
        graph.layer_of(module)  # KeyError names the module and the missing layer


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "src" / "regionprompt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "src"


def test_the_checker_sees_circles_packages_and_upward_imports(tmp_path):
    src = _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "from regionprompt.vl.a import X\n",  # ground floor -> vl: upward
        "vl/__init__.py": "from regionprompt.vl.a import X\n",
        "vl/a.py": "def f():\n    from regionprompt.vl import b\n",
        "vl/b.py": "from . import a\n",  # relative import closes vl.a -> vl.b -> vl.a (lazily)
        "detect/__init__.py": "",
        "detect/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from regionprompt.api import D\n",
    })
    modules, edges = graph.import_edges(src)
    pairs = {(e.source, e.target): e for e in edges}
    assert pairs[("regionprompt.errors", "regionprompt.vl")].implied  # the package runs first
    assert ("regionprompt.detect.c", "regionprompt.api") not in pairs  # TYPE_CHECKING never runs
    assert graph.circles(modules, [e for e in edges if not e.lazy]) == []
    assert graph.circles(modules, edges) == [["regionprompt.vl.a", "regionprompt.vl.b"]]
    assert [(e.source, e.target) for e in graph.upward(edges)] == [("regionprompt.errors", "regionprompt.vl.a")]
    with pytest.raises(KeyError, match="nowhere"):
        graph.layer_of("regionprompt.nowhere.x")
