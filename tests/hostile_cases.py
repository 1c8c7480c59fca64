"""A generated corpus of hostile inputs for every entry point (issue 17), used by ``test_hostile.py``.

Each case builds its input in a temporary folder and says what must happen: a clear error (of a given
type, its message containing a given text) or a correct result. Kinds:

* ``cli``: ``make(tmp)`` returns the argv of ``regionprompt``; the command must exit with ``code``
  (2: one ``error:`` line on stderr) and write nothing outside ``tmp/work/out``;
* ``api``: ``call(detector, tmp)`` on a tiny real :class:`~regionprompt.api.Detector`;
* ``files``: ``call(tmp)``: dataset, checkpoint and concept readers and writers, no model;
* ``server``: ``call(client, tmp)`` returns a response of the REST server (FastAPI's TestClient).

Inputs are small (a few KiB, a zip bomb declaring megabytes), so the whole corpus runs in seconds.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regionprompt.concept import PromptConcept
from regionprompt.concepts.files import ConceptFileError, concept_to_bytes
from regionprompt.errors import CheckpointError, DatasetError, PromptError, RegionPromptError

OUT = "work/out"  # every CLI case writes here (two levels deep, so "../.." would still land in tmp)


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        id: test id, ``kind-what``.
        kind: ``cli``, ``api``, ``files`` or ``server``.
        call: builds the input and runs it (see the module docstring for the signature per kind).
        error: the exception type expected (``api``/``files``), ``None`` for a correct result.
        match: text the error message (CLI stderr line, server ``detail``) must contain, lower case.
        code: CLI exit code, or the expected HTTP status range start (``400`` means any 4xx).
        check: for a correct result, a predicate on the return value (and ``tmp``).
        one_line: the CLI error is a single line (strict validation reports are multi-line on purpose).
    """

    id: str
    kind: str
    call: Callable[..., Any]
    error: type[BaseException] | None = None
    match: str = ""
    code: int = 2
    check: Callable[..., bool] | None = None
    one_line: bool = True


# ---- small files ----------------------------------------------------------------------------------


def png_bytes(size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def coco_dict() -> dict[str, Any]:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}


def write_coco(tmp: Path, data: Any = None, *, raw: bytes | None = None) -> Path:
    """``tmp/ds/instances_val.json`` (+ ``tmp/ds/val/a.png``)."""
    folder = tmp / "ds"
    (folder / "val").mkdir(parents=True, exist_ok=True)
    (folder / "val" / "a.png").write_bytes(png_bytes())
    path = folder / "instances_val.json"
    path.write_bytes(raw if raw is not None else json.dumps(coco_dict() if data is None else data).encode())
    return path


def write_yolo(tmp: Path, yaml_text: str | bytes | None) -> Path:
    """A YOLO folder ``tmp/yolo`` with one image and label; ``data.yaml`` holds ``yaml_text`` (None: absent)."""
    root = tmp / "yolo"
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    (root / "images" / "val" / "a.png").write_bytes(png_bytes())
    (root / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    if yaml_text is not None:
        data = yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode()
        (root / "data.yaml").write_bytes(data)
    return root


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
) + "names: [*i, *i, *i, *i, *i, *i, *i, *i, *i]\nval: images/val\n"

BAD_YAML = {
    "missing": (None, "not found"),
    "syntax": ("names: [a, b\nval: images/val\n", "invalid yaml"),
    "python-tag": ("names: !!python/object/apply:os.system ['echo pwned']\nval: images/val\n", "invalid yaml"),
    "python-name": ("names: !!python/name:os.system\nval: images/val\n", "invalid yaml"),
    "billion-laughs": (BILLION_LAUGHS, "billion laughs"),
    "recursive-alias": ("names: &n [*n]\nval: images/val\n", "aliases"),
    "deep-nesting": ("names: " + "[" * 20000 + "]" * 20000 + "\nval: images/val\n", "nested too deeply"),
    "no-names": ("val: images/val\n", "names"),
    "names-number": ("names: 5\nval: images/val\n", "names"),
    "names-nested": ("names: [[a], {b: c}]\nval: images/val\n", "names"),
    "top-level-list": ("- a\n- b\n", "names"),
    "utf16": ("names: [a]\nval: images/val\n".encode("utf-16"), "utf-8"),
    "split-traversal": ("names: [a]\nval: [1, 2]\n", "folder"),
}

