"""The REST server: every endpoint, every limit, bad input -> 4xx with a message, 503 when the queue is full.

Most tests run a colour-histogram detector (``histogram_detector.py``: real, fast, deterministic);
the wiring tests at the end serve a real ``Detector`` loaded from a tiny random model folder and
start ``regionprompt serve`` itself.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
from fastapi.testclient import TestClient
from histogram_detector import GatedDetector, HistogramDetector
from PIL import Image
from torchvision.ops import box_iou

from regionprompt.concept import PromptConcept
from regionprompt.concepts import ConceptLibrary, load_concept
from regionprompt.server import ServerSettings, create_app
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import Scene, SceneConfig


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    renderer = SceneRenderer.default(SceneConfig(size=320))
    return [renderer.render("test", index, 1) for index in (5, 2)]


@pytest.fixture(scope="module")
def scene(scenes: list[Scene]) -> Scene:
    return scenes[0]


@pytest.fixture
def library(tmp_path: Path) -> ConceptLibrary:
    return ConceptLibrary(tmp_path / "concepts.db")


def make_client(detector, library: ConceptLibrary, **settings) -> TestClient:
    return TestClient(create_app(detector, library, ServerSettings(**settings)), raise_server_exceptions=False)


@pytest.fixture
def client(library: ConceptLibrary) -> TestClient:
    with make_client(HistogramDetector(), library) as test_client:
        yield test_client


def detect(client: TestClient, image: bytes, prompts: dict | str, extra: list[bytes] = ()):
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("prompt_images", (f"p{i}.png", data, "image/png")) for i, data in enumerate(extra)]
    body = prompts if isinstance(prompts, str) else json.dumps(prompts)
    return client.post("/detect", files=files, data={"prompts": body})


def message(response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]
    return body["detail"]


# -- endpoints ----------------------------------------------------------------------------------


def test_health_models_docs_and_page(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_hash"] == HistogramDetector().model_hash
    assert health["queue"] == {"workers": 1, "capacity": 9, "running": 0, "waiting": 0}
    models = client.get("/models").json()
    assert models["active"] == health["model_hash"] and models["models"][0]["name"] == "default"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/detect", "/concepts", "/concepts/{name}", "/models", "/health"} <= set(paths)
    assert "multipart/form-data" in paths["/detect"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "RegionPrompt" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_ui_files_load_nothing_from_outside() -> None:
    static = Path(__file__).resolve().parents[1] / "src" / "regionprompt" / "server" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_detect_box_prompt_finds_the_boxed_object(client: TestClient, scene: Scene) -> None:
    target = scene.labelled_objects[0]
    response = detect(client, png(scene.image), {"boxes": [list(target.box_xyxy)], "threshold": 0.3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["names"] == ["object"] and body["width"] == 320 and body["height"] == 320
    assert body["model_hash"] == HistogramDetector().model_hash and body["threshold"] == 0.3
    top = body["detections"][0]
    assert top["name"] == "object" and top["score"] >= max(d["score"] for d in body["detections"])
    iou = box_iou(torch.tensor([top["box"]]), torch.tensor([target.box_xyxy], dtype=torch.float32))
    assert float(iou) > 0.5
    assert all(d["score"] >= 0.3 for d in body["detections"])
    assert body["prompts"][0]["visuals"][0]["box"] == [float(v) for v in target.box_xyxy]


def test_detect_text_points_mixed_negatives(client: TestClient, scene: Scene) -> None:
    target = scene.labelled_objects[0]
    x1, y1, x2, y2 = target.box_xyxy
    prompts = {
        "text": ["red", "blue"],
        "boxes": [{"box": [x1, y1, x2, y2], "label": "red"}],  # joins the text category "red": mixed
        "points": [{"point": [(x1 + x2) / 2, (y1 + y2) / 2], "label": "thing"}],
        "negatives": [{"text": "green", "label": "blue"}, [0, 0, 20, 20]],
        "threshold": 0.0,
    }
    body = detect(client, png(scene.image), prompts).json()
    assert body["names"] == ["red", "blue", "thing"]
    kinds = {p["name"]: p["kind"] for p in body["prompts"]}
    assert kinds == {"red": "mixed", "blue": "text", "thing": "visual"}
    blue = next(p for p in body["prompts"] if p["name"] == "blue")
    assert "green" in blue["negatives"] and {"box": [0.0, 0.0, 20.0, 20.0], "image": "this image"} in blue["negatives"]
    text_only = detect(client, png(scene.image), {"text": "red, blue", "threshold": 0.0}).json()
    assert text_only["names"] == ["red", "blue"]  # one string is split at commas


def test_generic_prompt_from_another_image_equals_interactive(client: TestClient, scenes: list[Scene]) -> None:
    scene, other = scenes
    box = list(scene.labelled_objects[0].box_xyxy)
    interactive = detect(client, png(scene.image), {"boxes": [box], "threshold": 0.2}).json()
    # The same box, drawn on an uploaded copy of the same image: the same detections.
    generic = detect(client, png(scene.image), {"boxes": [{"box": box, "image": 0}], "threshold": 0.2}, [png(scene.image)]).json()
    assert generic["detections"] == interactive["detections"]
    elsewhere = detect(client, png(other.image), {"boxes": [{"box": box, "image": 0}], "threshold": 0.2}, [png(scene.image)])
    assert elsewhere.status_code == 200 and elsewhere.json()["width"] == 320


def test_concepts_crud_and_detection(client: TestClient, library: ConceptLibrary, scene: Scene, tmp_path: Path) -> None:
    target = scene.labelled_objects[0]
    form = {"name": "my thing", "prompts": json.dumps({"boxes": [list(target.box_xyxy)], "negatives": [[0, 0, 16, 16]]})}
    created = client.post("/concepts", data=form, files={"image": ("scene.png", png(scene.image), "image/png")})
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["name"] == "my thing" and entry["compatible"] and entry["num_sources"] == 2 and entry["num_negatives"] == 1
    assert client.post("/concepts", data=form, files={"image": ("s.png", png(scene.image), "image/png")}).status_code == 409
    replaced = client.post("/concepts", data={**form, "replace": "true"}, files={"image": ("s.png", png(scene.image), "image/png")})
    assert replaced.status_code == 201

    listed = client.get("/concepts").json()
    assert [c["name"] for c in listed["concepts"]] == ["my thing"] and listed["concepts"][0]["compatible"]
    assert client.get("/concepts/MY THING").json()["name"] == "my thing"

    # A saved concept detects like the prompt it came from.
    by_concept = detect(client, png(scene.image), {"concepts": ["my thing"], "threshold": 0.3}).json()
    assert by_concept["names"] == ["my thing"]
    iou = box_iou(torch.tensor([by_concept["detections"][0]["box"]]), torch.tensor([target.box_xyxy], dtype=torch.float32))
    assert float(iou) > 0.5

    # Download, delete, import back.
    download = client.get("/concepts/my thing/file")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    (tmp_path / "c.safetensors").write_bytes(download.content)
    assert load_concept(tmp_path / "c.safetensors").name == "my thing"
    assert client.delete("/concepts/my thing").json() == {"deleted": "my thing"}
    assert client.delete("/concepts/my thing").status_code == 404
    assert "no concept named" in message(client.get("/concepts/my thing"))
    imported = client.post("/concepts/import", files={"file": ("c.safetensors", download.content, "application/octet-stream")},
                           data={"name": "again"})
    assert imported.status_code == 201 and imported.json()["name"] == "again"
    unicode_name = client.post("/concepts/import", files={"file": ("c.safetensors", download.content, "application/octet-stream")},
                               data={"name": "café ☕"})
    assert unicode_name.status_code == 201
    unicode_download = client.get("/concepts/café ☕/file")
    assert unicode_download.status_code == 200 and 'filename="caf___.safetensors"' in unicode_download.headers["content-disposition"]
    bad_file = client.post("/concepts/import", files={"file": ("x.safetensors", b"not a concept", "application/octet-stream")})
    assert bad_file.status_code == 400 and "x.safetensors" in message(bad_file)


def test_concepts_of_other_models_and_unknown_names(client: TestClient, library: ConceptLibrary, scene: Scene) -> None:
    foreign = PromptConcept("foreign", torch.nn.functional.normalize(torch.rand(64), dim=0), "f" * 64)
    library.add(foreign)
    assert client.get("/concepts").json()["concepts"][0]["compatible"] is False
    response = detect(client, png(scene.image), {"concepts": ["foreign"]})
    assert response.status_code == 400 and "made by model" in message(response)
    response = detect(client, png(scene.image), {"concepts": ["nothing"]})
    assert response.status_code == 400 and "unknown concept 'nothing'" in message(response)
    text_only = client.post("/concepts", data={"name": "red things", "prompts": json.dumps({"text": ["red"]})})
    assert text_only.status_code == 201 and text_only.json()["num_sources"] == 1
    no_image = client.post("/concepts", data={"name": "boxy", "prompts": json.dumps({"boxes": [[1, 1, 20, 20]]})})
    assert no_image.status_code == 400 and "need the image" in message(no_image)
    bad_name = client.post("/concepts", data={"name": "bad\x07", "prompts": json.dumps({"text": ["red"]})})
    assert bad_name.status_code == 400 and "control characters" in message(bad_name)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"txt": ["dog"]}, "unknown key"),
        ({"text": [""]}, "prompts.text[0] must be a non-empty string"),
        ({"text": "dog", "threshold": 2}, "threshold must be a number in [0, 1]"),
        ({"boxes": [[1, 2, 3]]}, "prompts.boxes[0]: expected 4 finite numbers"),
        ({"boxes": [[10, 10, 10, 30]]}, "zero or negative size"),
        ({"boxes": [[10, 10, 900, 30]]}, "outside the 320x320 image"),
        ({"points": [[-50, 5]]}, "outside"),
        ({"boxes": [{"box": [1, 1, 9, 9], "image": 3}]}, "prompt image(s) were uploaded"),
        ({"negatives": [[0, 0, 5, 5]]}, "no positive prompt"),
        ({}, "no positive prompt"),
        ({"negatives": [[1, 2, 3]]}, "a box (4 numbers) or a point"),
        ({"text": 5}, "prompts.text must be a list"),
    ],
)
def test_bad_prompts_are_400_with_a_message(client: TestClient, scene: Scene, prompts: dict | str, expected: str) -> None:
    response = detect(client, png(scene.image), prompts)
    assert response.status_code == 400, response.text
    assert expected in message(response)


def test_bad_uploads(client: TestClient, scene: Scene) -> None:
    not_image = detect(client, b"%PDF-1.4 this is not an image", {"text": ["red"]})
    assert not_image.status_code == 400 and "not an image file" in message(not_image)
    empty = detect(client, b"", {"text": ["red"]})
    assert empty.status_code == 400 and "0 bytes" in message(empty)
    truncated = detect(client, png(scene.image)[:2000], {"text": ["red"]})
    assert truncated.status_code == 400 and "truncated" in message(truncated)
    missing_image = client.post("/detect", data={"prompts": json.dumps({"text": ["red"]})})
    assert missing_image.status_code == 422 and "image" in message(missing_image)
    missing_prompts = client.post("/detect", files={"image": ("s.png", png(scene.image), "image/png")})
    assert missing_prompts.status_code == 422 and "prompts" in message(missing_prompts)
    as_json = client.post("/detect", json={"text": ["red"]})
    assert as_json.status_code == 422


# -- limits -------------------------------------------------------------------------------------


def test_upload_size_limit(library: ConceptLibrary, scene: Scene) -> None:
    data = png(scene.image)
    with make_client(HistogramDetector(), library, max_upload_bytes=len(data) // 2) as client:
        response = detect(client, data, {"text": ["red"]})
        assert response.status_code == 413 and "limit" in message(response)

        # A chunked upload carries no Content-Length: the limit applies while it streams.
        boundary = "rpboundary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="prompts"\r\n\r\n{{"text": ["red"]}}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
        streamed = client.post("/detect", content=chunks, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert streamed.status_code == 413 and "limit" in message(streamed)
    with make_client(HistogramDetector(), library, max_upload_bytes=len(data) * 4) as client:
        assert detect(client, data, {"text": ["red"]}).status_code == 200


def test_image_pixel_limit(library: ConceptLibrary, scene: Scene) -> None:
    with make_client(HistogramDetector(), library, max_image_pixels=320 * 320 - 1) as client:
        response = detect(client, png(scene.image), {"text": ["red"]})
        assert response.status_code == 413 and "megapixels" in message(response)
        small = png(scene.image.resize((100, 100)))
        assert detect(client, small, {"text": ["red"]}).status_code == 200
        extra = detect(client, small, {"boxes": [{"box": [0, 0, 9, 9], "image": 0}]}, [png(scene.image)])
        assert extra.status_code == 413


def test_prompt_count_and_prompt_image_limits(library: ConceptLibrary, scene: Scene) -> None:
    with make_client(HistogramDetector(), library, max_prompts=3, max_prompt_images=1) as client:
        response = detect(client, png(scene.image), {"text": ["red", "blue"], "boxes": [[0, 0, 9, 9], [1, 1, 9, 9]]})
        assert response.status_code == 400 and "too many prompts: 4 (the limit is 3)" in message(response)
        assert detect(client, png(scene.image), {"text": ["red", "blue", "green"]}).status_code == 200
        two = detect(client, png(scene.image), {"text": ["red"]}, [png(scene.image), png(scene.image)])
        assert two.status_code == 400 and "too many prompt images" in message(two)
    with make_client(HistogramDetector(), library, max_text_length=10) as client:
        long = detect(client, png(scene.image), {"text": ["a very long phrase indeed"]})
        assert long.status_code == 400 and "longer than 10 characters" in message(long)


def test_queue_full_is_503_and_the_server_recovers(library: ConceptLibrary, scene: Scene) -> None:
    detector = GatedDetector()
    data = png(scene.image)
    with make_client(detector, library, workers=1, max_waiting=1) as client:
        queue = client.app.state.queue
        results: dict[str, int] = {}

        def send(key: str) -> None:
            results[key] = detect(client, data, {"text": ["red"]}).status_code

        first = threading.Thread(target=send, args=("first",))
        first.start()
        assert detector.entered.acquire(timeout=30)  # the first request is inside predict, holding the worker
        second = threading.Thread(target=send, args=("second",))
        second.start()
        deadline = time.monotonic() + 30
        while queue.stats()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.stats() == {"workers": 1, "capacity": 2, "running": 1, "waiting": 1}

        refused = detect(client, data, {"text": ["red"]})
        assert refused.status_code == 503 and "busy" in message(refused) and refused.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200  # the event loop stays free while inference runs

        detector.gate.set()
        first.join(30)
        second.join(30)
        assert results == {"first": 200, "second": 200}
        assert detect(client, data, {"text": ["red"]}).status_code == 200
        assert queue.stats()["running"] == 0 and queue.stats()["waiting"] == 0


def test_request_timeout_is_504(library: ConceptLibrary, scene: Scene) -> None:
    detector = GatedDetector()
    with make_client(detector, library, workers=1, max_waiting=1, request_timeout_s=0.2) as client:
        queue = client.app.state.queue
        running = detect(client, png(scene.image), {"text": ["red"]})  # times out inside predict
        assert running.status_code == 504 and "longer than 0.2 s" in message(running)
        queued = detect(client, png(scene.image), {"text": ["red"]})  # times out waiting for the busy worker
        assert queued.status_code == 504
        detector.gate.set()
        deadline = time.monotonic() + 30
        while queue.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        # The running job finished in the background; the queued one was cancelled, never run; no slot leaked.
        assert detector.calls == 1
        assert queue.stats() == {"workers": 1, "capacity": 2, "running": 0, "waiting": 0}
        assert queue._slots._value == queue.capacity


def test_unexpected_errors_are_500_without_internals(library: ConceptLibrary, scene: Scene) -> None:
    class Broken(HistogramDetector):
        def predict(self, *args, **kwargs):
            raise RuntimeError("secret internal state /etc/passwd")

    with make_client(Broken(), library) as client:
        response = detect(client, png(scene.image), {"text": ["red"]})
        assert response.status_code == 500
        assert message(response) == "internal error (RuntimeError); see the server log"


def test_settings_are_checked() -> None:
    from regionprompt.errors import RegionPromptError

    with pytest.raises(RegionPromptError, match="workers"):
        ServerSettings(workers=0)
    with pytest.raises(RegionPromptError, match="request_timeout_s"):
        ServerSettings(request_timeout_s=0)


# -- a real Detector from a model folder ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_detector import build_tiny_detector

    return build_tiny_detector(tmp_path_factory.mktemp("tiny") / "detector")


@pytest.fixture(scope="module")
def tiny_trex2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_detector import build_tiny_trex2_detector

    return build_tiny_trex2_detector(tmp_path_factory.mktemp("tiny") / "trex2")


@pytest.mark.parametrize("kind", ["regionclip-zeroshot", "trex2"])
def test_real_detector_behind_the_server(kind: str, request: pytest.FixtureRequest, library: ConceptLibrary,
                                         scene: Scene) -> None:
    from regionprompt.api import Detector

    folder = request.getfixturevalue("tiny_model" if kind != "trex2" else "tiny_trex2")
    detector = Detector.load(folder, cache=None, concept_library=library)
    assert detector.kind == kind
    with make_client(detector, library) as client:
        assert client.get("/health").json()["model_hash"] == detector.model_hash
        assert client.get("/models").json()["models"][0]["kind"] == kind
        target = list(scene.labelled_objects[0].box_xyxy)
        body = detect(client, png(scene.image), {"text": ["dog"], "boxes": [target], "threshold": 0.0}).json()
        assert body["names"] == ["dog", "object"] and body["model_hash"] == detector.model_hash
        assert 0 < len(body["detections"]) <= 10
        for d in body["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320 and 0.0 <= d["score"] <= 1.0
        form = {"name": "tiny thing", "prompts": json.dumps({"boxes": [target], "text": ["dog"]})}
        created = client.post("/concepts", data=form, files={"image": ("s.png", png(scene.image), "image/png")})
        assert created.status_code == 201 and created.json()["compatible"]
        assert library.get("tiny thing").model_hash == detector.model_hash
        again = detect(client, png(scene.image), {"concepts": ["tiny thing"], "threshold": 0.0}).json()
        assert again["names"] == ["tiny thing"] and len(again["detections"]) > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_command_starts_a_local_server(tiny_model: Path, tmp_path: Path, scene: Scene) -> None:
    import httpx

    port = _free_port()
    env = {**os.environ, "REGIONPROMPT_HOME": str(tmp_path / "home"), "REGIONPROMPT_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        # Two workers with one torch thread each: two requests run side by side on a 2-core machine.
        [sys.executable, "-m", "regionprompt", "serve", "--port", str(port), "--model", str(tiny_model),
         "--workers", "2", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None, process.stdout.read() if process.poll() is not None else "server did not start"
        assert health["status"] == "ok"
        files = {"image": ("s.png", png(scene.image), "image/png")}
        response = httpx.post(f"http://127.0.0.1:{port}/detect", files=files,
                              data={"prompts": json.dumps({"text": ["dog"]})}, timeout=60)
        assert response.status_code == 200 and response.json()["names"] == ["dog"]
        assert httpx.get(f"http://127.0.0.1:{port}/concepts", timeout=30).json()["concepts"] == []
        assert (tmp_path / "home" / "concepts.db").is_file()  # the default library follows REGIONPROMPT_HOME
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = process.stdout.read()
    assert f"http://127.0.0.1:{port}/" in output


def test_serve_refuses_a_thread_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    from regionprompt.cli import main

    assert main(["serve", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err

