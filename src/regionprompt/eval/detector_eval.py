"""Evaluate a :class:`~regionprompt.api.Detector` on a COCO build (EmojiWorld ``test``) in five protocols.

* ``text``: every image is searched for the whole vocabulary (every category name of the ground truth,
  1,177 for EmojiWorld) with text prompts -- RegionCLIP's open-vocabulary protocol. The vocabulary is
  embedded ONCE into concepts (:meth:`Detector.make_concepts`); each image then only pays for its own
  regions. Score threshold 0, the top ``max_detections`` per image after per-class NMS.
* ``visual-generic``: per category, one exemplar box from each of up to K images of a SEPARATE build
  (e.g. ``val``); the exemplars' region embeddings are averaged into one concept per category, which is
  searched for on every test image. Categories without exemplars are left out of the evaluation (their
  boxes and the category) and counted.
* ``visual-interactive``: on each image, for each category present, ``prompt_boxes`` ground-truth boxes
  of that category drawn on the same image are the prompt (T-Rex2's interactive protocol). The prompt
  box itself is one of the objects to find, so it counts as a found object, as in T-Rex2.
* ``mixed``: as ``visual-generic``, with each category's name added to its exemplars (text + visual
  prompts of one category, averaged into one embedding).
* ``negatives``: look-alike pairs (:mod:`regionprompt.eval.lookalike`).

``proposals``: ``"rpn"`` runs the detector's proposal network; ``"gt"`` classifies the ground-truth
boxes (objectness 1): recognition only, RegionCLIP's benchmark with perfect localisation.

``background`` (:class:`~regionprompt.detect.regionclip.ZeroShotConfig`): ``"none"`` is RegionCLIP's
protocol for a full vocabulary, where the softmax over 1,177 categories already decides. With one or a
few prompts per image (interactive, negatives) ``"none"`` gives every region to some prompt (the score
degenerates to objectness), so those modes default to ``"auto"``.

AP comes from :func:`~regionprompt.eval.coco_eval.evaluate_detections` (COCO AP / AP50; base / novel /
all; AP_r / AP_c / AP_f) with ``max_dets = max_detections``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from regionprompt.api import Detector
from regionprompt.concept import PromptConcept
from regionprompt.errors import EvaluationError
from regionprompt.eval.coco_eval import evaluate_detections
from regionprompt.eval.detector_eval_config import (
    INTERACTIVE_NOTE,
    MODE_BACKGROUND,
    MODES,
    NEGATIVE_KINDS,
    PROPOSAL_MODES,
    DetectorEvalConfig,
)
from regionprompt.eval.detector_runner import (
    configure,
    generic_concepts,
    predict_units,
    proposals_for,
    search_concepts,
)
from regionprompt.eval.eval_set import (
    EvalImage,
    EvalSet,
    ResultLog,
    load_eval_set,
    pick_exemplars,
)
from regionprompt.eval.lookalike import evaluate_negatives, pair_totals, pairs_markdown
from regionprompt.eval.report import EvalReport, percent
from regionprompt.logging_utils import get_logger
from regionprompt.results import Detections

LOG = get_logger("eval.detector")

@dataclass(frozen=True)
class DetectorEvalResult:
    """One evaluation.

    Attributes:
        mode: the protocol (:data:`MODES`).
        settings: protocol knobs, model and data (JSON-able).
        report: COCO AP report (``None`` in ``negatives`` mode).
        notes: protocol remarks a reader needs (e.g. how prompt boxes count).
        counts: what was evaluated (images, prompts, skipped categories...).
        pairs: ``negatives`` mode: one :class:`~regionprompt.eval.lookalike.PairResult` per direction.
        seconds: wall time.
        predictions: the COCO result dicts scored by ``report`` (not part of :meth:`to_dict`).
    """

    mode: str
    settings: dict[str, Any]
    report: EvalReport | None
    notes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    pairs: tuple[Any, ...] = ()
    seconds: float = 0.0
    predictions: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def summary(self) -> dict[str, float | None]:
        """Headline numbers (fractions): AP / AP50 of all, base, novel, and the r / c / f tiers."""
        if self.report is None:
            return pair_totals(self.pairs)
        out: dict[str, float | None] = {}
        for group in self.report.splits + self.report.tiers:
            suffix = "" if group.name == "all" else f"_{group.name}"
            out[f"AP{suffix}"], out[f"AP50{suffix}"] = group.ap, group.ap50
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "settings": self.settings,
            "summary": self.summary(),
            "counts": self.counts,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 1),
            "report": self.report.to_dict() if self.report is not None else None,
            "pairs": [asdict(p) for p in self.pairs],
        }

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            f"# Detector evaluation: {self.mode}",
            "",
            (f"model `{s.get('model')}` (weights {str(s.get('model_hash', ''))[:12]}), ground truth `{s.get('gt')}`, "
            f"{s.get('images')} images; proposals: {s.get('proposals')}, background: {s.get('background')}, "
            f"max detections {s.get('max_detections')}, threshold {s.get('threshold')}; {self.seconds:.0f} s."),
        ]
        if self.counts:
            lines += ["", "Counts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items()) + "."]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        if self.report is not None:
            summary = self.summary()
            rows = [(name, summary.get(f"AP{sfx}"), summary.get(f"AP50{sfx}"))
                    for name, sfx in (("all", ""), ("base", "_base"), ("novel", "_novel"), ("rare (AP_r)", "_r"),
                                      ("common (AP_c)", "_c"), ("frequent (AP_f)", "_f")) if f"AP{sfx}" in summary]
            lines += ["", "| categories | AP | AP50 |", "|---|---:|---:|"]
            lines += [f"| {name} | {percent(ap)} | {percent(ap50)} |" for name, ap, ap50 in rows]
            lines += ["", self.report.to_markdown().replace("## Detection evaluation", "## COCO report")]
        else:
            lines += ["", pairs_markdown(self.pairs, s)]
        return "\n".join(lines).rstrip() + "\n"


# ---- protocols -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an AP protocol returns: the report, counts, notes and the scored COCO results."""

    report: EvalReport
    counts: dict[str, int]
    notes: tuple[str, ...]
    predictions: list[dict[str, Any]]