BAD_COCO = {
    "no-annotations": (json.dumps({"images": [], "categories": []}).encode(), "annotations"),
    "utf16": (json.dumps(coco_dict()).encode("utf-16"), "utf-16"),
    "deep-nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "bigint": (json.dumps(coco_dict()).replace('"id": 1,', '"id": ' + "9" * 5000 + ",", 1).encode(), "digits"),
    "truncated": (json.dumps(coco_dict()).encode()[:40], "invalid json"),
    "top-level-list": (b"[1, 2, 3]", "json object"),
    "empty": (b"", "invalid json"),
    "binary": (bytes(range(256)) * 4, "utf-8"),
    "images-not-list": (json.dumps({"images": {}, "annotations": [], "categories": []}).encode(), "images"),
}


# ---- concept files --------------------------------------------------------------------------------


def concept_bytes(name: str = "dog") -> bytes:
    embedding = torch.nn.functional.normalize(torch.arange(1.0, 9.0), dim=0)
    return concept_to_bytes(PromptConcept(name, embedding, "f" * 64))


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict[str, Any] | str, body: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + body


def _mutate(change: Callable[[dict[str, Any]], None]) -> Callable[[], bytes]:
    def build() -> bytes:
        header, body = _split(concept_bytes())
        change(header)
        return _join(header, body)

    return build


def _meta(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda header: header["__metadata__"].__setitem__(key, value)


def _tensor_field(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda header: header["embedding"].__setitem__(field, value)


def _embedding_values(values: list[float]) -> Callable[[], bytes]:
    def build() -> bytes:
        header, body = _split(concept_bytes())
        start, end = header["embedding"]["data_offsets"]
        packed = struct.pack(f"<{len(values)}f", *values)
        return _join(header, body[:start] + packed + body[end:])

    return build


BAD_CONCEPTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "too short"),
    "header-length-huge": (lambda: struct.pack("<Q", 1 << 60) + b"{}", "implausible"),
    "truncated": (lambda: concept_bytes()[:-8], "truncated"),
    "header-not-json": (lambda: _join("{not json", b""), "not json"),
    "header-list": (lambda: _join("[1, 2]", b""), "json object"),
    "header-deep": (lambda: _join("[" * 50_000 + "]" * 50_000, b""), "not json"),
    "header-bigint": (lambda: _join('{"x": ' + "7" * 5000 + "}", b""), "not json"),
    "not-a-concept": (_mutate(lambda h: h.__setitem__("__metadata__", {"format": "pt"})), "not a regionprompt concept"),
    "metadata-list": (_mutate(lambda h: h.__setitem__("__metadata__", [1])), "not a regionprompt concept"),
    "data-offsets-int": (_mutate(_tensor_field("data_offsets", 7)), "data_offsets"),
    "data-offsets-strings": (_mutate(_tensor_field("data_offsets", ["0", "32"])), "data_offsets"),
    "data-offsets-reversed": (_mutate(_tensor_field("data_offsets", [32, 0])), "data_offsets"),
    "data-offsets-dict": (_mutate(_tensor_field("data_offsets", {"a": 1})), "data_offsets"),
    "data-offsets-float": (_mutate(_tensor_field("data_offsets", [0.0, 32.5])), "data_offsets"),
    "shape-string": (_mutate(_tensor_field("shape", "8")), "shape"),
    "shape-negative": (_mutate(_tensor_field("shape", [-8])), "shape"),
    "dtype-number": (_mutate(_tensor_field("dtype", 5)), "dtype"),
    "tensor-entry-list": (_mutate(lambda h: h.__setitem__("embedding", [1, 2])), "not a json object"),
    "format-version-list": (_mutate(_meta("format_version", [1])), "format_version"),
    "format-version-number": (_mutate(_meta("format_version", 1)), "format_version"),
    "format-version-word": (_mutate(_meta("format_version", "one")), "format_version"),
    "format-version-newer": (_mutate(_meta("format_version", "99")), "newer"),
    "format-version-bigint": (_mutate(_meta("format_version", "9" * 5000)), "format_version"),
    "name-missing": (_mutate(lambda h: h["__metadata__"].pop("name")), "name"),
    "sources-not-json": (_mutate(_meta("sources", "{oops")), "sources"),
    "sources-deep": (_mutate(_meta("sources", "[" * 50_000 + "]" * 50_000)), "sources"),
    "sources-bigint": (_mutate(_meta("sources", "[" + "1" * 5000 + "]")), "sources"),
    "sources-not-objects": (_mutate(_meta("sources", "[1, 2]")), "sources"),
    "created-garbage": (_mutate(_meta("created", "yesterday")), "creation time"),
    "embedding-nan": (_embedding_values([math.nan] * 8), "nan"),
    "embedding-zero": (_embedding_values([0.0] * 8), "zero"),
    "no-embedding": (_mutate(lambda h: h.__setitem__("embedding2", h.pop("embedding"))), "embedding"),
}


