"""The result of a detection evaluation, and its JSON / markdown renderings.

All AP / AR values are fractions in [0, 1] (the markdown shows them x100, as papers do). ``None``
means "undefined": no ground truth for that category or group in the evaluated images (COCO's -1).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from regionprompt.errors import EvaluationError

# JSON layout version, bumped when fields change meaning.
REPORT_FORMAT = 1


@dataclass(frozen=True)
class CategoryResult:
    """One row of the per-category table.

    ``num_gt`` counts non-crowd ground-truth boxes (crowd boxes only excuse detections),
    ``num_pred`` the predictions of this category that were evaluated. ``ap`` is AP@[.50:.95],
    ``ap50`` AP@.50, both at the report's ``max_dets``; None when ``num_gt == 0``.
    """

    id: int
    name: str
    split: str | None
    frequency: str | None
    num_gt: int
    num_pred: int
    ap: float | None
    ap50: float | None


@dataclass(frozen=True)
class GroupMetrics:
    """AP over a group of categories (``all``, ``base``, ``novel``, or a frequency tier ``r``/``c``/``f``).

    Defined as the mean of per-category AP (and AP50) over the group's categories that have
    non-crowd ground truth in the evaluated images; ``num_categories`` counts those categories.
    """

    name: str
    ap: float | None
    ap50: float | None
    num_categories: int


@dataclass(frozen=True)
class EvalReport:
    """COCO-style box-detection metrics with open-vocabulary (base/novel) and LVIS-style (r/c/f) groups.

    ``ap``..``ap_large``: COCO AP@[.50:.95], AP@.50, AP@.75 and AP for small/medium/large objects
    (area < 32^2, < 96^2, larger), all at ``max_dets`` detections per image. ``ar``: AR@``max_dets``.
    ``splits``: ``all`` always, plus ``base`` / ``novel`` when categories carry a ``split`` field.
    ``tiers``: ``r`` / ``c`` / ``f`` for tiers present among categories that carry ``frequency``.
    ``dropped``: predictions removed as invalid, by reason (only with ``skip_invalid``).
    """

    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    ar: float | None
    splits: tuple[GroupMetrics, ...]
    tiers: tuple[GroupMetrics, ...]
    categories: tuple[CategoryResult, ...]
    num_images: int
    num_gt: int
    num_crowd: int
    num_predictions: int
    max_dets: int
    iou_type: str = "bbox"
    dropped: tuple[tuple[str, int], ...] = ()

    def split(self, name: str) -> GroupMetrics | None:
        """The ``all`` / ``base`` / ``novel`` group, or None when the ground truth has no such split."""
        return next((g for g in self.splits if g.name == name), None)

    def tier(self, name: str) -> GroupMetrics | None:
        """The ``r`` / ``c`` / ``f`` group, or None when no category carries that frequency."""
        return next((g for g in self.tiers if g.name == name), None)

    @property
    def ap_r(self) -> float | None:
        """LVIS-style AP of rare categories (None when undefined)."""
        tier = self.tier("r")
        return tier.ap if tier else None

    @property
    def ap_c(self) -> float | None:
        tier = self.tier("c")
        return tier.ap if tier else None

    @property
    def ap_f(self) -> float | None:
        tier = self.tier("f")
        return tier.ap if tier else None

    def category(self, key: int | str) -> CategoryResult:
        """The per-category row by id or name; raises KeyError when absent."""
        for row in self.categories:
            if row.id == key or row.name == key:
                return row
        raise KeyError(key)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (field order fixed, so dumps are byte-stable)."""
        out = {"format": REPORT_FORMAT, **asdict(self)}
        out["dropped"] = dict(self.dropped)
        out["ap_r"], out["ap_c"], out["ap_f"] = self.ap_r, self.ap_c, self.ap_f
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON text; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> EvalReport:
        """Read a report written by :meth:`to_json` (a path, or the JSON text itself)."""
        text = source if isinstance(source, str) and source.lstrip().startswith("{") else None
        try:
            data = json.loads(text if text is not None else Path(source).read_text(encoding="utf-8"))
            if data.get("format") != REPORT_FORMAT:
                raise EvaluationError(f"{source}: unsupported evaluation report format {data.get('format')!r}")
            for key in ("format", "ap_r", "ap_c", "ap_f"):
                data.pop(key)
            data["splits"] = tuple(GroupMetrics(**g) for g in data["splits"])
            data["tiers"] = tuple(GroupMetrics(**g) for g in data["tiers"])
            data["categories"] = tuple(CategoryResult(**c) for c in data["categories"])
            data["dropped"] = tuple(data["dropped"].items())
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EvaluationError(f"cannot read evaluation report {str(source)[:200]}: {exc}") from None

    def to_markdown(self, *, top_k: int = 5) -> str:
        """A short summary: headline table, base/novel and r/c/f groups, best and worst categories."""
        lines = [
            f"## Detection evaluation ({self.iou_type}, maxDets={self.max_dets})",
            "",
            f"{self.num_images} images, {self.num_gt} ground-truth objects (+{self.num_crowd} crowd), "
            f"{self.num_predictions} predictions, "
            f"{sum(c.num_gt > 0 for c in self.categories)} of {len(self.categories)} categories with ground truth.",
        ]
        if self.dropped:
            lines.append(f"Dropped invalid predictions: {', '.join(f'{n} {r}' for r, n in self.dropped)}.")
        lines += [
            "",
            "| AP | AP50 | AP75 | APs | APm | APl | AR@" + str(self.max_dets) + " |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            "| " + " | ".join(percent(v) for v in (self.ap, self.ap50, self.ap75, self.ap_small, self.ap_medium,
                                                  self.ap_large, self.ar)) + " |",
            "",
            "| group | categories | AP | AP50 |",
            "|---|---:|---:|---:|",
        ]
        tier_names = {"r": "rare (AP_r)", "c": "common (AP_c)", "f": "frequent (AP_f)"}
        for group in self.splits + self.tiers:
            label = tier_names.get(group.name, group.name)
            lines.append(f"| {label} | {group.num_categories} | {percent(group.ap)} | {percent(group.ap50)} |")
        rated = sorted((c for c in self.categories if c.ap is not None), key=lambda c: (-c.ap, c.name, c.id))
        if rated:
            k = min(top_k, (len(rated) + 1) // 2)
            worst = sorted(rated, key=lambda c: (c.ap, c.name, c.id))[:k]
            for title, rows in (("Best categories", rated[:k]), ("Worst categories", worst)):
                lines += ["", f"### {title}", "", "| category | split | freq | GT | pred | AP | AP50 |",
                          "|---|---|---|---:|---:|---:|---:|"]
                lines += [
                    f"| {c.name} | {c.split or '-'} | {c.frequency or '-'} | {c.num_gt} | {c.num_pred} "
                    f"| {percent(c.ap)} | {percent(c.ap50)} |"
                    for c in rows
                ]
        return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.1234`` -> ``"12.3"``); ``"-"`` for no value (``None``
    or NaN). The one formatter of every results table."""
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"
