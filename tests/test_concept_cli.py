"""``regionprompt concept add|list|show|remove|export|import`` with a real (tiny, random) detector folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from regionprompt.cli import main
from regionprompt.concepts import ConceptLibrary, load_concept
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_detector import build_tiny_detector

    return build_tiny_detector(tmp_path_factory.mktemp("tiny") / "detector")


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[int, ...]]:
    folder = tmp_path_factory.mktemp("scenes")
    renderer = SceneRenderer.default(SceneConfig(size=160))
    first, second = (renderer.render("test", i, 3) for i in (0, 1))
    first.image.save(folder / "a.png")
    second.image.save(folder / "b.png")
    return folder / "a.png", folder / "b.png", first.labelled_objects[0].box_xyxy


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGIONPROMPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REGIONPROMPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "home"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def box_arg(box: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in box)


def test_add_list_show_export_import_remove(tiny_model: Path, scene_files, home: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b, box = scene_files
    model = str(tiny_model)
    code, out, _ = run(capsys, "concept", "add", "dog", "--text", "dog", "--text", "puppy", "--model", model)
    assert code == 0 and "saved concept 'dog': 2 source(s), 0 negative(s)" in out
    code, out, _ = run(capsys, "concept", "add", "thing", "--image", str(a), "--box", box_arg(box), "--box", "1,1,30,30",
                       "--image", str(b), "--point", "40,40", "--negative-box", "100,100,150,150",
                       "--negative-text", "cat", "--model", model)
    assert code == 0 and "5 source(s), 2 negative(s)" in out, out  # sources include the negatives

    library = ConceptLibrary(home / "concepts.db")
    assert library.names() == ["dog", "thing"]
    thing = library.get("thing")
    assert thing.negatives.shape == (2, thing.dim) and torch.isfinite(thing.embedding).all()

    code, out, _ = run(capsys, "concept", "list")
    assert code == 0 and "2 concept(s)" in out and "thing" in out and thing.model_hash[:12] in out
    code, out, _ = run(capsys, "concept", "list", "--json")
    assert [c["name"] for c in json.loads(out)] == ["dog", "thing"]
    code, out, _ = run(capsys, "concept", "show", "thing")
    assert code == 0 and f"model hash: {thing.model_hash}" in out and "negatives:  2" in out

    exported = tmp_path / "out" / "thing.safetensors"
    code, out, _ = run(capsys, "concept", "export", "thing", str(exported))
    assert code == 0 and exported.is_file()
    assert torch.equal(load_concept(exported).embedding, thing.embedding)
    other = tmp_path / "other.db"
    code, out, _ = run(capsys, "concept", "import", str(exported), "--name", "thing two", "--library", str(other))
    assert code == 0 and ConceptLibrary(other).names() == ["thing two"]

    code, out, _ = run(capsys, "concept", "remove", "THING")
    assert code == 0 and library.names() == ["dog"]
    code, _, err = run(capsys, "concept", "remove", "thing")
    assert code == 2 and "no concept named 'thing'" in err


def test_add_errors_are_one_line(tiny_model: Path, scene_files, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, box = scene_files
    model = str(tiny_model)
    code, _, err = run(capsys, "concept", "add", "x", "--box", box_arg(box), "--model", model)
    assert code == 2 and err.strip() == f"error: --box {box_arg(box)} needs an --image before it"
    code, _, err = run(capsys, "concept", "add", "x", "--image", str(a), "--box", "10,10,500,40", "--model", model)
    assert code == 2 and "outside the 160x160 image" in err and str(a) in err
    code, _, err = run(capsys, "concept", "add", "x", "--model", model)
    assert code == 2 and "at least one --text" in err
    code, _, err = run(capsys, "concept", "add", "x", "--image", str(a).replace("a.png", "missing.png"), "--box", "1,1,5,5")
    assert code == 2 and "file not found" in err
    code, _, err = run(capsys, "concept", "add", "x", "--text", "dog", "--model", str(home / "no-model"))
    assert code == 2 and "no such detector folder" in err
    assert run(capsys, "concept", "add", "x", "--text", "dog", "--model", model)[0] == 0
    code, _, err = run(capsys, "concept", "add", "X", "--text", "cat", "--model", model)
    assert code == 2 and "already exists" in err
    assert run(capsys, "concept", "add", "X", "--text", "cat", "--model", model, "--replace")[0] == 0
    bad = home / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    code, _, err = run(capsys, "concept", "import", str(bad))
    assert code == 2 and "bad.safetensors" in err
    with pytest.raises(SystemExit):  # argparse: a box needs four numbers
        main(["concept", "add", "x", "--image", str(a), "--box", "1,2,3"])
