"""`regionprompt train default --fast`: every stage for real at toy size, resumable, installable."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from detector_fixtures import build_detector_folder, render_scenes
from safetensors import safe_open

from regionprompt.api import Detector
from regionprompt.cli import main
from regionprompt.train import default_card
from regionprompt.train.default_card import install_detector
from regionprompt.train.default_pipeline import STAGES, STATE_FILE, run_default_pipeline
from regionprompt.train.default_recipe import fast_profile


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One `--fast --student --install-to` run through the command line; its folder and printed table."""
    torch.set_num_threads(1)  # the machine's two cores are shared
    root = tmp_path_factory.mktemp("default")
    previous = os.environ.get("REGIONPROMPT_CACHE_DIR")
    os.environ["REGIONPROMPT_CACHE_DIR"] = str(root / "user_cache")
    try:
        code = main(["train", "default", "--out", str(root / "run"), "--fast", "--student", "--threads", "1",
                     "--install-to", str(root / "installed")])
    finally:
        if previous is None:
            os.environ.pop("REGIONPROMPT_CACHE_DIR")
        else:
            os.environ["REGIONPROMPT_CACHE_DIR"] = previous
    assert code == 0
    return root


def _stages(table: str) -> dict[str, str]:
    rows = [line.split() for line in table.splitlines()[1:]]
    return {row[0]: row[1] for row in rows}


def test_fast_pipeline_builds_every_stage(run):
    out = run / "run"
    state = json.loads((out / STATE_FILE).read_text())["stages"]
    assert set(state) == set(STAGES) - {"install"} and all(s["done"] for s in state.values())
    for path in ("teacher/model/model.safetensors", "rpn/model/model.safetensors", "pseudo_labels/meta.json",
                 "student/model/model.safetensors", "candidates/teacher/detector.json", "candidates/student/detector.json",
                 "eval/teacher/report.json", "eval/student/report.json", "detector/detector.json"):
        assert (out / path).is_file(), path
    card = json.loads((out / "detector" / "model_card.json").read_text())
    detector = Detector.load(out / "detector", cache=None)
    assert card["model_hash"] == detector.model_hash
    assert set(card["wall_time_s"]) == set(STAGES) - {"card", "install"}
    assert card["training"]["stages"]["teacher"]["recipe"]["layout"] == "iconic"
    assert card["training"]["stages"]["rpn"]["recipe"]["steps"] == fast_profile().rpn.steps
    assert card["architecture"]["clip"]["name"] == "RN-tiny-clip" and card["architecture"]["rpn"]["image_size"] == 96
    evaluation = card["evaluation"]
    assert evaluation["counts"] == {"images": 4, "vocabulary": 1177}
    assert set(evaluation["candidates"]) == {"teacher", "student"} and evaluation["chosen"] in evaluation["candidates"]
    assert all(0.0 <= v <= 1.0 for v in evaluation["summary"].values() if v is not None)
    for part, weights in card["weights"].items():
        assert "F32" in weights["dtypes"] and len(weights["sha256"]) == 64, part


def test_install_writes_float16_weights_that_load_and_detect(run):
    installed = run / "installed"
    card = json.loads((installed / "model_card.json").read_text())
    install = card["install"]
    assert install["storage"] == "compact" and install["rejected"] == {} and install["check_names"] > 0
    assert install["check"]["min_image_cosine"] > 0.999 and install["check"]["min_text_cosine"] > 0.999
    with safe_open(str(installed / "clip" / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} <= {"F16", "I64"}  # noqa: SIM118
    source = json.loads((run / "run" / "detector" / "model_card.json").read_text())
    assert card["weights"]["clip"]["bytes"] < 0.3 * source["weights"]["clip"]["bytes"]  # float16, used tokens only
    detector = Detector.load(installed, cache=None)
    assert detector.model_hash == card["model_hash"] != card["install"]["source_model_hash"]
    assert next(detector.engine.model.parameters()).dtype == torch.float32  # float16 on disk only
    [dets] = detector.predict(render_scenes(1, size=96)[0].image, text="dog, red apple", threshold=0.0)
    assert len(dets) > 0 and set(dets.label_names) <= {"dog", "red apple"}


def test_rerun_skips_finished_stages_and_redoes_only_what_is_missing(run):
    out = run / "run"
    config = replace(fast_profile(), student=True)
    teacher_weights = out / "teacher" / "model" / "model.safetensors"
    before = teacher_weights.stat().st_mtime_ns
    result = run_default_pipeline(config, out)
    assert {s.name: s.status for s in result.stages} == {**{s: "skipped" for s in STAGES}, "install": "off"}
    assert all(s.total_seconds > 0 for s in result.stages if s.status == "skipped")
    assert "skipped" in result.table() and teacher_weights.stat().st_mtime_ns == before
    (out / "eval" / "student" / "report.json").unlink()  # a lost evaluation: only that stage runs again
    again = {s.name: s.status for s in run_default_pipeline(config, out).stages}
    assert again["evaluate"] == "ran" and again["teacher"] == again["rpn"] == again["student"] == "skipped"
    assert (out / "eval" / "student" / "report.json").is_file()


def test_models_trained_earlier_are_adopted_not_retrained(run):
    out = run / "run"
    before = {p: (out / p / "model" / "model.safetensors").stat().st_mtime_ns for p in ("teacher", "rpn", "student")}
    (out / STATE_FILE).unlink()  # e.g. teacher and RPN trained by `regionprompt train clip/rpn` into this layout
    result = run_default_pipeline(replace(fast_profile(), student=True), out)
    status = {s.name: s for s in result.stages}
    assert status["teacher"].status == status["rpn"].status == status["student"].status == "adopted"
    recorded = json.loads((out / "teacher" / "recipe.json").read_text())["seconds_last_invocation"]
    assert status["teacher"].total_seconds == recorded
    assert before == {p: (out / p / "model" / "model.safetensors").stat().st_mtime_ns for p in before}
    assert result.card["wall_time_s"]["teacher"] == round(recorded, 1)


def test_install_falls_back_to_larger_storage_when_the_check_fails(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    source = build_detector_folder(tmp_path / "source")
    images = []
    for i, scene in enumerate(render_scenes(2)):
        images.append(tmp_path / f"scene_{i}.png")
        scene.image.save(images[-1])
    names = ["dog", "red apple"]
    report = install_detector(source, tmp_path / "half", check_images=images, check_names=names)
    assert report.storage == "float16" and report.rejected == {}  # no training texts: no token cut
    monkeypatch.setattr(default_card, "MIN_EMBEDDING_COSINE", 1.0 + 1e-6)  # no rounding can pass this
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "README.md").write_text("kept")
    report = install_detector(source, tmp_path / "full", token_texts=["a dog"], check_images=images, check_names=names)
    assert report.storage == "float32" and set(report.rejected) == {"compact", "float16"}
    assert (tmp_path / "full" / "README.md").read_text() == "kept"
    original = Detector.load(source, cache=None)
    assert Detector.load(tmp_path / "full", cache=None).model_hash == original.model_hash == report.model_hash
