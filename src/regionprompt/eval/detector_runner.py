"""The runner shared by the detector-evaluation protocols (:mod:`.detector_eval`) and the look-alike
negatives (:mod:`.lookalike`): configure the detector, run it on batches of images with a resumable
result log, and turn detections into COCO results."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from regionprompt.api import Detector
from regionprompt.concept import PromptConcept
from regionprompt.eval.detector_eval_config import DetectorEvalConfig
from regionprompt.eval.eval_set import EvalImage, EvalSet, Exemplar, ResultLog
from regionprompt.logging_utils import progress
from regionprompt.results import Detections


def configure(detector: Detector, *, background: str, max_detections: int) -> Detector:
    """``detector`` with the evaluation's background mode and detection cap (the same object when they
    already match; otherwise a detector sharing its models and embedding cache)."""
    configured = detector.reconfigure(background=background, max_detections=max_detections)
    return detector if configured.config == detector.config else configured


def proposals_for(images: Sequence[EvalImage], config: DetectorEvalConfig) -> list[Any] | None:
    """The ``proposals=`` argument of ``predict``: ground-truth boxes, or ``None`` (the RPN)."""
    return [image.boxes for image in images] if config.proposals == "gt" else None


def to_results(detections: Detections, image: EvalImage, ids_by_name: Mapping[str, int]) -> list[dict[str, Any]]:
    """COCO result dicts of one image's detections (names -> the ground truth's category ids)."""
    return detections.to_coco(image.id, ids_by_name)


def predict_units(units: Sequence[tuple[str, EvalImage]], run: Callable[[list[EvalImage]], list[Detections]],
                  ids_by_name: Mapping[str, int], log: ResultLog, *, batch_size: int, desc: str) -> list[dict[str, Any]]:
    """COCO results of every ``(key, image)`` unit, calling ``run`` on batches of unfinished ones.

    Finished units come from ``log``; new ones are written to it as their batch completes.
    """
    todo = [(key, image) for key, image in units if key not in log]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in progress(batches, desc=desc, total=len(batches), unit="batch"):
        for (key, image), dets in zip(batch, run([image for _, image in batch])):
            log.put(key, to_results(dets, image, ids_by_name))
    return [r for key, _ in units for r in log.get(key)]


def search_concepts(detector: Detector, data: EvalSet, concepts: Sequence[PromptConcept], config: DetectorEvalConfig,
                    log: ResultLog, *, tag: str) -> list[dict[str, Any]]:
    """COCO results of searching every image for the same concepts."""

    def run(images: list[EvalImage]) -> list[Detections]:
        return detector.predict([str(im.path) for im in images], concepts=list(concepts),
                                proposals=proposals_for(images, config), threshold=config.threshold)

    units = [(f"{tag}:{image.id}", image) for image in data.images]
    return predict_units(units, run, data.ids_by_name(), log, batch_size=config.batch_size, desc=f"detect ({tag})")


def generic_concepts(detector: Detector, exemplars: Mapping[str, Sequence[Exemplar]], *,
                     with_text: bool = False) -> list[PromptConcept]:
    """One concept per category from its exemplars (drawn on other images); ``with_text``: plus its name
    (a mixed prompt)."""
    prompts = [ex.prompt(name) for name, items in exemplars.items() for ex in items]
    if not prompts:
        return []
    return detector.make_concepts(text=list(exemplars) if with_text else None, boxes=prompts, max_prompts=None)
