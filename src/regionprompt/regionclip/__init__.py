"""RegionCLIP: region-text pretraining from a CLIP teacher's pseudo labels.

* :mod:`~regionprompt.regionclip.region_encoder` -- region embeddings and region-concept scores;
* :mod:`~regionprompt.regionclip.pseudo_labels` -- proposals -> teacher -> pseudo labels (resumable);
* :mod:`~regionprompt.regionclip.label_store` -- the sharded on-disk format and its reader;
* :mod:`~regionprompt.regionclip.precision` -- pseudo-label precision against EmojiWorld's true boxes;
* :mod:`~regionprompt.regionclip.oracle` -- proposals from true boxes (upper bound, tests);
* :mod:`~regionprompt.regionclip.losses` -- the student's three losses.

The student's training recipe is :mod:`regionprompt.train.regions`.
"""

from regionprompt.regionclip.label_store import (
    ImageRegions,
    PseudoLabelError,
    PseudoLabels,
)
from regionprompt.regionclip.pseudo_labels import (
    PseudoLabelConfig,
    PseudoLabelRun,
    pseudo_label,
)

__all__ = ["ImageRegions", "PseudoLabelConfig", "PseudoLabelError", "PseudoLabelRun", "PseudoLabels", "pseudo_label"]