def evaluate_text(detector: Detector, data: EvalSet, config: DetectorEvalConfig, log: ResultLog, *,
                  concepts: Sequence[PromptConcept] | None = None) -> Outcome:
    """Text protocol (module docstring). ``concepts``: the vocabulary's concepts, one per category name
    (default: made from the category names by text, embedded once)."""
    names = [data.names[c] for c in data.category_ids]
    if concepts is None:
        LOG.info("embedding the vocabulary: %d category names", len(names))
        concepts = detector.make_concepts(text=names, max_prompts=None)  # the whole vocabulary, once
    unknown = sorted({c.name for c in concepts} - set(names))
    if unknown:
        raise EvaluationError(f"concepts {unknown[:5]} name no category of {data.source}")
    results = search_concepts(detector, data, concepts, config, log, tag="text")
    report = evaluate_detections(data.gt, results, max_dets=config.max_detections)
    return Outcome(report, {"images": len(data.images), "vocabulary": len(concepts)}, (), results)


def evaluate_visual_generic(detector: Detector, data: EvalSet, exemplar_set: EvalSet, config: DetectorEvalConfig,
                            log: ResultLog) -> Outcome:
    """Generic visual-prompt protocol (module docstring)."""
    names = [data.names[c] for c in data.category_ids]
    picks = pick_exemplars(exemplar_set, names, images_per_category=config.exemplar_images, seed=config.seed)
    if not picks:
        raise EvaluationError(f"the exemplar set {exemplar_set.source} holds no box of any category of {data.source}")
    LOG.info("embedding exemplars: %d categories, %d boxes", len(picks), sum(len(v) for v in picks.values()))
    mixed = config.mode == "mixed"
    concepts = generic_concepts(detector, picks, with_text=mixed)
    results = search_concepts(detector, data, concepts, config, log, tag="mixed" if mixed else "generic")
    ids = data.ids_by_name()
    kept = [ids[name] for name in picks]
    present = set(data.present_category_ids())
    skipped = [c for c in data.category_ids if data.names[c] not in picks]
    report = evaluate_detections(data.restricted(categories=kept), results, max_dets=config.max_detections)
    notes = []
    test_files = {image.path.resolve() for image in data.images}
    if any(ex.path.resolve() in test_files for items in picks.values() for ex in items):
        notes.append("some exemplars were drawn on evaluated images (use a separate build for the generic protocol)")
    counts = {
        "images": len(data.images),
        "categories_with_exemplars": len(picks),
        "categories_skipped": len(skipped),
        "skipped_categories_present": len(present.intersection(skipped)),
        "skipped_boxes": sum(1 for image in data.images for c in image.category_ids if data.names[c] not in picks),
        "exemplar_boxes": sum(len(v) for v in picks.values()),
    }
    notes.append(f"exemplars: one box from each of up to {config.exemplar_images} images per category of "
                 f"{exemplar_set.source}; categories without exemplars are left out of the AP (counted above)"
                 + ("; each category's name is part of its prompt (mixed)" if mixed else ""))
    return Outcome(report, counts, tuple(notes), results)