# ---- checkpoints ----------------------------------------------------------------------------------


def zip_bomb(path: Path, *, torchscript: bool, member: str = "data.pkl", megabytes: int = 4) -> Path:
    """A zip whose ``member`` inflates to ``megabytes`` MiB of zeros from a few KiB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"archive/{member}", b"\0" * (megabytes << 20))
        if torchscript:
            archive.writestr("archive/code/__torch__.py", "x = 1\n")
            archive.writestr("archive/constants.pkl", b"\x80\x02].")
        else:
            archive.writestr("archive/version", "3\n")
    return path


def many_small_members(path: Path) -> Path:
    """A zip of 40 members of 1 MiB of zeros each (each under the per-member bound, the whole far over)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}.")
        for i in range(40):
            archive.writestr(f"archive/data/{i}", b"\0" * (1 << 20))
    return path


def safetensors_file(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors file of float32 zeros with these shapes (empty shapes cost no bytes)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape)) if shape else 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    path.write_bytes(_join(header, b"\0" * offset))
    return path


def clip_shapes(**changes: list[int]) -> dict[str, list[int]]:
    """The tensor names infer_card reads, most of them empty: a file of a few KiB describing a model."""
    shapes = {"text_projection": [512, 64], "positional_embedding": [77, 0], "token_embedding.weight": [49408, 0],
              "ln_final.weight": [512], "visual.proj": [0, 0], "visual.conv1.weight": [768, 0, 32, 32],
              "visual.positional_embedding": [50, 0], "visual.transformer.resblocks.0.mlp.c_fc.weight": [3072, 0],
              "transformer.resblocks.0.attn.in_proj_weight": [0]}
    shapes.update(changes)
    return shapes


