"""Modules moved by the architecture refactor keep their old import paths for one release: each old path
hands out the very objects of the new one (so isinstance checks and monkeypatching see one class)."""

import importlib

import pytest

MOVED = [
    ("regionprompt.train.scene_cache", "regionprompt.world.scene_cache",
     ["SceneCache", "SceneCacheSpec", "build_scene_cache"]),
    ("regionprompt.detect.proposals", "regionprompt.proposals", ["ProposalSource", "Proposals"]),
]


@pytest.mark.parametrize(("old", "new", "names"), MOVED, ids=[m[0] for m in MOVED])
def test_old_path_re_exports_the_new_module(old, new, names):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), name
    assert set(old_module.__all__) == set(names)