def interactive_prompts(image: EvalImage, names: Mapping[int, str], *, boxes_per_prompt: int, seed: int) -> list[dict[str, Any]]:
    """Per category present on ``image``: up to ``boxes_per_prompt`` random ground-truth boxes as box prompts."""
    prompts = []
    for cid in dict.fromkeys(image.category_ids):
        boxes = [tuple(float(v) for v in b) for b in image.boxes_of(cid).tolist()]
        boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        rng = random.Random(f"{seed}:{image.id}:{cid}")
        for box in rng.sample(boxes, min(boxes_per_prompt, len(boxes))):
            prompts.append({"box": box, "label": names[cid]})
    return prompts


def evaluate_visual_interactive(detector: Detector, data: EvalSet, config: DetectorEvalConfig,
                                log: ResultLog) -> Outcome:
    """Interactive visual-prompt protocol (module docstring): one predict call per image."""
    prompts = {image.id: interactive_prompts(image, data.names, boxes_per_prompt=config.prompt_boxes, seed=config.seed)
               for image in data.images}

    def run(images: list[EvalImage]) -> list[Detections]:
        out = []
        for image in images:
            if not prompts[image.id]:
                out.append(Detections.empty((), image.wh))  # nothing to prompt with on an empty image
                continue
            out.extend(detector.predict(str(image.path), boxes=prompts[image.id],
                                        proposals=proposals_for([image], config), threshold=config.threshold))
        return out

    units = [(f"interactive:{image.id}", image) for image in data.images]
    results = predict_units(units, run, data.ids_by_name(), log, batch_size=config.batch_size, desc="detect (interactive)")
    report = evaluate_detections(data.gt, results, max_dets=config.max_detections)
    counts = {"images": len(data.images), "prompts": sum(len({p["label"] for p in v}) for v in prompts.values()),
              "prompt_boxes": sum(len(v) for v in prompts.values())}
    return Outcome(report, counts, (INTERACTIVE_NOTE + f"; {config.prompt_boxes} box(es) per prompt",), results)


