"""Prompts: what the user asks a detector to find.

Three kinds of prompt, each optionally *negative* ("not this"):

* :class:`TextPrompt` -- a phrase such as ``"red apple"``;
* :class:`BoxPrompt` -- an exemplar box ``(x1, y1, x2, y2)`` in absolute pixels of the image it was
  drawn on;
* :class:`PointPrompt` -- a click ``(x, y)`` in absolute pixels on one object.

A visual prompt's ``image`` is ``None`` when it was drawn on the image being searched (T-Rex2's
*interactive* workflow) or any image source accepted by :func:`regionprompt.images.load_image`
when it was drawn on another image (the *generic* workflow).

Prompts that share a ``label`` form one :class:`PromptCategory` -- the unit a detector scores
against. :func:`group_prompts` builds the categories; detections refer to them by index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from regionprompt.errors import PromptError

#: Most prompts (phrases + boxes + points + negatives + concepts) in one detection call of the Python API
#: and the CLI, and the longest phrase, label or concept name in characters. 2,048 holds LVIS's 1,203
#: names (auto-labelling a real vocabulary in one command, with the embedding's progress bar) and
#: refuses 10,000 phrases at once, which would keep a call busy for minutes. Embed larger vocabularies
#: once with ``make_concepts(..., max_prompts=None)`` and pass the concepts. The REST server takes fewer
#: per request (:data:`regionprompt.server.settings.SERVER_MAX_PROMPTS`).
MAX_PROMPTS = 2048
MAX_TEXT_LENGTH = 200


@dataclass(frozen=True)
class TextPrompt:
    """A phrase. ``label`` defaults to the phrase itself."""

    text: str
    label: str | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        text = " ".join(str(self.text).split())
        if not text:
            raise PromptError("text prompt is empty")
        object.__setattr__(self, "text", text)

    @property
    def category(self) -> str:
        return self.label or self.text


@dataclass(frozen=True, eq=False)
class BoxPrompt:
    """An exemplar box ``(x1, y1, x2, y2)``, absolute pixels of ``image`` (``None``: the searched image)."""

    box: tuple[float, float, float, float]
    image: Any = None
    label: str | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        box = _numbers(self.box, 4, "box prompt")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise PromptError(f"box prompt {box} has zero or negative size (expected x1 < x2 and y1 < y2)")
        object.__setattr__(self, "box", box)

    def check_inside(self, image_wh: tuple[int, int], tolerance: float = 1.0) -> None:
        """Raise :class:`PromptError` if the box reaches outside a ``(width, height)`` image."""
        width, height = image_wh
        x1, y1, x2, y2 = self.box
        if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
            raise PromptError(f"box prompt {self.box} lies outside the {width}x{height} image it was drawn on")


@dataclass(frozen=True, eq=False)
class PointPrompt:
    """A click ``(x, y)`` in absolute pixels of ``image`` (``None``: the searched image)."""

    point: tuple[float, float]
    image: Any = None
    label: str | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "point", _numbers(self.point, 2, "point prompt"))

    def check_inside(self, image_wh: tuple[int, int], tolerance: float = 1.0) -> None:
        width, height = image_wh
        x, y = self.point
        if not (-tolerance <= x <= width + tolerance and -tolerance <= y <= height + tolerance):
            raise PromptError(f"point prompt {self.point} lies outside the {width}x{height} image it was drawn on")


VisualPrompt = Union[BoxPrompt, PointPrompt]
Prompt = Union[TextPrompt, BoxPrompt, PointPrompt]


def _numbers(values: Any, count: int, what: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)):  # "1234" would otherwise read as the box (1, 2, 3, 4)
        raise PromptError(f"{what}: expected {count} numbers, got {values[:80]!r}")
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise PromptError(f"{what}: expected {count} numbers, got {values!r}") from None
    if len(numbers) != count:
        raise PromptError(f"{what}: expected {count} numbers, got {len(numbers)}: {values!r}")
    if not all(math.isfinite(v) for v in numbers):
        raise PromptError(f"{what}: values must be finite, got {values!r}")
    return numbers


@dataclass(frozen=True)
class PromptCategory:
    """Everything the user said about one category.

    Attributes:
        name: the category's display name (the label of its prompts).
        texts: positive text prompts.
        visuals: positive box / point prompts (possibly on several images).
        negatives: prompts (any kind) of what must *not* be detected as this category.
    """

    name: str
    texts: tuple[TextPrompt, ...] = ()
    visuals: tuple[VisualPrompt, ...] = ()
    negatives: tuple[Prompt, ...] = ()

    @property
    def kind(self) -> str:
        """``"text"``, ``"visual"`` or ``"mixed"`` -- which workflow this category uses."""
        if self.texts and self.visuals:
            return "mixed"
        return "text" if self.texts else "visual"

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (images are described, not embedded)."""
        from regionprompt.images import describe_source

        def visual(p: VisualPrompt) -> dict[str, Any]:
            where = "this image" if p.image is None else describe_source(p.image)
            if isinstance(p, BoxPrompt):
                return {"box": list(p.box), "image": where}
            return {"point": list(p.point), "image": where}

        return {
            "name": self.name,
            "kind": self.kind,
            "texts": [t.text for t in self.texts],
            "visuals": [visual(v) for v in self.visuals],
            "negatives": [t.text if isinstance(t, TextPrompt) else visual(t) for t in self.negatives],
        }


