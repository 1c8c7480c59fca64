"""The four EmojiWorld splits and what each one labels (the open-vocabulary protocol).

* ``pretrain``  -- image-caption pairs only: no boxes are written; captions may name any concept.
* ``det-train`` -- boxes for BASE concepts only. Novel objects still appear in the images, unlabelled,
  and captions mention only the labelled (base) objects, so novel names never leak into detection
  training.
* ``val`` / ``test`` -- boxes for every concept; categories carry ``split`` (base/novel) and
  ``frequency`` (f/c/r) so evaluation can report base / novel / all and AP_r / AP_c / AP_f.

Concept frequencies follow each split's ``temperature``: ``det-train`` uses the full long tail (it
defines the f/c/r tiers, as LVIS tiers come from its training set), ``pretrain`` a flatter one, and
``val`` / ``test`` sample concepts uniformly so every concept, rare ones included, is measured.

Each split has its own seed stream (``code``), so the same ``(seed, index)`` never gives the same
scene in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from regionprompt.errors import DatasetError


@dataclass(frozen=True)
class SplitSpec:
    """How a split is labelled.

    Attributes:
        name: split name as used on the command line.
        code: fixed integer that separates the split's random stream from the others'.
        has_boxes: whether box annotations are written at all.
        label_novel: whether novel-concept objects are labelled (and mentioned in captions).
        temperature: concepts are drawn with probability ~ ``weight ** temperature``. ``1`` is the
            long tail that defines the f/c/r tiers; lower is flatter, so that rare (novel) concepts
            appear often enough to be learned from captions and to be measured.
    """

    name: str
    code: int
    has_boxes: bool
    label_novel: bool
    temperature: float

    def labels_concept(self, concept_split: str) -> bool:
        """Whether an object of a concept with this base/novel ``concept_split`` is labelled here."""
        return self.has_boxes and (self.label_novel or concept_split == "base")

    def captions_concept(self, concept_split: str) -> bool:
        """Whether captions of this split may mention a concept with this base/novel split."""
        return self.label_novel or concept_split == "base"


SPLITS: dict[str, SplitSpec] = {
    "pretrain": SplitSpec("pretrain", code=0, has_boxes=False, label_novel=True, temperature=0.5),
    "det-train": SplitSpec("det-train", code=1, has_boxes=True, label_novel=False, temperature=1.0),
    "val": SplitSpec("val", code=2, has_boxes=True, label_novel=True, temperature=0.0),
    "test": SplitSpec("test", code=3, has_boxes=True, label_novel=True, temperature=0.0),
}


def get_split(name: str) -> SplitSpec:
    """Look up a split by name; unknown names raise :class:`DatasetError`."""
    try:
        return SPLITS[name]
    except KeyError:
        raise DatasetError(f"unknown EmojiWorld split {name!r}; choose one of {', '.join(SPLITS)}") from None