def evaluate_detector(detector: Detector, gt: str | Path, config: DetectorEvalConfig | None = None, *,
                      exemplars: str | Path | None = None, image_root: str | Path | None = None,
                      concepts: Sequence[PromptConcept] | None = None, log_path: str | Path | None = None) -> DetectorEvalResult:
    """Run one protocol of :class:`DetectorEvalConfig` on a COCO build.

    Args:
        detector: the detector to measure (its background mode and detection cap are set from ``config``).
        gt: COCO JSON or build folder of the evaluated images.
        config: the protocol.
        exemplars: COCO JSON or build folder giving exemplar boxes (``visual-generic``, visual ``negatives``).
        image_root: folder of ``gt``'s images (default: beside the JSON or in its ``images/``).
        concepts: ``text`` mode only: the vocabulary's concepts instead of the category names.
        log_path: JSONL of finished images; a rerun with the same settings resumes from it.
    Raises:
        EvaluationError: bad settings, missing exemplars, unreadable ground truth.
        RegionPromptError: ``proposals="rpn"`` for a detector without a proposal network.
    """
    config = config or DetectorEvalConfig()
    start = time.perf_counter()
    if detector.kind == "trex2" and config.proposals == "gt":
        raise EvaluationError("a T-Rex2 detector finds its own boxes: evaluate it with proposals 'rpn' (its own)")
    if config.proposals == "rpn" and detector.kind != "trex2" and detector.engine.proposal_source is None:
        raise EvaluationError(f"detector {detector.source} has no proposal network: use proposals 'gt'")
    needs_exemplars = config.mode in ("visual-generic", "mixed") or (config.mode == "negatives"
                                                                     and config.negative_kind == "visual")
    if needs_exemplars and exemplars is None:
        raise EvaluationError(f"mode {config.mode!r} needs exemplars: a separate build (e.g. a val build) to draw them from")
    if concepts is not None and config.mode != "text":
        raise EvaluationError("concepts can only replace the vocabulary in the text mode")
    data = load_eval_set(gt, image_root=image_root, max_images=config.max_images)
    exemplar_set = load_eval_set(exemplars) if needs_exemplars else None
    background = config.background_for(getattr(detector.config, "background", None))
    tuned = configure(detector, background=background, max_detections=config.max_detections)
    settings = {
        "mode": config.mode, "proposals": config.proposals, "background": background,
        "max_detections": config.max_detections, "threshold": config.threshold, "images": len(data.images),
        "gt": data.source, "model": detector.source, "model_hash": detector.model_hash,
        "max_proposals": getattr(tuned.config, "max_proposals", None), "seed": config.seed,
    }
    namer = getattr(detector.engine, "namer", None)
    if namer is not None:  # model_hash is T-Rex2's alone (concepts depend on it); the namer changes the results too
        settings["namer_hash"] = namer.model.card.weights_hash or namer.model.weights_hash()
        settings["namer_config"] = namer.config.to_dict()
    if needs_exemplars:
        settings.update(exemplars=exemplar_set.source, exemplar_images=config.exemplar_images)
    if config.mode == "visual-interactive":
        settings["prompt_boxes"] = config.prompt_boxes
    if config.mode == "negatives":
        settings.update(pairs=config.pairs, negative_kind=config.negative_kind, fp_threshold=config.fp_threshold,
                        match_iou=config.match_iou)
    log = ResultLog(log_path, {**settings, "image_ids": [im.id for im in data.images],
                               "concepts": [c.name for c in concepts] if concepts is not None else None})
    if config.mode == "negatives":
        pairs, counts, notes = evaluate_negatives(tuned, data, config, log, exemplar_set=exemplar_set)
        return DetectorEvalResult(config.mode, settings, None, tuple(notes), dict(counts), tuple(pairs),
                                  time.perf_counter() - start)
    if config.mode == "text":
        outcome = evaluate_text(tuned, data, config, log, concepts=concepts)
    elif config.mode in ("visual-generic", "mixed"):
        outcome = evaluate_visual_generic(tuned, data, exemplar_set, config, log)
    else:
        outcome = evaluate_visual_interactive(tuned, data, config, log)
    return DetectorEvalResult(config.mode, settings, outcome.report, outcome.notes, dict(outcome.counts), (),
                              time.perf_counter() - start, tuple(outcome.predictions))


__all__ = [
    "MODES", "MODE_BACKGROUND", "NEGATIVE_KINDS", "PROPOSAL_MODES", "DetectorEvalConfig", "DetectorEvalResult",
    "configure", "evaluate_detector", "evaluate_text", "evaluate_visual_generic", "evaluate_visual_interactive",
    "generic_concepts", "interactive_prompts", "predict_units", "proposals_for", "search_concepts",
]
