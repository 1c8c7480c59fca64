"""The JSON text of model cards (``card.json``), shared by every card dataclass.

Kept free of torch so that cards can be read and written without loading the models they describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from regionprompt.errors import CheckpointError, RegionPromptError
from regionprompt.untrusted import loads_json


def card_to_dict(card: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` of a card, its free-form ``training`` and ``metrics`` mappings as plain dicts."""
    data = asdict(card)
    data["training"] = dict(card.training)
    data["metrics"] = dict(card.metrics)
    return data


def card_to_json(data: Mapping[str, Any]) -> str:
    """A card's dict as ``card.json`` text: 2-space indent, keys in the card's field order, final newline."""
    return json.dumps(data, indent=2) + "\n"


def parse_card_json(
    text: str,
    *,
    source: str,
    what: str = "a model card",
    error: type[RegionPromptError] = CheckpointError,
) -> dict[str, Any]:
    """The JSON object of a card's text.

    Raises:
        error: (naming ``source``) the text is not valid JSON, or not a JSON object (``what`` says
            which kind of card was expected).
    """
    try:
        data = loads_json(text)  # deep nesting and huge integers are JSONDecodeErrors too
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{source}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def tuples_like(default: Any, value: Any) -> Any:
    """JSON lists back to (nested) tuples wherever the card field's default is a tuple."""
    if isinstance(default, tuple) and isinstance(value, list):
        inner = default[0] if default else None
        return tuple(tuples_like(inner, v) for v in value)
    return value
