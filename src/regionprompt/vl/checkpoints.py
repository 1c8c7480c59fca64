"""Moved to :mod:`regionprompt.interop.checkpoints` (reading other projects' CLIP files sits above the models);
this path re-exports it for one release. The import is lazy (PEP 562), so ``vl`` never loads ``interop``
unless an old-path name is asked for."""

from typing import Any

__all__ = ["MAX_CONTEXT_LENGTH", "NON_WEIGHT_NAMES", "OPTIONAL_SUFFIXES", "check_state_dict", "clean_state_dict",
           "infer_card", "is_torchscript", "load_checkpoint", "read_state_dict", "read_torchscript_tensors",
           "zip_member_names"]


def __getattr__(name: str) -> Any:
    from regionprompt.interop import checkpoints
    from regionprompt.vl import clip_model

    module = clip_model if name in ("MAX_CONTEXT_LENGTH", "OPTIONAL_SUFFIXES", "check_state_dict") else checkpoints
    if name in __all__:
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
