"""``regionprompt eval`` through ``regionprompt.cli.main`` on real COCO ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regionprompt.cli import main
from regionprompt.eval import EvalReport, evaluate_detections


@pytest.fixture()
def files(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    gt_path = shared_data / "coco_mini" / "annotations" / "instances_val2017.json"
    gt = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"],
         "bbox": [v + float(rng.normal(0, 2)) for v in a["bbox"][:2]] + a["bbox"][2:], "score": float(rng.random())}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path


def test_eval_writes_json_and_markdown(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    gt_path, pred_path = files
    out = tmp_path / "out" / "nested"
    assert main(["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = EvalReport.from_json(out / "eval.json")
    expected = evaluate_detections(gt_path, pred_path)
    assert report == expected
    assert 0.3 < report.ap < 1.0
    assert (out / "eval.md").read_text() == printed == expected.to_markdown()
    assert f"| {100 * expected.ap:.1f} |" in printed and "### Worst categories" in printed


def test_eval_max_dets_and_no_out(files: tuple[Path, Path], capsys) -> None:
    gt_path, pred_path = files
    assert main(["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--max-dets", "300"]) == 0
    assert "maxDets=300" in capsys.readouterr().out


def test_eval_errors_are_messages_not_tracebacks(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    gt_path, pred_path = files
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    assert main(["eval", "--gt", str(gt_path), "--pred", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json is not valid JSON" in err and "Traceback" not in err

    preds = json.loads(pred_path.read_text())
    preds.append({"image_id": -5, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.3})
    pred_path.write_text(json.dumps(preds))
    assert main(["eval", "--gt", str(gt_path), "--pred", str(pred_path)]) == 2
    assert "1 with unknown image_id" in capsys.readouterr().err
    assert main(["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--skip-invalid"]) == 0
    assert "1 unknown image_id" in capsys.readouterr().out


def test_eval_help_lists_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--gt", "--pred", "--out", "--max-dets", "--skip-invalid"))
