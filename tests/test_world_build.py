"""EmojiWorld end to end on the vendored assets: disk builds, determinism, splits, streaming, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from regionprompt.cli import main
from regionprompt.world.build import build_world
from regionprompt.world.concepts import load_concepts
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig
from regionprompt.world.stream import EmojiWorldDataset, EmojiWorldStream

SIZE = 160
CONFIG = SceneConfig(size=SIZE)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def test_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "test"
    build_world(out, split="test", num_images=6, seed=11, config=CONFIG)
    return out


@pytest.fixture(scope="module")
def renderer() -> SceneRenderer:
    return SceneRenderer.default(CONFIG)


def test_same_seed_gives_byte_identical_build_with_any_worker_count(test_build: Path, tmp_path: Path) -> None:
    build_world(tmp_path / "again", split="test", num_images=6, seed=11, config=CONFIG, workers=2)
    first, again = _files(test_build), _files(tmp_path / "again")
    assert len(first) == 6 + 2
    assert first == again
    build_world(tmp_path / "other", split="test", num_images=6, seed=12, config=CONFIG)
    other = _files(tmp_path / "other")
    assert other["images/test_000000.png"] != first["images/test_000000.png"]


def test_annotations_are_coco_with_all_concepts_and_boxes_inside(test_build: Path) -> None:
    data = json.loads((test_build / "annotations.json").read_text())
    concepts = load_concepts()
    assert data["info"]["seed"] == 11 and data["info"]["split"] == "test"
    assert len(data["categories"]) == len(concepts) >= 1000
    assert all(c["split"] in {"base", "novel"} and c["frequency"] in {"f", "c", "r"} for c in data["categories"])
    assert {c["id"] for c in data["categories"]} == {c.id for c in concepts}
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 6
    for image in images.values():
        assert Image.open(test_build / "images" / image["file_name"]).size == (SIZE, SIZE)
    assert data["annotations"], "a test split labels its objects"
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
        assert ann["area"] == w * h and ann["iscrowd"] == 0 and ann["image_id"] in images
        assert ann["visible_fraction"] >= CONFIG.min_visible
    captions = json.loads((test_build / "captions.json").read_text())
    assert captions["images"] == data["images"]
    per_image = Counter(c["image_id"] for c in captions["annotations"])
    assert set(per_image) == set(images) and min(per_image.values()) >= 1


def test_stream_equals_disk(test_build: Path) -> None:
    data = json.loads((test_build / "annotations.json").read_text())
    captions = json.loads((test_build / "captions.json").read_text())
    dataset = EmojiWorldDataset("test", 6, seed=11, config=CONFIG)
    for image_record in data["images"]:
        index = image_record["id"] - 1
        image, target = dataset[index]
        disk = np.asarray(Image.open(test_build / "images" / image_record["file_name"]).convert("RGB"))
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), disk)
        anns = [a for a in data["annotations"] if a["image_id"] == image_record["id"]]
        expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
        assert torch.equal(target["boxes"], expected.reshape(-1, 4))
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["captions"] == [c["caption"] for c in captions["annotations"] if c["image_id"] == image_record["id"]]
        assert target["image_id"] == image_record["id"]


def test_stream_workers_get_disjoint_indices() -> None:
    stream = EmojiWorldStream("val", seed=3, config=SceneConfig(size=64, min_object_size=12, max_objects=3), num_images=8, as_float=True)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    seen = []
    for image, target in loader:
        assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        seen.append(target["index"])
    assert sorted(seen) == list(range(8))


def test_det_train_labels_base_only_and_test_has_base_and_novel(renderer: SceneRenderer, tmp_path: Path) -> None:
    concepts = load_concepts()
    split_of = {c.id: c.split for c in concepts}
    build_world(tmp_path / "det", split="det-train", num_images=4, seed=5, config=CONFIG)
    det = json.loads((tmp_path / "det" / "annotations.json").read_text())
    assert det["annotations"] and all(split_of[a["category_id"]] == "base" for a in det["annotations"])
    assert len(det["categories"]) == len(concepts)  # evaluation still sees every concept

    unlabelled_novel = 0
    test_splits: Counter[str] = Counter()
    for index in range(40):
        scene = renderer.render("det-train", index, seed=5)
        assert all(split_of[int(label)] == "base" for label in scene.labels())
        unlabelled_novel += sum(1 for o in scene.objects if not o.labelled and split_of[o.concept_id] == "novel")
        for caption in scene.captions:  # novel names never leak into detection training
            assert all(split_of[m.concept_id] == "base" for m in caption.mentions)
        test_splits.update(split_of[int(label)] for label in renderer.render("test", index, seed=5).labels())
    assert unlabelled_novel > 0
    assert test_splits["base"] > 0 and test_splits["novel"] > 0


def test_pretrain_writes_captions_but_no_boxes(tmp_path: Path) -> None:
    build_world(tmp_path / "pre", split="pretrain", num_images=3, seed=0, config=CONFIG)
    data = json.loads((tmp_path / "pre" / "annotations.json").read_text())
    captions = json.loads((tmp_path / "pre" / "captions.json").read_text())
    assert data["annotations"] == [] and len(data["images"]) == 3
    assert len(captions["annotations"]) >= 3


def test_real_captions_are_true_about_the_scene(renderer: SceneRenderer) -> None:
    concepts = load_concepts()
    for index in range(25):
        scene = renderer.render("val", index, seed=9)
        counts = Counter(o.concept_id for o in scene.objects)
        assert scene.captions
        for caption in scene.captions:
            for mention in caption.mentions:
                assert mention.count == counts[mention.concept_id], (caption.text, mention)
                assert mention.phrase.lower() in caption.text.lower()
                assert concepts.by_id(mention.concept_id) is not None


def test_style_restriction_on_real_sprites() -> None:
    renderer = SceneRenderer.default(SceneConfig(size=128, style="google"))
    assert {o.style for i in range(5) for o in renderer.render("test", i, seed=0).objects} == {"google"}


def test_cli_build_info_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["world", "build", "--split", "val", "--images", "2", "--seed", "4", "--size", "96", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["val_000000.png", "val_000001.png"]
    assert main(args) == 2  # refuses to overwrite silently
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--style", "twitter"]) == 0
    assert main(["world", "build", "--split", "val", "--images", "0", "--out", str(tmp_path / "none")]) == 2

    assert main(["world", "info"]) == 0
    text = capsys.readouterr().out
    assert f"{len(load_concepts())} concepts" in text and "novel" in text and "rare" in text

    assert main(["world", "show", "--split", "test", "--index", "3", "--size", "128", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (128, 128)


def test_real_sprites_span_the_size_range(renderer: SceneRenderer) -> None:
    sides = [max(o.box[2], o.box[3]) for i in range(30) for o in renderer.render("det-train", i, seed=2).objects]
    assert CONFIG.min_object_size - 2 <= min(sides) < 24
    assert 60 < max(sides) <= CONFIG.max_object_size


def test_cli_world_cache_renders_resumes_and_refuses_another_spec(tmp_path, capsys):
    from regionprompt.world.scene_cache import SceneCache

    out = tmp_path / "cache"
    args = ["world", "cache", "--split", "pretrain", "--images", "3", "--size", "64", "--canvas", "128",
            "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    cache = SceneCache(out)
    assert len(cache) == 3 and cache.image(0).shape == (64, 64, 3) and cache.records[2]["captions"]
    first = np.array(cache.images)
    assert main(args) == 0 and np.array_equal(np.array(SceneCache(out).images), first)  # rerun: same cache
    capsys.readouterr()
    assert main([*args[:-4], "--layout", "iconic", "--out", str(out)]) != 0
    assert "scene cache" in capsys.readouterr().err