def checkpoint_cases() -> dict[str, tuple[Callable[[Path], Path], str]]:
    deep_blocks = {f"transformer.resblocks.{i}.attn.in_proj_weight": [0] for i in range(300)}
    return {
        "torchscript-zip-bomb": (lambda t: zip_bomb(t / "m.pt", torchscript=True), "zip bomb"),
        "torch-zip-bomb": (lambda t: zip_bomb(t / "m.pt", torchscript=False), "zip bomb"),
        "pickle-too-large": (lambda t: zip_bomb(t / "m.pt", torchscript=False, megabytes=80), "pickle"),
        "tensor-data-bomb": (lambda t: zip_bomb(t / "m.pt", torchscript=True, member="data/0"), "zip bomb"),
        "many-members-bomb": (lambda t: many_small_members(t / "m.pt"), "zip bomb"),
        "not-a-zip": (lambda t: _write(t / "m.pt", b"PK\x03\x04" + b"\0" * 100), "zip archive"),
        "empty": (lambda t: _write(t / "m.pt", b""), "empty file"),
        "png": (lambda t: _write(t / "m.pt", png_bytes()), "png image"),
        "st-vocab-billion": (lambda t: safetensors_file(t / "m.safetensors", clip_shapes(**{"token_embedding.weight": [10**9, 0]})), "vocab_size"),
        "st-vocab-shapes": (lambda t: safetensors_file(t / "m.safetensors", clip_shapes(**{"token_embedding.weight": [1_999_999, 0]})), "architecture mismatch"),
        "st-context-million": (lambda t: safetensors_file(t / "m.safetensors", clip_shapes(positional_embedding=[10**6, 0])), "context_length"),
        "st-width-huge": (lambda t: safetensors_file(t / "m.safetensors", clip_shapes(**{"ln_final.weight": [0], "visual.conv1.weight": [10**7, 0, 32, 32]})), "width"),
        "st-300-layers": (lambda t: safetensors_file(t / "m.safetensors", {**clip_shapes(), **deep_blocks}), "layers"),
        "st-no-text-layers": (lambda t: safetensors_file(t / "m.safetensors", {k: v for k, v in clip_shapes().items() if not k.startswith("transformer.")}), "layers"),
        "st-header-garbage": (lambda t: _write(t / "m.safetensors", struct.pack("<Q", 20) + b"{" + b"\xff" * 19), "safetensors"),
        "st-truncated": (lambda t: _write(t / "m.safetensors", safetensors_file(t / "x.safetensors", {"a": [1000]}).read_bytes()[:-100]), "safetensors"),
    }


def detector_folder(tmp: Path, *, header: str | None = None, **card_changes: Any) -> Path:
    """A T-Rex2 detector folder: the shipped model's ``detector.json`` (or ``header``) and T-Rex2 card with
    ``card_changes`` (``clip_text``/``clip_vision``: changes to the CLIP card's parts), tiny weights."""
    from regionprompt.api import default_model_dir

    shipped = default_model_dir()
    folder = tmp / "detector"
    (folder / "trex2").mkdir(parents=True)
    data = json.loads((shipped / "detector.json").read_text())
    data.pop("namer", None), data.pop("namer_config", None)
    (folder / "detector.json").write_text(header if header is not None else json.dumps(data))
    card = json.loads((shipped / "trex2" / "card.json").read_text())
    card["clip"]["text"].update(card_changes.pop("clip_text", {}))
    card["clip"]["vision"].update(card_changes.pop("clip_vision", {}))
    card.update(card_changes)
    (folder / "trex2" / "card.json").write_text(json.dumps(card))
    safetensors_file(folder / "trex2" / "model.safetensors", {"x": [1]})
    return folder


