"""Modules moved by the architecture refactor keep their old import paths for one release: each old path
hands out the very objects of the new one (so isinstance checks and monkeypatching see one class)."""

import importlib

import pytest

MOVED = [
    ("regionprompt.train.scene_cache", "regionprompt.world.scene_cache",
     ["SceneCache", "SceneCacheSpec", "build_scene_cache"]),
    ("regionprompt.detect.proposals", "regionprompt.proposals", ["ProposalSource", "Proposals"]),
    ("regionprompt.vl.checkpoints", "regionprompt.interop.checkpoints",
     ["NON_WEIGHT_NAMES", "clean_state_dict", "infer_card", "load_checkpoint"]),
    ("regionprompt.vl.checkpoints", "regionprompt.interop.torch_files",
     ["is_torchscript", "read_state_dict", "read_torchscript_tensors", "zip_member_names"]),
    ("regionprompt.vl.regionclip_release", "regionprompt.interop.regionclip_release",
     importlib.import_module("regionprompt.interop.regionclip_release").__all__),
]


@pytest.mark.parametrize(("old", "new", "names"), MOVED, ids=[f"{m[0]}->{m[1]}" for m in MOVED])
def test_old_path_re_exports_the_new_module(old, new, names):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), name
    assert set(names) <= set(old_module.__all__)


def test_old_checkpoints_path_re_exports_the_shape_checks_from_the_model():
    from regionprompt.vl import checkpoints, clip_model

    for name in ("MAX_CONTEXT_LENGTH", "OPTIONAL_SUFFIXES", "check_state_dict"):
        assert getattr(checkpoints, name) is getattr(clip_model, name)
    with pytest.raises(AttributeError):
        checkpoints.no_such_name  # noqa: B018 -- the lazy re-export knows only the moved names


def test_lazy_re_exports_do_not_load_the_higher_layer():
    """``import regionprompt.vl.checkpoints`` alone must not import ``interop`` (vl sits below it)."""
    import subprocess
    import sys

    code = ("import sys, regionprompt.vl.checkpoints, regionprompt.vl.regionclip_release; "
            "print(any(m.startswith('regionprompt.interop') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
