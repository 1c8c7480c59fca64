"""The ``prompts`` JSON of ``POST /detect`` and ``POST /concepts``, parsed into prompt objects.

Accepted shape (every key optional, at least one positive prompt needed for detection)::

    {
      "text": ["dog", "red apple"],                      # or one string "dog, red apple"
      "boxes": [[x1, y1, x2, y2], {"box": [...], "label": "dog", "image": 0}],
      "points": [[x, y], {"point": [x, y], "label": "dog", "image": 0}],
      "negatives": [{"box": [...]}, {"point": [...]}, {"text": "dog face"}],   # optional "label", "image"
      "concepts": ["my dog"],                            # names in the concept library
      "threshold": 0.3
    }

Coordinates are absolute pixels, boxes xyxy. ``"image": k`` says the prompt was drawn on the k-th
uploaded ``prompt_images`` file (a *generic* prompt); without it, on the searched image. A bare
4-list in ``negatives`` is a box, a bare 2-list a point, a bare string a text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from regionprompt.errors import PromptError
from regionprompt.untrusted import loads_json
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    Prompt,
    TextPrompt,
    split_phrases,
)

KEYS = ("text", "boxes", "points", "negatives", "concepts", "threshold")


@dataclass(frozen=True)
class PromptRequest:
    """A parsed ``prompts`` field.

    Attributes:
        texts: positive text prompts.
        boxes: positive box prompts; ``image`` is ``None`` (searched image) or an ``int`` index into
            the request's prompt images until :meth:`with_images` resolves it.
        points: positive point prompts (same ``image`` rule).
        negatives: negative prompts of any kind (``negative=True``).
        concepts: concept names to look up in the library.
        threshold: score threshold, or ``None`` for the default.
    """

    texts: tuple[TextPrompt, ...] = ()
    boxes: tuple[BoxPrompt, ...] = ()
    points: tuple[PointPrompt, ...] = ()
    negatives: tuple[Prompt, ...] = ()
    concepts: tuple[str, ...] = ()
    threshold: float | None = None

    @property
    def count(self) -> int:
        return len(self.texts) + len(self.boxes) + len(self.points) + len(self.negatives) + len(self.concepts)

    @property
    def has_positive(self) -> bool:
        return bool(self.texts or self.boxes or self.points or self.concepts)

    @property
    def visual(self) -> tuple[Prompt, ...]:
        return self.boxes + self.points + tuple(p for p in self.negatives if not isinstance(p, TextPrompt))

    def image_indices(self) -> set[int]:
        return {p.image for p in self.visual if isinstance(p.image, int)}

    def with_images(self, images: list[Any]) -> PromptRequest:
        """Replace each ``image`` index by ``images[index]`` (e.g. a loaded PIL image)."""

        def resolve(prompt: Prompt) -> Prompt:
            if isinstance(prompt, TextPrompt) or not isinstance(prompt.image, int):
                return prompt
            if isinstance(prompt, BoxPrompt):
                return BoxPrompt(prompt.box, images[prompt.image], prompt.label, prompt.negative)
            return PointPrompt(prompt.point, images[prompt.image], prompt.label, prompt.negative)

        return PromptRequest(
            self.texts,
            tuple(resolve(p) for p in self.boxes),  # type: ignore[misc]
            tuple(resolve(p) for p in self.points),  # type: ignore[misc]
            tuple(resolve(p) for p in self.negatives),
            self.concepts,
            self.threshold,
        )


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise PromptError(f"prompts.{key} must be a JSON list, got {type(value).__name__}")
    return value


def _label(item: dict[str, Any], where: str, max_length: int) -> str | None:
    label = item.get("label")
    if label is None:
        return None
    if not isinstance(label, str) or not label.strip():
        raise PromptError(f"{where}.label must be a non-empty string")
    if len(label) > max_length:
        raise PromptError(f"{where}.label is longer than {max_length} characters")
    return " ".join(label.split())


def _image(item: dict[str, Any], where: str, num_images: int) -> int | None:
    index = item.get("image")
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, int):
        raise PromptError(f"{where}.image must be the index of an uploaded prompt image, got {index!r}")
    if not 0 <= index < num_images:
        raise PromptError(f"{where}.image = {index}, but {num_images} prompt image(s) were uploaded")
    return index


def _text(value: Any, where: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{where} must be a non-empty string")
    if len(value) > max_length:
        raise PromptError(f"{where} is longer than {max_length} characters")
    return value


def _visual(item: Any, kind: str, where: str, *, negative: bool, num_images: int, max_length: int) -> Prompt:
    """One box (``kind="box"``) or point from a bare list or an object."""
    if isinstance(item, list):
        item = {kind: item}
    if not isinstance(item, dict):
        raise PromptError(f"{where} must be a list of numbers or an object with {kind!r}")
    unknown = set(item) - {kind, "label", "image"}
    if unknown:
        raise PromptError(f"{where} has unknown field(s) {sorted(unknown)}; expected {kind!r}, 'label', 'image'")
    if kind not in item:
        raise PromptError(f"{where} lacks {kind!r}")
    label, image = _label(item, where, max_length), _image(item, where, num_images)
    try:
        if kind == "box":
            return BoxPrompt(_coords(item["box"], 4, where), image, label, negative)  # type: ignore[arg-type]
        return PointPrompt(_coords(item["point"], 2, where), image, label, negative)  # type: ignore[arg-type]
    except PromptError as exc:
        if str(exc).startswith(where):
            raise
        raise PromptError(f"{where}: {exc}") from None


def _coords(value: Any, count: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != count or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise PromptError(f"{where}: expected {count} finite numbers, got {json.dumps(value)[:80]}")
    return tuple(float(v) for v in value)


def _negative(item: Any, where: str, num_images: int, max_length: int) -> Prompt:
    if isinstance(item, str):
        return TextPrompt(_text(item, where, max_length), negative=True)
    if isinstance(item, list):
        kind = {4: "box", 2: "point"}.get(len(item))
        if kind is None:
            raise PromptError(f"{where}: a bare list must be a box (4 numbers) or a point (2 numbers)")
        return _visual(item, kind, where, negative=True, num_images=num_images, max_length=max_length)
    if isinstance(item, dict):
        kinds = [k for k in ("box", "point", "text") if k in item]
        if len(kinds) != 1:
            raise PromptError(f"{where} needs exactly one of 'box', 'point' or 'text'")
        if kinds[0] == "text":
            unknown = set(item) - {"text", "label"}
            if unknown:
                raise PromptError(f"{where} has unknown field(s) {sorted(unknown)}")
            return TextPrompt(_text(item["text"], where + ".text", max_length), label=_label(item, where, max_length), negative=True)
        return _visual(item, kinds[0], where, negative=True, num_images=num_images, max_length=max_length)
    raise PromptError(f"{where} must be a string, a list or an object")


def parse_prompts(raw: str | bytes, *, num_images: int = 0, max_prompts: int = 64, max_text_length: int = 200) -> PromptRequest:
    """Parse and check the ``prompts`` JSON text.

    Args:
        raw: the field's text.
        num_images: number of uploaded prompt images (valid ``"image"`` indices are ``0..num_images-1``).
        max_prompts: most prompts allowed in total.
        max_text_length: longest text, label or concept name.

    Raises:
        PromptError: invalid JSON, unknown keys, wrong types, bad coordinates, too many prompts;
            the message names the offending entry (``prompts.boxes[1]``).
    """
    try:
        data = loads_json(raw)  # deep nesting and 5,000-digit integers are JSONDecodeErrors too: 400, not 500
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"prompts is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PromptError(f"prompts must be a JSON object with keys {', '.join(KEYS)}")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise PromptError(f"prompts has unknown key(s) {sorted(unknown)}; expected {', '.join(KEYS)}")

    text = data.get("text", [])
    if isinstance(text, str):
        text = split_phrases(text)
    elif not isinstance(text, list):
        raise PromptError(f"prompts.text must be a list of strings or one string, got {type(text).__name__}")
    # Count before building anything, so a huge request is refused cheaply.
    total = sum(len(_list(data, k)) for k in ("boxes", "points", "negatives", "concepts")) + len(text)
    if total > max_prompts:
        raise PromptError(f"too many prompts: {total} (the limit is {max_prompts})")

    texts = tuple(TextPrompt(_text(t, f"prompts.text[{i}]", max_text_length)) for i, t in enumerate(text))
    options = {"num_images": num_images, "max_length": max_text_length}
    boxes = tuple(
        _visual(b, "box", f"prompts.boxes[{i}]", negative=False, **options) for i, b in enumerate(_list(data, "boxes"))
    )
    points = tuple(
        _visual(p, "point", f"prompts.points[{i}]", negative=False, **options) for i, p in enumerate(_list(data, "points"))
    )
    negatives = tuple(_negative(n, f"prompts.negatives[{i}]", **options) for i, n in enumerate(_list(data, "negatives")))
    concepts = tuple(" ".join(_text(c, f"prompts.concepts[{i}]", max_text_length).split()) for i, c in enumerate(_list(data, "concepts")))

    threshold = data.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise PromptError(f"prompts.threshold must be a number in [0, 1], got {threshold!r}")
        threshold = float(threshold)
    return PromptRequest(texts, boxes, points, negatives, concepts, threshold)  # type: ignore[arg-type]
