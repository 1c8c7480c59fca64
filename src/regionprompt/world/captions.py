"""Caption grammar: varied, truthful, incomplete descriptions of a scene.

Like real captions, each one names only SOME of the objects. Whatever it names is true: counts are
the exact number of instances of that concept among the objects passed in ("two dogs"; "several"
only for three or more), spatial words are computed from the true boxes, and background phrases
describe the real background. A synonym replaces the name now and then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from regionprompt.world.language import count_phrase, is_mass_noun, is_plural_form, join_list, pluralize

SYNONYM_PROB = 0.25
VAGUE_COUNT_PROB = 0.2
SPATIAL_PROB = 0.25
BACKGROUND_PROB = 0.15
MAX_MENTIONED = 3

_LIST_TEMPLATES: tuple[str, ...] = (
    "{X}.",
    "A picture of {X}.",
    "A photo showing {X}.",
    "An illustration with {X}.",
    "There {be} {X} in this image.",
    "Emoji art of {X}.",
    "A colorful scene with {X}.",
    "Cartoon drawing of {X}.",
    "This image contains {X}.",
)
_PARTIAL_TEMPLATES: tuple[str, ...] = (
    "{X} and some other things.",
    "A picture of {X} among other objects.",
    "Several things, including {X}.",
)
_BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "{X} on {B}.",
    "A picture of {X} against {B}.",
    "{X}, drawn on {B}.",
    "There {be} {X} on {B}.",
)
_SPATIAL_TEMPLATES: tuple[str, ...] = (
    "{A} {R} {C}.",
    "A picture of {A} {R} {C}.",
    "There is {A} {R} {C}.",
)
_EMPTY_TEMPLATES: tuple[str, ...] = (
    "An image of {B}.",
    "Some shapes on {B}.",
    "{B}.",
)


@dataclass(frozen=True)
class CaptionObject:
    """One object a caption may talk about: concept id, its names, and its ``(4,)`` xyxy pixel box."""

    concept_id: int
    name: str
    synonyms: tuple[str, ...]
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Mention:
    """A concept a caption names: ``count`` is the true number of its instances; ``phrase`` is the caption's words."""

    concept_id: int
    count: int
    phrase: str


@dataclass(frozen=True)
class Caption:
    """A caption and the concepts it mentions (for checking and analysis; training should parse ``text``)."""

    text: str
    mentions: tuple[Mention, ...]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def usable_synonym(synonym: str) -> bool:
    """Whether a synonym reads as a noun phrase; emoji short names include bare adjectives and
    participles ("laughing", "relieved") that would make "a laughing" in a caption."""
    words = synonym.split()
    if not words or words[0].lower() == "the":
        return False
    return not (len(words) == 1 and words[0].lower().endswith(("ing", "ed")))


def _surface_name(rng: np.random.Generator, obj: CaptionObject) -> str:
    alternatives = [s for s in obj.synonyms if s and s != obj.name and usable_synonym(s)]
    if alternatives and rng.random() < SYNONYM_PROB:
        return _pick(rng, alternatives)
    return obj.name


def _mention(rng: np.random.Generator, obj: CaptionObject, count: int) -> Mention:
    name = _surface_name(rng, obj)
    if count >= 3 and not is_plural_form(name) and not is_mass_noun(name) and rng.random() < VAGUE_COUNT_PROB:
        phrase = f"several {pluralize(name)}"
    else:
        phrase = count_phrase(name, count)
    return Mention(obj.concept_id, count, phrase)


def relation(box_a: Sequence[float], box_b: Sequence[float], canvas_size: int) -> str:
    """Where box A is relative to box B (xyxy): "to the left of", "to the right of", "above", "below" or "next to"."""
    dx = (box_a[0] + box_a[2] - box_b[0] - box_b[2]) / 2
    dy = (box_a[1] + box_a[3] - box_b[1] - box_b[3]) / 2
    # Below this separation the direction is ambiguous to a human reader.
    if max(abs(dx), abs(dy)) < 0.1 * canvas_size:
        return "next to"
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _be(first: Mention) -> str:
    return "is" if first.phrase.split()[0] in ("a", "an") else "are"


def _salience(objects: Sequence[CaptionObject], counts: Sequence[int] | None = None) -> np.ndarray:
    """Probability of being mentioned, proportional to the area an object (group) covers.

    People describe what stands out: big objects are named, a thumbnail-sized one in a corner rarely
    is. Without this, captions name tiny objects as often as large ones, and a CLIP model trained on
    them learns the easy background words instead of the objects.
    """
    areas = np.array([(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in objects], dtype=np.float64)
    if counts is not None:
        areas = areas * np.asarray(counts, dtype=np.float64)
    areas = np.maximum(areas, 1.0)
    return areas / areas.sum()


def _one_caption(
    rng: np.random.Generator,
    groups: list[tuple[CaptionObject, int]],
    background_phrase: str,
    canvas_size: int,
) -> Caption:
    if not groups:
        return Caption(_capitalize(_pick(rng, _EMPTY_TEMPLATES).format(B=background_phrase)), ())
    singles = [obj for obj, count in groups if count == 1]
    if len(singles) >= 2 and rng.random() < SPATIAL_PROB:
        first, second = (singles[i] for i in rng.choice(len(singles), size=2, replace=False, p=_salience(singles)))
        a, c = _mention(rng, first, 1), _mention(rng, second, 1)
        text = _pick(rng, _SPATIAL_TEMPLATES).format(A=a.phrase, R=relation(first.box, second.box, canvas_size), C=c.phrase)
        return Caption(_capitalize(text), (a, c))
    k = int(rng.integers(1, min(MAX_MENTIONED, len(groups)) + 1))
    weights = _salience([obj for obj, _ in groups], [count for _, count in groups])
    chosen = [groups[i] for i in rng.choice(len(groups), size=k, replace=False, p=weights)]
    mentions = tuple(_mention(rng, obj, count) for obj, count in chosen)
    listed = join_list([m.phrase for m in mentions])
    if rng.random() < BACKGROUND_PROB:
        template = _pick(rng, _BACKGROUND_TEMPLATES)
    elif k < len(groups) and rng.random() < 0.3:
        template = _pick(rng, _PARTIAL_TEMPLATES)
    else:
        template = _pick(rng, _LIST_TEMPLATES)
    text = template.format(X=listed, B=background_phrase, be=_be(mentions[0]))
    return Caption(_capitalize(text), mentions)


def make_captions(
    objects: Sequence[CaptionObject],
    background_phrase: str,
    rng: np.random.Generator,
    *,
    count: int,
    canvas_size: int,
) -> list[Caption]:
    """Write ``count`` captions (distinct where possible) about ``objects`` on a background.

    Counts in the captions are the number of entries in ``objects`` per concept, so pass exactly the
    objects the captions may talk about (e.g. only base-concept objects for ``det-train``).
    """
    groups: dict[int, list[CaptionObject]] = {}
    for obj in objects:
        groups.setdefault(obj.concept_id, []).append(obj)
    grouped = [(members[0], len(members)) for members in groups.values()]
    captions: list[Caption] = []
    seen: set[str] = set()
    for _ in range(count * 4):
        caption = _one_caption(rng, grouped, background_phrase, canvas_size)
        if caption.text not in seen:
            seen.add(caption.text)
            captions.append(caption)
        if len(captions) == count:
            break
    return captions