def detector_cases() -> dict[str, tuple[Callable[[Path], Path], str]]:
    return {
        "trex2-dim-huge": (lambda t: detector_folder(t, dim=10**6), "dim"),
        "trex2-queries-huge": (lambda t: detector_folder(t, num_queries=10**9), "num_queries"),
        "trex2-layers-string": (lambda t: detector_folder(t, decoder_layers="3"), "decoder_layers"),
        "trex2-image-size-huge": (lambda t: detector_folder(t, image_size=32 * 10**5), "image_size"),
        "clip-vocab-huge": (lambda t: detector_folder(t, clip_text={"kind": "clip", "vocab_size": 10**9}), "vocab_size"),
        "clip-width-huge": (lambda t: detector_folder(t, clip_vision={"width": 10**6}), "width"),
        "header-deep": (lambda t: detector_folder(t, header="[" * 100_000 + "]" * 100_000), "not valid json"),
        "header-bigint": (lambda t: detector_folder(t, header='{"kind": "trex2", "format_version": ' + "1" * 5000 + "}"),
                          "not valid json"),
        "header-model-traversal": (lambda t: detector_folder(t, header=json.dumps(
            {"kind": "trex2", "format_version": 1, "model": "../../etc", "config": {}})), "sub-folder"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- CLI ------------------------------------------------------------------------------------------


def _label_argv(tmp: Path, *extra: str) -> list[str]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    (images / "a.png").write_bytes(png_bytes())
    extra = tuple(str(images / "a.png") if e == "IMAGE" else e for e in extra)
    return ["label", str(images), "--text", "dog", "--out", str(tmp / OUT), *extra]


def _detect_argv(tmp: Path, *extra: str) -> list[str]:
    (tmp / "a.png").write_bytes(png_bytes())
    extra = tuple(str(tmp / "a.png") if e == "IMAGE" else e for e in extra)
    return ["detect", str(tmp / "a.png"), "--out", str(tmp / OUT), *extra]


def _library_with_dog(tmp: Path) -> Path:
    from regionprompt.concepts.library import ConceptLibrary

    path = tmp / "lib.db"
    ConceptLibrary(path).import_file(_write(tmp / "dog.safetensors", concept_bytes()))
    return path


def _export_to_directory(tmp: Path) -> list[str]:
    (tmp / OUT).mkdir(parents=True)
    return ["concept", "export", "dog", str(tmp / OUT), "--library", str(_library_with_dog(tmp))]


TRAVERSAL_SPLITS = {"dotdot": "../evil", "dotdot2": "../../evil", "absolute": "/tmp/regionprompt-evil",
                    "nested": "a/../../evil", "subfolder": "a/b", "dots": "..", "backslash": "..\\evil"}


def cli_cases() -> list[Case]:
    cases: list[Case] = []
    for key, split in TRAVERSAL_SPLITS.items():
        cases.append(Case(f"cli-label-split-{key}", "cli", lambda t, s=split: _label_argv(t, "--format", "yolo", "--split", s),
                          match="split"))
        for dst in ("yolo", "coco"):
            cases.append(Case(f"cli-convert-split-{key}-to-{dst}", "cli",
                              lambda t, s=split, d=dst: ["convert", str(write_coco(t)), "--from", "coco", "--to", d,
                                                         "--out", str(t / OUT), "--split", s, "--copy-images"],
                              match="split"))
    # A COCO file whose file_name climbs out: strict mode refuses it, --skip-invalid drops it; neither writes outside.
    evil = coco_dict()
    evil["images"].append({"id": 2, "file_name": "../../evil.png", "width": 32, "height": 32})
    cases.append(Case("cli-convert-file-name-traversal-strict", "cli",
                      lambda t: ["convert", str(write_coco(t, evil)), "--from", "coco", "--to", "yolo",
                                 "--out", str(t / OUT), "--copy-images"], match="file_name", one_line=False))
    cases.append(Case("cli-convert-file-name-traversal-skip", "cli",
                      lambda t: ["-q", "convert", str(write_coco(t, evil)), "--from", "coco", "--to", "yolo",
                                 "--out", str(t / OUT), "--copy-images", "--skip-invalid"], code=0,
                      check=lambda t: (t / OUT / "labels" / "val" / "a.txt").is_file()))
    for key, (raw, match) in BAD_COCO.items():
        cases.append(Case(f"cli-check-coco-{key}", "cli",
                          lambda t, r=raw: ["dataset", "check", str(write_coco(t, raw=r)), "--format", "coco"], match=match))
        cases.append(Case(f"cli-convert-coco-{key}", "cli",
                          lambda t, r=raw: ["convert", str(write_coco(t, raw=r)), "--from", "coco", "--to", "yolo",
                                            "--out", str(t / OUT)], match=match))
    for key, (text, match) in BAD_YAML.items():
        cases.append(Case(f"cli-check-yaml-{key}", "cli",
                          lambda t, y=text: ["dataset", "check", str(write_yolo(t, y)), "--format", "yolo"], match=match))
        cases.append(Case(f"cli-convert-yaml-{key}", "cli",
                          lambda t, y=text: ["convert", str(write_yolo(t, y)), "--from", "yolo", "--to", "coco",
                                             "--out", str(t / OUT)], match=match))
    many = ",".join(f"thing{i}" for i in range(10_000))
    for key, extra, match in [
        ("text-10000-phrases", ["--text", many], "too many prompts"),
        ("text-2049-phrases", ["--text", ",".join(f"t{i}" for i in range(2049))], "limit is 2048"),
        ("text-repeated-2049", [a for i in range(2049) for a in ("--text", f"t{i}")], "limit is 2048"),
        ("text-too-long", ["--text", "x" * 201], "limit is 200"),
        ("negative-text-too-long", ["--text", "dog", "--negative-text", "y" * 5000], "limit is 200"),
        ("boxes-2049", ["--text", "dog", "--box-image", "IMAGE", *[a for _ in range(2048) for a in ("--box", "1,1,5,5")]],
         "too many prompts"),
    ]:
        cases.append(Case(f"cli-detect-{key}", "cli", lambda t, e=extra: _detect_argv(t, *e), match=match))
        cases.append(Case(f"cli-label-{key}", "cli", lambda t, e=extra: _label_argv(t, *e), match=match))
    cases.append(Case("cli-concept-export-to-directory", "cli", _export_to_directory, match="is a directory"))
    cases.append(Case("cli-concept-export-to-file", "cli",
                      lambda t: ["-q", "concept", "export", "dog", str(t / OUT / "dog.safetensors"), "--library",
                                 str(_library_with_dog(t))], code=0,
                      check=lambda t: (t / OUT / "dog.safetensors").stat().st_size > 0))
    for key, (build, match) in BAD_CONCEPTS.items():
        cases.append(Case(f"cli-concept-import-{key}", "cli",
                          lambda t, b=build: ["concept", "import", str(_write(t / "c.safetensors", b())),
                                              "--library", str(t / OUT / "lib.db")], match=match))
    return cases


# ---- Python API -----------------------------------------------------------------------------------

IMAGE = np.full((48, 48, 3), 90, dtype=np.uint8)


def _predict(**kwargs: Any) -> Callable[[Any, Path], Any]:
    return lambda detector, _tmp: detector.predict(IMAGE, **kwargs)


def api_cases() -> list[Case]:
    bad: dict[str, tuple[Callable[[Any, Path], Any], str]] = {
        "text-int": (_predict(text=5), "text must be a string"),
        "text-none-item": (_predict(text=[None]), "text[0] must be a string"),
        "text-int-item": (_predict(text=["dog", 3]), "text[1] must be a string"),
        "text-dict": (_predict(text={"dog": 1}), "text must be a string"),
        "text-bytes": (_predict(text=b"dog"), "text must be a string"),
        "text-only-commas": (_predict(text=", ;"), "no phrase"),
        "text-10000": (_predict(text=[f"w{i}" for i in range(10_000)]), "too many prompts"),
        "text-2049": (_predict(text=",".join(f"w{i}" for i in range(2049))), "limit is 2048"),
        "text-too-long": (_predict(text="x" * 201), "limit is 200"),
        "threshold-string": (_predict(text="dog", threshold="0.3"), "threshold"),
        "threshold-bool": (_predict(text="dog", threshold=True), "threshold"),
        "threshold-nan": (_predict(text="dog", threshold=math.nan), "threshold"),
        "threshold-two": (_predict(text="dog", threshold=2), "threshold"),
        "threshold-list": (_predict(text="dog", threshold=[0.3]), "threshold"),
        "boxes-int": (_predict(boxes=5), "boxes must be a list"),
        "boxes-string": (_predict(boxes="1,2,3,4"), "expected 4 numbers"),
        "box-mapping-int": (_predict(boxes=[{"box": 5}]), "expected 4 numbers"),
        "box-mapping-string": (_predict(boxes=[{"box": "1234"}]), "expected 4 numbers"),
        "box-label-int": (_predict(boxes=[{"box": [1, 1, 9, 9], "label": 5}]), "label must be a string"),
        "box-nan": (_predict(boxes=[[1, 1, math.nan, 9]]), "finite"),
        "boxes-3d-array": (_predict(boxes=np.zeros((2, 2, 4))), "array"),
        "point-short": (_predict(points=[[1]]), "expected 2 numbers"),
        "negative-text-none": (_predict(text="dog", negatives=[{"text": None}]), "negative text must be a string"),
        "concepts-int": (_predict(concepts=5), "concepts must be"),
        "concepts-int-item": (_predict(concepts=[5]), "concepts must be"),
        "visual-label-int": (_predict(boxes=[[1, 1, 9, 9]], visual_label=5), "visual_label"),
        "visual-label-empty": (_predict(boxes=[[1, 1, 9, 9]], visual_label=" "), "visual_label"),
        "one-label-string": (_predict(text="dog", one_label_per_box="yes"), "one_label_per_box"),
        "no-image": (lambda d, _t: d.predict([], text="dog"), "no image"),
        "concept-name-int": (lambda d, _t: d.make_concept(5, text="dog"), "name"),
        "concept-name-long": (lambda d, _t: d.make_concept("n" * 500, text="dog"), "limit is 200"),
        "make-concepts-2049": (lambda d, _t: d.make_concepts(text=[f"w{i}" for i in range(2049)]), "limit is 2048"),
    }
    cases = [Case(f"api-{key}", "api", call, PromptError, match) for key, (call, match) in bad.items()]
    cases += [
        Case("api-threshold-none-default", "api", _predict(text="dog"), check=lambda r, _t: len(r) == 1),
        Case("api-threshold-numpy", "api", _predict(text="dog", threshold=np.float32(0.5)), check=lambda r, _t: len(r) == 1),
        Case("api-text-64-ok", "api", _predict(text=[f"w{i}" for i in range(64)], threshold=1.0), check=lambda r, _t: len(r) == 1),
        Case("api-make-concepts-vocabulary", "api",
             lambda d, _t: d.make_concepts(text=[f"w{i}" for i in range(70)], max_prompts=None),
             check=lambda r, _t: len(r) == 70),
        Case("api-label-folder-split-traversal", "api", _label_folder("../../evil"), RegionPromptError, "split"),
        Case("api-label-folder-split-absolute", "api", _label_folder("/tmp/regionprompt-evil"), RegionPromptError, "split"),
    ]
    return cases


def _label_folder(split: str) -> Callable[[Any, Path], Any]:
    def call(detector: Any, tmp: Path) -> Any:
        from regionprompt.autolabel import label_folder

        (tmp / "images").mkdir()
        (tmp / "images" / "a.png").write_bytes(png_bytes())
        return label_folder(detector, tmp / "images", tmp / OUT, detector.make_concepts(text="dog"), fmt="yolo", split=split)

    return call


# ---- files: datasets, checkpoints, concepts without a model ---------------------------------------


def _write_yolo_dataset(file_name: str, split: str = "val") -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        from regionprompt.data.model import Category, DetectionDataset, ImageRecord
        from regionprompt.data.yolo import write_yolo as write

        dataset = DetectionDataset((ImageRecord(1, file_name, 32, 32),), (), (Category(1, "thing"),))
        return write(dataset, tmp / OUT, split=split, images="none")

    return call


def files_cases() -> list[Case]:
    from regionprompt.api import Detector
    from regionprompt.concepts.files import load_concept
    from regionprompt.interop.checkpoints import load_checkpoint
    from regionprompt.interop.regionclip_release import load_weights_only

    cases = [Case(f"files-concept-{key}", "files", lambda t, b=build: load_concept(_write(t / "c.safetensors", b())),
                  ConceptFileError, match) for key, (build, match) in BAD_CONCEPTS.items()]
    for key, (build, match) in checkpoint_cases().items():
        cases.append(Case(f"files-checkpoint-{key}", "files", lambda t, b=build: load_checkpoint(b(t)), CheckpointError, match))
    for key, (build, match) in detector_cases().items():
        cases.append(Case(f"files-detector-{key}", "files", lambda t, b=build: Detector.load(b(t), cache=None),
                          CheckpointError, match))
    for key in ("torchscript-zip-bomb", "torch-zip-bomb", "many-members-bomb"):
        build = checkpoint_cases()[key][0]
        cases.append(Case(f"files-regionclip-{key}", "files", lambda t, b=build: load_weights_only(b(t)), CheckpointError, "zip bomb"))
    for key, name in [("dotdot", "../../evil.png"), ("absolute", "/tmp/regionprompt-evil.png"), ("nul", "a\x00.png"),
                      ("backslash", "..\\evil.png")]:
        cases.append(Case(f"files-write-yolo-file-name-{key}", "files", _write_yolo_dataset(name), DatasetError, "file_name"))
    for key, split in TRAVERSAL_SPLITS.items():
        cases.append(Case(f"files-write-yolo-split-{key}", "files", _write_yolo_dataset("a.png", split), DatasetError, "split"))
    cases.append(Case("files-write-yolo-ok", "files", _write_yolo_dataset("sub/a.png"),
                      check=lambda r, t: (t / OUT / "labels" / "val" / "sub" / "a.txt").is_file()))
    return cases


# ---- server ---------------------------------------------------------------------------------------


def _detect(prompts: str, filename: str = "scene.png") -> Callable[[Any, Path], Any]:
    return lambda client, _tmp: client.post("/detect", files=[("image", (filename, png_bytes(64), "image/png"))],
                                            data={"prompts": prompts})


def _import(data: Callable[[], bytes]) -> Callable[[Any, Path], Any]:
    return lambda client, _tmp: client.post("/concepts/import", files=[("file", ("c.safetensors", data(), "application/octet-stream"))])


def server_cases() -> list[Case]:
    bad_prompts = {
        "deep-nesting": ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid json"),
        "deep-nesting-bare": ("[" * 100_000 + "]" * 100_000, "not valid json"),
        "bigint-threshold": ('{"text": ["dog"], "threshold": ' + "9" * 5000 + "}", "not valid json"),
        "bigint-box": ('{"boxes": [[1, 2, 3, ' + "4" * 5000 + "]]}", "not valid json"),
        "huge-float-threshold": ('{"text": ["dog"], "threshold": 1e999}', "threshold"),
        "nan-threshold": ('{"text": ["dog"], "threshold": NaN}', "threshold"),
        "threshold-string": ('{"text": ["dog"], "threshold": "0.3"}', "threshold"),
        "text-number": ('{"text": 5}', "text"),
        "text-nested": ('{"text": [["dog"]]}', "text[0]"),
        "text-null-item": ('{"text": [null]}', "text[0]"),
        "text-too-long": (json.dumps({"text": ["x" * 201]}), "longer than 200"),
        "too-many": (json.dumps({"text": [f"w{i}" for i in range(65)]}), "too many prompts"),
        "boxes-strings": ('{"boxes": [["1", "2", "3", "4"]]}', "boxes[0]"),
        "boxes-nan": ('{"boxes": [[1, 2, NaN, 4]]}', "boxes[0]"),
        "image-index-bigint": ('{"boxes": [{"box": [1, 2, 3, 4], "image": 99999999999999999999}]}', "image"),
        "not-json": ("dog, cat", "not valid json"),
        "null": ("null", "json object"),
        "unknown-key": ('{"txt": ["dog"]}', "unknown key"),
        "no-positive": ('{"negatives": ["dog"]}', "no positive prompt"),
    }
    cases = [Case(f"server-detect-{key}", "server", _detect(body), match=match, code=400)
             for key, (body, match) in bad_prompts.items()]
    cases += [Case(f"server-import-{key}", "server", _import(build), match=match, code=400)
              for key, (build, match) in BAD_CONCEPTS.items()]
    cases += [
        Case("server-detect-filename-traversal", "server", _detect('{"text": ["dog"]}', "../../etc/passwd"), code=200,
             check=lambda r, _t: r.json()["image"] == "passwd"),
        Case("server-detect-filename-control", "server", _detect('{"text": ["dog"]}', "a\x1b[31m.png"), code=200,
             check=lambda r, _t: "\x1b" not in r.json()["image"]),
        Case("server-concept-name-too-long", "server", lambda c, _t: c.get("/concepts/" + "n" * 5000), code=400),
        Case("server-import-renamed-bad", "server",
             lambda c, _t: c.post("/concepts/import", data={"name": "\x00"},
                                  files=[("file", ("c.safetensors", concept_bytes(), "application/octet-stream"))]),
             code=400, match="control"),
        Case("server-import-ok", "server", _import(concept_bytes), code=201, check=lambda r, _t: r.json()["name"] == "dog"),
    ]
    return cases


def all_cases() -> list[Case]:
    return cli_cases() + api_cases() + files_cases() + server_cases()
