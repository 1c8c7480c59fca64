"""Open-vocabulary detection evaluation: COCO AP, base/novel AP, LVIS-style AP_r/AP_c/AP_f, per-category table."""

from regionprompt.eval.coco_eval import evaluate_detections
from regionprompt.eval.report import CategoryResult, EvalReport, GroupMetrics

__all__ = ["CategoryResult", "EvalReport", "GroupMetrics", "evaluate_detections"]
