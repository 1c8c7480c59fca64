"""RegionCLIP zero-shot detection: region embeddings (:mod:`.regions`), prompt embeddings
(:mod:`.prompting`) and the detector that scores proposals against them (:mod:`.zeroshot`)."""

from __future__ import annotations

from regionprompt.detect.prompting import CategoryRecipe, mean_embedding
from regionprompt.detect.regionclip.prompting import PromptCompiler, box_for_point
from regionprompt.detect.regionclip.regions import RegionEncoder
from regionprompt.detect.regionclip.zeroshot import (
    BACKGROUND_MODES,
    ZeroShotConfig,
    ZeroShotDetector,
)

__all__ = [
    "BACKGROUND_MODES",
    "CategoryRecipe",
    "PromptCompiler",
    "RegionEncoder",
    "ZeroShotConfig",
    "ZeroShotDetector",
    "box_for_point",
    "mean_embedding",
]