def check_prompt_count(count: int, max_prompts: int | None = MAX_PROMPTS) -> None:
    """:class:`PromptError` naming the limit when one call holds more than ``max_prompts`` prompts."""
    if max_prompts is not None and count > max_prompts:
        raise PromptError(f"too many prompts: {count} (the limit is {max_prompts} per call); split them over "
                          "several calls, or embed a large vocabulary once as saved concepts")


def check_text_length(text: str, what: str = "text prompt", max_length: int = MAX_TEXT_LENGTH) -> str:
    """``text`` unless it is longer than ``max_length`` characters (then :class:`PromptError`)."""
    if len(text) > max_length:
        raise PromptError(f"{what} {text[:40]!r}... is {len(text)} characters long (the limit is {max_length})")
    return text


def split_phrases(text: str) -> list[str]:
    """``"dog, red apple; cat"`` -> ``["dog", "red apple", "cat"]`` (commas, semicolons, periods, newlines)."""
    return [p for p in (" ".join(part.split()) for part in re.split(r"[,;.\n]", text)) if p]


def group_prompts(prompts: Iterable[Prompt], *, default_visual_label: str = "object") -> list[PromptCategory]:
    """Group prompts by label into categories, in order of first appearance.

    Visual prompts without a label share ``default_visual_label``. Negative prompts attach to the
    category named by their label; an unlabelled negative applies to every category. A category
    must have at least one positive prompt.

    Raises:
        PromptError: no positive prompt at all, or a negative prompt naming no positive category.
    """
    positives: dict[str, dict[str, list[Any]]] = {}
    global_negatives: list[Prompt] = []
    labelled_negatives: list[tuple[str, Prompt]] = []
    for prompt in prompts:
        label = prompt.category if isinstance(prompt, TextPrompt) else (prompt.label or default_visual_label)
        if prompt.negative:
            if prompt.label is None:
                global_negatives.append(prompt)
            else:
                labelled_negatives.append((prompt.label, prompt))
            continue
        slot = positives.setdefault(label, {"texts": [], "visuals": [], "negatives": []})
        slot["texts" if isinstance(prompt, TextPrompt) else "visuals"].append(prompt)
    if not positives:
        raise PromptError("no positive prompt given: add a text phrase, a box or a point")
    for label, prompt in labelled_negatives:
        if label not in positives:
            raise PromptError(f"negative prompt refers to category {label!r}, which has no positive prompt")
        positives[label]["negatives"].append(prompt)
    return [
        PromptCategory(
            name=label,
            texts=tuple(slot["texts"]),
            visuals=tuple(slot["visuals"]),
            negatives=tuple(slot["negatives"] + global_negatives),
        )
        for label, slot in positives.items()
    ]


def validate_visual_prompts(prompts: Sequence[Prompt], image_wh: tuple[int, int]) -> None:
    """Check that prompts drawn on the searched image (``image is None``) lie inside it."""
    for prompt in prompts:
        if isinstance(prompt, (BoxPrompt, PointPrompt)) and prompt.image is None:
            prompt.check_inside(image_wh)


__all__ = [
    "MAX_PROMPTS",
    "MAX_TEXT_LENGTH",
    "BoxPrompt",
    "PointPrompt",
    "Prompt",
    "PromptCategory",
    "TextPrompt",
    "VisualPrompt",
    "check_prompt_count",
    "check_text_length",
    "group_prompts",
    "split_phrases",
    "validate_visual_prompts",
]
