"""Moved to :mod:`regionprompt.interop.checkpoints` and :mod:`regionprompt.interop.torch_files` (reading other
projects' CLIP files sits above the models; the shape checks went to :mod:`regionprompt.vl.clip_model`);
this path re-exports it for one release. The import is lazy (PEP 562), so ``vl`` never loads ``interop``
unless an old-path name is asked for."""

from typing import Any

__all__ = ["MAX_CONTEXT_LENGTH", "NON_WEIGHT_NAMES", "OPTIONAL_SUFFIXES", "check_state_dict", "clean_state_dict",
           "infer_card", "is_torchscript", "load_checkpoint", "read_state_dict", "read_torchscript_tensors",
           "zip_member_names"]


def __getattr__(name: str) -> Any:
    from regionprompt.interop import checkpoints, torch_files
    from regionprompt.vl import clip_model

    for module in (checkpoints, torch_files, clip_model):
        if name in __all__ and name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
