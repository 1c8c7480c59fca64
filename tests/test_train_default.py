"""`regionprompt train default --fast`: every stage for real at toy size (T-Rex2 included), resumable,
installable; the detector kept is the best candidate by AP50."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from detector_fixtures import build_detector_folder, render_scenes
from safetensors import safe_open

from regionprompt.api import Detector
from regionprompt.cli import main, train_default
from regionprompt.errors import RegionPromptError
from regionprompt.train import default_card
from regionprompt.train.default_card import hash_part, install_detector, read_json
from regionprompt.train.default_pipeline import (
    CANDIDATES,
    STAGES,
    STATE_FILE,
    PipelinePaths,
    choose_candidate,
    run_default_pipeline,
    scene_specs,
    training_texts,
)
from regionprompt.train.default_recipe import DefaultPipelineConfig, fast_profile
from regionprompt.train.finalize import RECIPE_FILE
from regionprompt.train.ov_transfer import RegionClipTransferConfig
from regionprompt.world.concepts import load_concepts


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
    # The fast profile names T-Rex2's boxes with nothing (no namer, so no namer tuning either).
    assert set(state) == set(STAGES) - {"install", "namer"} and all(s["done"] for s in state.values())
    for path in ("teacher/model/model.safetensors", "rpn/model/model.safetensors", "pseudo_labels/meta.json",
                 "student/model/model.safetensors", "trex2/model/model.safetensors", "candidates/teacher/detector.json",
                 "candidates/student/detector.json", "candidates/trex2/detector.json", "eval/teacher/report.json",
                 "eval/student/report.json", "eval/trex2/report.json", "detector/detector.json"):
        assert (out / path).is_file(), path
    card = json.loads((out / "detector" / "model_card.json").read_text())
    detector = Detector.load(out / "detector", cache=None)
    assert card["model_hash"] == detector.model_hash
    assert set(card["wall_time_s"]) == set(STAGES) - {"card", "install", "namer"}
    stages = card["training"]["stages"]
    assert stages["teacher"]["recipe"]["layout"] == "iconic"
    assert stages["rpn"]["recipe"]["steps"] == fast_profile().rpn.steps
    # T-Rex2 trained on the teacher's model folder, not on the recipe's card name.
    assert stages["trex2"]["recipe"]["clip"] == str(out / "teacher" / "model")
    assert stages["trex2"]["recipe"]["steps"] == fast_profile().trex2.steps and "final_loss" in stages["trex2"]
    evaluation = card["evaluation"]
    assert evaluation["counts"] == {"images": 4, "vocabulary": 1177}
    assert set(evaluation["candidates"]) == {"teacher", "student", "trex2"}
    assert all(0.0 <= v <= 1.0 for v in evaluation["summary"].values() if v is not None)
    # The choice: the highest AP50, the earlier of CANDIDATES on a tie; the card describes that detector.
    ap50 = {name: summary["AP50"] or 0.0 for name, summary in evaluation["candidates"].items()}
    best = max(ap50.values())
    assert evaluation["chosen"] == next(n for n in CANDIDATES if n in ap50 and ap50[n] == best)
    assert evaluation["summary"] == evaluation["candidates"][evaluation["chosen"]]
    if evaluation["chosen"] == "trex2":
        assert detector.kind == "trex2" and card["description"].startswith("T-Rex2 detector")
        assert card["architecture"]["trex2"]["num_queries"] == 12 and "rpn" not in card["architecture"]
    else:
        assert detector.kind == "regionclip-zeroshot" and card["description"].startswith("Zero-shot RegionCLIP")
        assert card["architecture"]["clip"]["name"] == "RN-tiny-clip" and card["architecture"]["rpn"]["image_size"] == 96
    for part, weights in card["weights"].items():
        assert "F32" in weights["dtypes"] and len(weights["sha256"]) == 64, part


def test_trex2_candidate_is_a_trained_trex2_detector_that_was_evaluated(run):
    out = run / "run"
    candidate = Detector.load(out / "candidates" / "trex2", cache=None)
    assert candidate.kind == "trex2" and candidate.config == fast_profile().trex2_detect
    model = candidate.engine.model
    teacher = read_json(out / "teacher" / "model" / "card.json")
    assert model.card.clip.weights_hash == teacher["weights_hash"]  # the teacher's backbone and text side
    assert (model.card.image_size, model.card.dim, model.card.num_queries) == (64, 32, 12)
    assert candidate.model_hash == read_json(out / "trex2" / "model" / "card.json")["weights_hash"]
    log = [json.loads(line) for line in (out / "trex2" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == fast_profile().trex2.steps and log[-1]["loss"] > 0
    report = read_json(out / "eval" / "trex2" / "report.json")
    assert report["counts"]["images"] == 4 and report["settings"]["proposals"] == "rpn"  # i.e. its own boxes
    predictions = json.loads((out / "eval" / "trex2" / "predictions.json").read_text())
    assert predictions and all(len(p["bbox"]) == 4 for p in predictions)
    assert len({p["image_id"] for p in predictions}) == 4


def test_install_writes_float16_weights_that_load_and_detect(run):
    installed = run / "installed"
    card = json.loads((installed / "model_card.json").read_text())
    install = card["install"]
    assert install["storage"] == "compact" and install["rejected"] == {} and install["check_names"] > 0
    assert install["check"]["min_text_cosine"] > 0.999
    part = hash_part(read_json(installed / "detector.json"))  # "clip", or "trex2" when T-Rex2 won
    assert Detector.load(installed, cache=None).kind == read_json(run / "run" / "detector" / "detector.json")["kind"]
    if part == "clip":
        assert install["check"]["min_image_cosine"] > 0.999
    else:
        assert install["check"]["detection_iou"] > 0.95 and install["check"]["max_score_diff"] < 0.02
    with safe_open(str(installed / part / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} <= {"F16", "I64"}  # noqa: SIM118
    source = json.loads((run / "run" / "detector" / "model_card.json").read_text())
    assert card["weights"][part]["bytes"] < 0.3 * source["weights"][part]["bytes"]  # float16, used tokens only
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
    assert {s.name: s.status for s in result.stages} == {**{s: "skipped" for s in STAGES}, "install": "off", "namer": "off"}
    assert all(s.total_seconds > 0 for s in result.stages if s.status == "skipped")
    assert "skipped" in result.table() and teacher_weights.stat().st_mtime_ns == before
    (out / "eval" / "student" / "report.json").unlink()  # a lost evaluation: only that stage runs again
    again = {s.name: s.status for s in run_default_pipeline(config, out).stages}
    assert again["evaluate"] == "ran" and again["teacher"] == again["rpn"] == again["student"] == "skipped"
    assert again["trex2"] == "skipped"
    assert (out / "eval" / "student" / "report.json").is_file()


def test_models_trained_earlier_are_adopted_not_retrained(run):
    out = run / "run"
    before = {p: (out / p / "model" / "model.safetensors").stat().st_mtime_ns for p in ("teacher", "rpn", "student", "trex2")}
    (out / STATE_FILE).unlink()  # e.g. teacher and RPN trained by `regionprompt train clip/rpn` into this layout
    result = run_default_pipeline(replace(fast_profile(), student=True), out)
    status = {s.name: s for s in result.stages}
    assert status["teacher"].status == status["rpn"].status == status["student"].status == "adopted"
    assert status["trex2"].status == "adopted"
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


def test_trex2_detector_folder_installs_as_compact_trex2(run, tmp_path):
    """A T-Rex2 candidate installs like the CLIP detectors: float16, unused token rows cut, checked
    against float32; it replaces a RegionCLIP install (clip/, rpn/ go; other files stay)."""
    torch.set_num_threads(1)
    out, config = run / "run", replace(fast_profile(), student=True)
    paths = PipelinePaths(out, out / "caches")
    gt = read_json(paths.world_test(config) / "annotations.json")
    images = [paths.world_test(config) / "images" / im["file_name"] for im in gt["images"][:2]]
    names = sorted({c["name"] for c in gt["categories"] if c["id"] in {a["category_id"] for a in gt["annotations"]}})
    texts = training_texts(config, paths, scene_specs(config)["teacher"], detector="trex2")
    assert {c.name for c in load_concepts().subset("base")} <= set(texts)  # what the text projection learnt on
    target = tmp_path / "installed"
    shutil.copytree(run / "installed", target)  # an earlier install, possibly of the other kind
    (target / "README.md").write_text("kept")
    report = install_detector(out / "candidates" / "trex2", target, token_texts=texts, check_images=images,
                              check_names=names)
    assert report.storage == "compact" and report.rejected == {}, report
    assert report.check["min_text_cosine"] > 0.999 and report.check["detection_iou"] > 0.95
    assert 0.0 <= report.check["max_score_diff"] < 0.02
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "detector.json", "model_card.json", "trex2"]
    installed = Detector.load(target, cache=None)
    assert installed.kind == "trex2" and installed.model_hash == report.model_hash
    source = Detector.load(out / "candidates" / "trex2", cache=None)
    assert report.model_hash != source.model_hash  # float16 weights, zeroed token rows
    card = read_json(target / "model_card.json")
    assert card["model_hash"] == installed.model_hash and card["install"]["source_model_hash"] == source.model_hash
    assert card["weights"]["trex2"]["dtypes"] == ["F16", "I64"]
    full = sum(p.stat().st_size for p in (out / "candidates" / "trex2").rglob("*.safetensors"))
    assert card["weights"]["trex2"]["bytes"] < 0.3 * full
    assert next(installed.engine.model.parameters()).dtype == torch.float32  # float16 on disk only
    [dets] = installed.predict(images[0], text=names[:3], threshold=0.0)
    [ref] = source.predict(images[0], text=names[:3], threshold=0.0)
    assert len(dets) > 0 and set(dets.label_names) <= set(names[:3])
    assert abs(float(dets.scores[0]) - float(ref.scores[0])) < 0.02


def test_trex2_off_keeps_the_regionclip_pipeline(run, tmp_path):
    """``trex2=None`` (``--no-trex2``): no T-Rex2 stage, candidate or evaluation; the rest is reused.

    (No student here: its pseudo-label key holds the teacher's pool path, which a copied folder changes.)
    """
    out = tmp_path / "run"
    shutil.copytree(run / "run", out, ignore=shutil.ignore_patterns("candidates", "eval", "detector"))
    status = {s.name: s.status for s in run_default_pipeline(replace(fast_profile(), trex2=None), out).stages}
    assert status["trex2"] == status["student"] == "off" and status["teacher"] == status["rpn"] == "skipped"
    assert status["detector"] == status["evaluate"] == "ran"
    assert not (out / "candidates" / "trex2").exists() and not (out / "eval" / "trex2").exists()
    card = read_json(out / "detector" / "model_card.json")
    assert card["evaluation"]["chosen"] == "teacher" and "candidates" not in card["evaluation"]
    assert "trex2" not in card["training"]["stages"] and "trex2" not in card["wall_time_s"]
    assert card["training"]["recipe"]["trex2"] is None


def test_recipe_and_command_line_switches(capsys):
    config = fast_profile()
    assert config.trex2 is not None and config.to_dict()["trex2"]["image_size"] == 64
    assert DefaultPipelineConfig().trex2.steps == 4000 and DefaultPipelineConfig().trex2.batch_size == 4
    assert DefaultPipelineConfig(trex2=None).to_dict()["trex2"] is None
    with pytest.raises(RegionPromptError, match="ResNet"):
        DefaultPipelineConfig(teacher=replace(config.teacher, card="ViT-tiny"))
    assert DefaultPipelineConfig(teacher=replace(config.teacher, card="ViT-tiny"), trex2=None).trex2 is None
    parser = argparse.ArgumentParser()
    train_default.register(parser.add_subparsers())
    args = parser.parse_args(["default", "--out", "x", "--fast", "--trex2-steps", "9"])
    assert train_default.config_from_args(args).trex2.steps == 9
    args = parser.parse_args(["default", "--out", "x", "--no-trex2"])
    assert train_default.config_from_args(args).trex2 is None
    default = train_default.config_from_args(parser.parse_args(["default", "--out", "x"]))
    assert default.teacher_weights == "weights/student8-minilm" and default.rpn_weights == "weights/rpn"
    assert default.trex2.paired_batches and default.trex2.extra_negatives >= 847
    assert default.namer_tuning.fg_fraction == 1.0 and default.namer_tuning.background_weight == 0.0
    args = parser.parse_args(["default", "--out", "x", "--namer-steps", "0", "--namer-mix", "0.3"])
    assert train_default.config_from_args(args).namer_tuning is None and train_default.config_from_args(args).namer_mix == 0.3
    assert train_default.config_from_args(parser.parse_args(["default", "--out", "x", "--no-trex2"])).namer_tuning is None
    with pytest.raises(RegionPromptError, match="namer mix"):
        train_default.config_from_args(parser.parse_args(["default", "--out", "x", "--namer-mix", "2"]))
    args = parser.parse_args(["default", "--out", "x", "--teacher-weights", "none", "--rpn-weights", "my/rpn"])
    assert train_default.config_from_args(args).teacher_weights is None
    assert train_default.config_from_args(args).rpn_weights == "my/rpn"
    with pytest.raises(SystemExit):
        main(["train", "default", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-trex2" in text and "--trex2-steps" in text and "--teacher-weights" in text
    assert "-> T-Rex2 detector (v2 recipe)" in text


def test_choice_follows_ap50_then_the_candidate_order():
    def summaries(**ap50):
        return {name: {"summary": {"AP50": value}} for name, value in ap50.items()}

    assert choose_candidate(summaries(teacher=0.1, student=0.1, trex2=0.3)) == "trex2"
    assert choose_candidate(summaries(teacher=0.2, student=0.2, trex2=0.2)) == "teacher"
    assert choose_candidate(summaries(trex2=0.2, student=0.2)) == "student"
    assert choose_candidate(summaries(teacher=None, trex2=0.0)) == "teacher"  # no AP50 counts as 0
    with pytest.raises(ValueError, match="unknown"):
        choose_candidate(summaries(other=0.5))


def test_a_better_trex2_is_kept_carded_and_installed(run, tmp_path):
    """When T-Rex2 measures best (here: its report edited to say so), the card stage keeps it and the
    pipeline's install writes a compact T-Rex2 folder; nothing is retrained or re-evaluated. The run
    folder is a copy: the T-Rex2 stage keys on the teacher's weights, not on the path it recorded."""
    torch.set_num_threads(1)
    out = tmp_path / "moved"
    shutil.copytree(run / "run", out)
    recorded = read_json(out / "trex2" / RECIPE_FILE)["recipe"]["clip"]
    assert recorded == str(run / "run" / "teacher" / "model") != str(out / "teacher" / "model")
    config = fast_profile()  # no student (see test_trex2_off_keeps_the_regionclip_pipeline)
    status = {s.name: s.status for s in run_default_pipeline(config, out).stages}
    assert status["trex2"] == status["teacher"] == status["rpn"] == "skipped" and status["evaluate"] == "ran"
    report = read_json(out / "eval" / "trex2" / "report.json")
    report["summary"]["AP50"] = 0.9
    (out / "eval" / "trex2" / "report.json").write_text(json.dumps(report))
    result = run_default_pipeline(config, out, install_to=tmp_path / "installed")
    status = {s.name: s.status for s in result.stages}
    assert status["evaluate"] == status["trex2"] == "skipped" and status["card"] == "ran"
    assert result.card["evaluation"]["chosen"] == "trex2" and result.card["description"].startswith("T-Rex2 detector")
    assert result.card["architecture"]["kind"] == "trex2" and "rpn" not in result.card["architecture"]
    assert result.card["architecture"]["trex2"]["clip"]["name"] == "RN-tiny-clip"
    assert "training" not in result.card["architecture"]["trex2"]["clip"]  # architecture only
    assert result.card["model_hash"] == Detector.load(out / "detector", cache=None).model_hash
    assert set(result.card["weights"]) == {"trex2"}
    installed = Detector.load(result.installed, cache=None)
    card = read_json(result.installed / "model_card.json")
    assert installed.kind == "trex2" and card["install"]["storage"] == "compact" and card["install"]["rejected"] == {}
    assert card["model_hash"] == installed.model_hash and card["evaluation"]["chosen"] == "trex2"


def test_committed_stage_weights_replace_the_teacher_and_rpn_stages(run, tmp_path):
    """``teacher_weights`` / ``rpn_weights``: folders like ``weights/student8-minilm`` are used as they are
    (no teacher or RPN training, no pretrain cache); T-Rex2 trains on the committed backbone."""
    weights = tmp_path / "weights"
    shutil.copytree(run / "run" / "teacher" / "model", weights / "backbone")
    shutil.copy(run / "run" / "teacher" / "recipe.json", weights / "backbone" / "recipe.json")
    shutil.copytree(run / "run" / "rpn" / "model", weights / "rpn")
    # The namer is tuned on base boxes (a few transfer steps on T-Rex2's det-train cache) and mixed halfway back.
    tuning = RegionClipTransferConfig(scene_size=64, num_scenes=8, batch_size=2, image_size=64, rois_per_image=8,
                                      rpn_proposals=10, templates="single", steps=3, warmup_steps=1, fg_fraction=1.0,
                                      background_weight=0.0, flip=0.0, checkpoint_every=1000)
    config = replace(fast_profile(), teacher_weights=str(weights / "backbone"), rpn_weights=str(weights / "rpn"),
                     trex2_namer=True, namer_tuning=tuning, namer_mix=0.5, namer_stop_step=2)
    assert set(scene_specs(config)) == {"trex2", "namer"} and scene_specs(config)["namer"] == scene_specs(config)["trex2"]
    out = tmp_path / "run"
    result = run_default_pipeline(config, out, caches_dir=run / "run" / "caches", install_to=tmp_path / "installed")
    status = {s.name: s for s in result.stages}
    assert status["teacher"].status == status["rpn"].status == "committed"
    assert status["teacher"].output == str(weights / "backbone") and status["trex2"].status == "ran"
    assert not (out / "teacher").exists() and not (out / "rpn").exists()
    backbone_hash = read_json(weights / "backbone" / "card.json")["weights_hash"]
    trex2_card = read_json(out / "trex2" / "model" / "card.json")
    assert trex2_card["clip"]["weights_hash"] == backbone_hash
    stages = result.card["training"]["stages"]
    assert stages["teacher"]["weights_hash"] == backbone_hash and stages["teacher"]["recipe"]
    assert stages["rpn"]["folder"] == str(weights / "rpn")
    assert "committed weights" in result.card["description"] or result.card["evaluation"]["chosen"] == "teacher"
    assert status["namer"].status == "ran" and status["namer"].note == "step 2, mix 0.5"  # stopped at step 2 of 3
    namer_card = read_json(out / "namer" / "namer" / "card.json")
    assert namer_card["training"]["mix"] == 0.5 and namer_card["training"]["initial_clip"]["weights_hash"] == backbone_hash
    assert namer_card["training"]["steps_run"] == 2 and namer_card["training"]["recipe"]["steps"] == 3
    header = read_json(out / "candidates" / "trex2" / "detector.json")  # the tuned backbone names T-Rex2's boxes
    assert header["namer"] == "namer" and read_json(out / "candidates" / "trex2" / "namer" / "card.json")[
        "weights_hash"] == namer_card["weights_hash"] != backbone_hash
    assert stages["namer"]["mix"] == 0.5 and stages["namer"]["weights_hash"] == namer_card["weights_hash"]
    assert Detector.load(out / "candidates" / "trex2", cache=None).engine.namer is not None
    installed = tmp_path / "installed"
    if read_json(installed / "detector.json")["kind"] == "trex2":
        assert Detector.load(installed, cache=None).engine.namer is not None
        with safe_open(str(installed / "namer" / "model.safetensors"), framework="pt") as handle:
            assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F16"}  # noqa: SIM118
    with pytest.raises(RegionPromptError, match="weights .* are missing"):
        run_default_pipeline(replace(config, rpn_weights=str(tmp_path / "nowhere")), tmp_path / "other")
