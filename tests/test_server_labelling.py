"""Labelling a served image folder through the REST API (``regionprompt serve --images DIR``).

EmojiWorld scenes are written to a folder (one in a sub-folder); the colour-histogram detector of
``histogram_detector.py`` finds a boxed emoji again, so "detect, then accept" is checked against the
scene's ground truth. Exports are read back with our readers, ``regionprompt dataset check`` and
pycocotools.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
from fastapi.testclient import TestClient
from histogram_detector import HistogramDetector
from torchvision.ops import box_iou

from regionprompt.cli import main
from regionprompt.concepts import ConceptLibrary
from regionprompt.data.coco import read_coco
from regionprompt.data.yolo import read_data_yaml, read_yolo
from regionprompt.errors import RegionPromptError
from regionprompt.server import ServerSettings, create_app
from regionprompt.server.labelling import LABELS_FILE, STATE_DIR, LabelStore
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig

FILES = ("a_scene.png", "b_scene.png", "sub/c_scene.png")


@pytest.fixture(scope="module")
def scene_boxes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple[float, ...]]]]:
    """A folder of three rendered scenes (+ a text file and, beside the folder, a 'secret' image)."""
    root = tmp_path_factory.mktemp("labelling")
    folder = root / "photos"
    renderer = SceneRenderer.default(SceneConfig(size=320))
    boxes = {}
    for index, name in zip((5, 2, 3), FILES):
        scene = renderer.render("test", index, 1)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        scene.image.save(folder / name)
        boxes[name] = [tuple(float(v) for v in o.box_xyxy) for o in scene.labelled_objects]
    (folder / "notes.txt").write_text("not an image")
    renderer.render("test", 7, 1).image.save(root / "secret.png")
    return folder, boxes


@pytest.fixture
def folder(scene_boxes, tmp_path: Path) -> Path:
    """A fresh copy of the scene folder per test (labels are written inside it)."""
    import shutil

    copy = tmp_path / "photos"
    shutil.copytree(scene_boxes[0], copy)
    shutil.copy(scene_boxes[0].parent / "secret.png", tmp_path / "secret.png")
    return copy


def serve(folder: Path | None, tmp_path: Path) -> TestClient:
    store = LabelStore(folder) if folder is not None else None
    app = create_app(HistogramDetector(), ConceptLibrary(tmp_path / "concepts.db"), ServerSettings(), store)
    return TestClient(app, raise_server_exceptions=False)


def iou(a, b) -> float:
    return float(box_iou(torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32)))


def detail(response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]
    return body["detail"]


def test_browse_detect_accept_relabel_delete_and_resume(folder: Path, scene_boxes, tmp_path: Path) -> None:
    truth = scene_boxes[1]
    with serve(folder, tmp_path) as client:
        listing = client.get("/label/images").json()
        assert listing["folder"] == "photos" and listing["categories"] == []
        assert [row["file"] for row in listing["images"]] == list(FILES)  # notes.txt is not an image
        assert not any(row["done"] for row in listing["images"])
        image = client.get("/label/image", params={"file": "sub/c_scene.png"})
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == (folder / "sub/c_scene.png").read_bytes()

        # Detect on a folder image with a box drawn on one object: the object comes back first.
        target = truth["a_scene.png"][0]
        found = client.post("/label/detect", params={"file": "a_scene.png"},
                            data={"prompts": json.dumps({"boxes": [{"box": target, "label": "emoji"}], "threshold": 0})})
        assert found.status_code == 200, found.text
        result = found.json()
        assert result["file"] == "a_scene.png" and result["width"] == 320
        best = max(result["detections"], key=lambda d: d["score"])
        assert iou(best["box"], target) > 0.7 and best["name"] == "emoji"

        # Accept it and a box drawn by hand (past the border: clipped), relabel, delete.
        accepted = client.post("/label/labels/boxes", params={"file": "a_scene.png"}, json={"boxes": [
            {"box": best["box"], "name": "emoji", "score": best["score"]},
            {"box": [300, 290, 330, 330], "name": "corner"}]})
        assert accepted.status_code == 200, accepted.text
        labels = accepted.json()
        assert labels["done"] and [b["name"] for b in labels["boxes"]] == ["emoji", "corner"]
        assert labels["boxes"][1] == {"box": [300.0, 290.0, 320.0, 320.0], "name": "corner", "score": None}
        relabelled = client.patch("/label/labels/boxes/1", params={"file": "a_scene.png"}, json={"name": "  flag "})
        assert [b["name"] for b in relabelled.json()["boxes"]] == ["emoji", "flag"]
        second = truth["a_scene.png"][1]
        client.post("/label/labels/boxes", params={"file": "a_scene.png"}, json={"boxes": [{"box": second, "name": "emoji"}]})
        deleted = client.delete("/label/labels/boxes/1", params={"file": "a_scene.png"})
        assert [b["name"] for b in deleted.json()["boxes"]] == ["emoji", "emoji"]
        assert client.get("/label/labels", params={"file": "a_scene.png"}).json() == deleted.json()
        # An image with nothing to label is marked done with no box; one never visited stays out.
        assert client.post("/label/labels/boxes", params={"file": "b_scene.png"}, json={"boxes": []}).json()["done"]
        rows = {r["file"]: r for r in client.get("/label/images").json()["images"]}
        assert (rows["a_scene.png"]["boxes"], rows["b_scene.png"]["done"], rows["sub/c_scene.png"]["done"]) == (2, True, False)

    # The labels survive a restart (they are in the folder's labels file, written whole each time).
    stored = json.loads((folder / STATE_DIR / LABELS_FILE).read_text())
    assert stored["format"] == "regionprompt-labels" and stored["categories"] == ["emoji", "corner", "flag"]
    assert [p.name for p in (folder / STATE_DIR).iterdir()] == [LABELS_FILE]  # no temporary file left behind
    with serve(folder, tmp_path) as client:
        again = client.get("/label/labels", params={"file": "a_scene.png"}).json()
        assert again == deleted.json()
        assert client.get("/label/images").json()["categories"] == ["emoji", "corner", "flag"]
        assert [r["file"] for r in client.get("/label/images").json()["images"]] == list(FILES)  # labels dir not listed
        # Replace all boxes at once, then forget the image altogether.
        put = client.put("/label/labels", params={"file": "sub/c_scene.png"},
                         json={"boxes": [{"box": truth["sub/c_scene.png"][0], "name": "x"}]})
        assert [b["name"] for b in put.json()["boxes"]] == ["x"]
        assert not client.delete("/label/labels", params={"file": "sub/c_scene.png"}).json()["done"]


def _label_two_images(client: TestClient, truth: dict[str, list[tuple[float, ...]]]) -> list[tuple[str, str, tuple]]:
    """Accept ground-truth boxes as 'first' / 'second' on two images; returns (file, name, box) accepted."""
    accepted = []
    for file, name in (("sub/c_scene.png", "first"), ("a_scene.png", "second"), ("a_scene.png", "first")):
        box = truth[file][len([a for a in accepted if a[0] == file])]
        response = client.post("/label/labels/boxes", params={"file": file}, json={"boxes": [{"box": box, "name": name}]})
        assert response.status_code == 200
        accepted.append((file, name, box))
    client.post("/label/labels/boxes", params={"file": "b_scene.png"}, json={"boxes": []})  # done, nothing on it
    return accepted


def test_export_coco_and_yolo_read_back(folder: Path, scene_boxes, tmp_path: Path, capsys) -> None:
    truth = scene_boxes[1]
    with serve(folder, tmp_path) as client:
        assert "nothing to export" in detail(client.post("/label/export", json={"format": "coco"}))
        accepted = _label_two_images(client, truth)
        coco = client.post("/label/export", json={"format": "coco"})
        assert coco.status_code == 200, coco.text
        summary = coco.json()
        assert (summary["images"], summary["annotations"], summary["categories"]) == (3, 3, ["first", "second"])
        annotations = Path(summary["main_file"])
        assert annotations == folder / STATE_DIR / "export" / "coco" / "annotations.json"

        dataset = read_coco(annotations, image_dir=folder).data  # also checks every file and its size
        assert [i.file_name for i in dataset.images] == ["a_scene.png", "b_scene.png", "sub/c_scene.png"]
        names = {c.id: c.name for c in dataset.categories}
        files = {i.id: i.file_name for i in dataset.images}
        got = sorted((files[a.image_id], names[a.category_id], a.xyxy) for a in dataset.annotations)
        for (file, name, box), (gfile, gname, gbox) in zip(sorted(accepted), got):
            assert (file, name) == (gfile, gname) and max(abs(x - y) for x, y in zip(box, gbox)) < 0.02
        assert main(["dataset", "check", str(annotations), "--format", "coco", "--images", str(folder)]) == 0
        pycocotools = pytest.importorskip("pycocotools.coco")
        loaded = pycocotools.COCO(str(annotations))
        assert len(loaded.getAnnIds()) == 3 and sorted(c["name"] for c in loaded.loadCats(loaded.getCatIds())) == ["first", "second"]

        # Relabel, export YOLO (a second export replaces the first whole), read it back.
        client.patch("/label/labels/boxes/0", params={"file": "sub/c_scene.png"}, json={"name": "third"})
        yolo = client.post("/label/export", json={"format": "yolo"}).json()
        root = Path(yolo["folder"])
        config = read_data_yaml(root / "data.yaml")
        assert list(config.names.values()) == ["first", "second", "third"]  # first-use order
        assert "val: images/train" in (root / "data.yaml").read_text()  # the key Ultralytics requires
        back = read_yolo(root, split="train").data
        assert sorted(i.file_name for i in back.images) == ["a_scene.png", "b_scene.png", "sub/c_scene.png"]
        assert (root / "images/train/sub/c_scene.png").read_bytes() == (folder / "sub/c_scene.png").read_bytes()
        assert (root / "labels/train/b_scene.txt").read_text() == ""
        by_file = {i.id: i.file_name for i in back.images}
        cats = {c.id: c.name for c in back.categories}
        relabelled = sorted((by_file[a.image_id], cats[a.category_id]) for a in back.annotations)
        assert relabelled == [("a_scene.png", "first"), ("a_scene.png", "second"), ("sub/c_scene.png", "third")]
        assert main(["dataset", "check", str(root / "data.yaml"), "--format", "yolo"]) == 0
        again = client.post("/label/export", json={"format": "yolo"})  # same names: replaced, not merged
        assert again.status_code == 200 and len(list((root / "labels/train").rglob("*.txt"))) == 3

        archive = client.get("/label/export/coco")
        assert archive.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
            assert json.loads(zipped.read("coco/annotations.json")) == json.loads(annotations.read_text())
        assert client.post("/label/export", json={"format": "voc"}).status_code == 422
    # Exports are never listed as images to label.
    assert LabelStore(folder).files == list(FILES)
    capsys.readouterr()


@pytest.mark.parametrize("name", [
    "../secret.png", "/etc/passwd", "sub/../../secret.png", "./../secret.png", "notes.txt", "missing.png",
    f"{STATE_DIR}/{LABELS_FILE}", "sub", "", "a_scene.png\x00.png", "..\\secret.png",
])
def test_only_the_folders_own_images_are_reachable(folder: Path, tmp_path: Path, name: str) -> None:
    with serve(folder, tmp_path) as client:
        client.post("/label/labels/boxes", params={"file": "a_scene.png"}, json={"boxes": []})  # make the labels file
        for method, path, kwargs in (
            ("GET", "/label/image", {}), ("GET", "/label/labels", {}),
            ("POST", "/label/labels/boxes", {"json": {"boxes": [{"box": [1, 1, 9, 9], "name": "x"}]}}),
            ("PUT", "/label/labels", {"json": {"boxes": []}}), ("DELETE", "/label/labels", {}),
            ("PATCH", "/label/labels/boxes/0", {"json": {"name": "x"}}),
            ("POST", "/label/detect", {"data": {"prompts": json.dumps({"text": ["red"]})}}),
        ):
            response = client.request(method, path, params={"file": name}, **kwargs)
            assert response.status_code == 404, (method, path, response.text)
            assert "not an image of the served folder" in detail(response)
        # Encoded in the URL by hand, too (no client-side normalisation).
        raw = client.get("/label/image?file=%2e%2e%2fsecret.png")
        assert raw.status_code == 404 and raw.content != (tmp_path / "secret.png").read_bytes()
    assert not (tmp_path / "x").exists()


def test_bad_label_requests_say_why(folder: Path, tmp_path: Path) -> None:
    with serve(folder, tmp_path) as client:
        file = {"file": "a_scene.png"}
        cases = [
            ({"boxes": [{"box": [10, 10, 5, 50], "name": "x"}]}, 400, "is empty inside the 320x320 image"),
            ({"boxes": [{"box": [400, 10, 500, 50], "name": "x"}]}, 400, "is empty inside"),
            ({"boxes": [{"box": [1, 1, 9, 9], "name": "   "}]}, 400, "non-empty name"),
            ({"boxes": [{"box": [1, 1, 9, 9], "name": "x", "score": 3}]}, 400, "score must be"),
            ({"boxes": [{"box": [1, 1, 9], "name": "x"}]}, 422, "boxes.0.box"),
            ({"boxes": [{"box": [1, 1, 9, 9]}]}, 422, "name"),
        ]
        for body, status, text in cases:
            response = client.post("/label/labels/boxes", params=file, json=body)
            assert response.status_code == status and text in detail(response), (body, response.text)
        assert not client.get("/label/labels", params=file).json()["done"]  # nothing half-applied
        assert "no box 3" in detail(client.delete("/label/labels/boxes/3", params=file))
        assert client.get("/label/images").json()["images"][0]["done"] is False
        assert client.post("/label/detect", params=file, data={"prompts": "{}"}).status_code == 400
    with serve(None, tmp_path) as client:
        response = client.get("/label/images")
        assert response.status_code == 404 and "--images DIR" in detail(response)
        assert "openapi" in client.get("/openapi.json").text and "/label/export" in client.get("/openapi.json").json()["paths"]


def test_labels_file_is_checked_and_serve_refuses_labels_without_images(folder: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "elsewhere" / "my_labels.json"
    store = LabelStore(folder, labels)
    store.accept("a_scene.png", [{"box": [1, 1, 30, 30], "name": "x"}])
    assert LabelStore(folder, labels).labels("a_scene.png")["boxes"][0]["name"] == "x"
    assert not (folder / STATE_DIR).exists()  # --labels elsewhere: nothing written into the folder
    labels.write_text('{"format": "something else"}')
    with pytest.raises(RegionPromptError, match="not a RegionPrompt labels file"):
        LabelStore(folder, labels)
    with pytest.raises(RegionPromptError, match="not a folder of images"):
        LabelStore(tmp_path / "nope")
    assert main(["serve", "--labels", str(labels)]) == 2
    assert "--labels needs --images" in capsys.readouterr().err
