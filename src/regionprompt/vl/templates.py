"""Prompt template sets: a phrase such as ``"dog"`` becomes ``"a photo of a dog."`` etc.

Named sets:

- ``"regionclip81"``: RegionCLIP's 81 templates (``"{}."`` plus the 80 CLIP ImageNet templates), shipped as
  package data (``regionclip_templates.json``, from microsoft/RegionCLIP, Apache-2.0).
- ``"single"``: the bare phrase (``"{}"``), one encoder call per phrase.
- ``"emoji"``: a few templates worded for flat, drawn emoji scenes (EmojiWorld).

A set's :attr:`TemplateSet.digest` depends only on its templates (not its name), so it can key a cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from regionprompt.errors import PromptError

PLACEHOLDER = "{}"

EMOJI_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a {} emoji.",
    "an emoji of a {}.",
    "an illustration of a {}.",
    "a drawing of a {}.",
    "a cartoon {}.",
    "an icon of a {}.",
)


@dataclass(frozen=True)
class TemplateSet:
    """An ordered tuple of templates, each with exactly one ``{}`` where the phrase goes."""

    name: str
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.templates:
            raise PromptError(f"template set {self.name!r} is empty")
        for template in self.templates:
            # str.format would also expand "{0}" or fail on a stray "{", so insist on one literal "{}"
            # and no other braces: filling is then a plain, predictable substitution.
            rest = template.replace(PLACEHOLDER, "", 1)
            if template.count(PLACEHOLDER) != 1 or "{" in rest or "}" in rest:
                raise PromptError(
                    f"template {template!r} in set {self.name!r} must contain exactly one '{{}}' and no other braces"
                )

    def __len__(self) -> int:
        return len(self.templates)

    def fill(self, phrase: str) -> list[str]:
        """All templates filled with ``phrase``, in template order (``len(self)`` strings)."""
        return [template.replace(PLACEHOLDER, phrase) for template in self.templates]

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the templates (order matters, the name does not)."""
        return _digest(self.templates)


@cache
def _digest(templates: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(templates), ensure_ascii=False).encode("utf-8")).hexdigest()


@cache
def _regionclip_templates() -> tuple[str, ...]:
    text = resources.files("regionprompt.vl").joinpath("regionclip_templates.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["templates"])


def _named_sets() -> dict[str, tuple[str, ...]]:
    return {"regionclip81": _regionclip_templates(), "single": (PLACEHOLDER,), "emoji": EMOJI_TEMPLATES}


TEMPLATE_SET_NAMES: tuple[str, ...] = ("regionclip81", "single", "emoji")


def get_template_set(spec: str | TemplateSet | Sequence[str]) -> TemplateSet:
    """Resolve a set by name (see :data:`TEMPLATE_SET_NAMES`), pass a :class:`TemplateSet` through, or wrap a
    sequence of template strings as a custom set named ``"custom"``."""
    if isinstance(spec, TemplateSet):
        return spec
    if isinstance(spec, str):
        sets = _named_sets()
        if spec not in sets:
            raise PromptError(f"unknown template set {spec!r}; choose one of {', '.join(TEMPLATE_SET_NAMES)}")
        return TemplateSet(spec, sets[spec])
    return TemplateSet("custom", tuple(spec))


def fill(template_set: str | TemplateSet | Sequence[str], phrase: str) -> list[str]:
    """``phrase`` filled into every template of ``template_set`` (name, set or list of templates)."""
    return get_template_set(template_set).fill(phrase)


def template_set_hash(template_set: str | TemplateSet | Sequence[str]) -> str:
    """Stable hex digest of a template set's contents; see :attr:`TemplateSet.digest`."""
    return get_template_set(template_set).digest
