"""Settings of a detector evaluation (:mod:`regionprompt.eval.detector_eval`), importable without torch
so that the command line builds its parser quickly."""

from __future__ import annotations

from dataclasses import dataclass

from regionprompt.errors import EvaluationError

#: ``ZeroShotConfig.background`` values (kept equal to ``zeroshot.ALL_BACKGROUND_MODES``; a test checks).
BACKGROUNDS = ("auto", "text", "none", "learned")
MODES = ("text", "visual-generic", "visual-interactive", "mixed", "negatives")
PROPOSAL_MODES = ("rpn", "gt")
NEGATIVE_KINDS = ("text", "visual")
#: ``background`` of each mode when the config leaves it ``None`` (module docstring).
MODE_BACKGROUND = {"text": "none", "visual-generic": "none", "visual-interactive": "auto", "mixed": "none",
                   "negatives": "auto"}
INTERACTIVE_NOTE = ("interactive protocol (T-Rex2): the prompt boxes are ground-truth boxes of the searched image, "
                    "so each prompt box itself counts as a found object")


@dataclass(frozen=True)
class DetectorEvalConfig:
    """What to measure and how (recorded in the report)."""

    mode: str = "text"  # one of MODES
    proposals: str = "rpn"  # "rpn": the detector's proposal network; "gt": classify the ground-truth boxes
    background: str | None = None  # "none" | "auto" | "text"; None: MODE_BACKGROUND[mode]
    max_images: int | None = None  # evaluate the first N images of the ground truth
    max_detections: int = 100  # kept per image after NMS (and COCO maxDets)
    threshold: float = 0.0  # minimum detection score (0: RegionCLIP's protocol)
    exemplar_images: int = 5  # visual-generic, mixed (and visual negatives): K images giving one exemplar each
    prompt_boxes: int = 1  # visual-interactive: ground-truth boxes per prompt (T-Rex2: 1 and 3)
    pairs: int = 10  # negatives: look-alike category pairs (each run in both directions)
    negative_kind: str = "text"  # negatives: "text" (phrase vs phrase) or "visual" (exemplars vs exemplars)
    fp_threshold: float = 0.3  # negatives: score from which a detection counts (Detector.predict's default)
    match_iou: float = 0.5  # negatives: IoU for a detection to hit a ground-truth box
    batch_size: int = 4  # images per predict call
    seed: int = 0  # choice of exemplar and prompt boxes

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.proposals not in PROPOSAL_MODES:
            problems.append(f"proposals must be one of {', '.join(PROPOSAL_MODES)}, got {self.proposals!r}")
        if self.background is not None and self.background not in BACKGROUNDS:
            problems.append(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.negative_kind not in NEGATIVE_KINDS:
            problems.append(f"negative kind must be one of {', '.join(NEGATIVE_KINDS)}, got {self.negative_kind!r}")
        if self.max_images is not None and self.max_images < 1:
            problems.append(f"max images must be >= 1, got {self.max_images}")
        for name in ("max_detections", "exemplar_images", "prompt_boxes", "pairs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        for name in ("threshold", "fp_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name.replace('_', ' ')} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.match_iou <= 1:
            problems.append(f"match IoU must be in (0, 1], got {self.match_iou}")
        if problems:
            raise EvaluationError("invalid detector evaluation settings: " + "; ".join(problems))

    @property
    def resolved_background(self) -> str:
        return self.background or MODE_BACKGROUND[self.mode]

    def background_for(self, detector_background: str | None) -> str:
        """The background to evaluate with: the configured one, else the detector's own when it learned one
        (open-vocabulary transfer), else the mode's default."""
        if self.background is None and detector_background == "learned":
            return "learned"
        return self.resolved_background


__all__ = ["BACKGROUNDS", "INTERACTIVE_NOTE", "MODES", "MODE_BACKGROUND", "NEGATIVE_KINDS", "PROPOSAL_MODES",
           "DetectorEvalConfig"]
