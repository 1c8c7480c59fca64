"""Moved to :mod:`regionprompt.interop.regionclip_release` (an importer of RegionCLIP's released files sits
above the models and the API it builds a detector with); this path re-exports it for one release, lazily
(PEP 562), so ``vl`` never loads ``interop`` unless an old-path name is asked for."""

from typing import Any

__all__ = ["ImportedRegionCLIP", "ReleaseContents", "describe_release", "image_tower_state", "import_regionclip",
           "import_regionclip_detector", "load_weights_only", "offline_rpn_state", "read_concept_embeddings",
           "read_names", "read_release_state", "read_rpn", "text_tower_state", "vision_card"]


def __getattr__(name: str) -> Any:
    from regionprompt.interop import regionclip_release

    if name in __all__:
        return getattr(regionclip_release, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
