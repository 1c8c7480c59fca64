"""``regionprompt export``: a T-Rex2 detector folder -> an ONNX export folder that keeps prompts changeable.

The export folder is the detector folder (copied byte for byte: the same model hashes, so concepts made
with the torch detector work on the export and back) plus ``onnx/`` with the image side, the
prompt-conditioned decoder (prompt embeddings are a graph *input*) and the region namer's tower
(:mod:`regionprompt.detect.onnx_graphs`, :mod:`regionprompt.detect.onnx_runtime`). Every export is
checked before it is kept: both runtimes detect on rendered EmojiWorld scenes and the largest score and
box differences go into ``onnx/export.json`` (``parity``).

Graphs are written by ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript); ``int8`` then
quantises the weights of their matrix products (onnxruntime's dynamic quantisation; convolutions stay
float32: onnxruntime's CPU kernels have no int8 x int8 ``ConvInteger``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from regionprompt.api import (
    DETECTOR_FILE,
    ONNX_KEY,
    TREX2_KIND,
    Detector,
    _is_trex2_model_folder,
    default_model_dir,
    read_detector_header,
)
from regionprompt.data.files import atomic_write_text, dump_json
from regionprompt.detect.onnx_graphs import (
    DECODER_GRAPH,
    IMAGE_GRAPH,
    NAMER_FEATURES_GRAPH,
    NAMER_REGIONS_GRAPH,
    DecoderGraph,
    ImageGraph,
    NamerFeatureGraph,
    NamerRegionGraph,
)
from regionprompt.detect.onnx_runtime import (
    EXPORT_FILE,
    INSTALL_HINT,
    OnnxExport,
    onnxruntime_module,
    read_onnx_export,
)
from regionprompt.detect.trex2_engine import TRex2DetectConfig, TRex2Engine
from regionprompt.errors import CheckpointError, RegionPromptError

FORMATS = ("onnx",)
DEFAULT_OPSET = 18  # the dynamo exporter's own opset (GridSample needs >= 16; RoiAlign half_pixel >= 16)
MODEL_CARD_FILE = "model_card.json"  # the shipped model's card, copied along when the source has one
PARITY_SCENES = 4  # EmojiWorld scenes both runtimes detect on at export time
PARITY_TOLERANCE = 1e-3  # largest score difference a float32 export may show against torch


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_detector` wrote: the folder, its manifest and the graph sizes in bytes."""

    folder: Path
    export: OnnxExport
    sizes: dict[str, int]


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise RegionPromptError(f"exporting to ONNX needs onnx and onnxscript, which are not installed: {INSTALL_HINT}") from None
    return onnx, onnxruntime_module()


def _source_folder(model: str | os.PathLike) -> Path:
    folder = default_model_dir() if str(model) == "default" else Path(model)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such detector folder (give 'default' or a T-Rex2 detector folder)")
    return folder


def _copy_detector(source: Path, staging: Path) -> dict[str, Any]:
    """Copy the torch detector into ``staging``; returns its ``detector.json`` header (with ``"onnx"``)."""
    if _is_trex2_model_folder(source):  # a bare model folder: wrap it with the default settings
        shutil.copytree(source, staging / "trex2")
        return {"kind": TREX2_KIND, "model": "trex2", "config": TRex2DetectConfig().to_dict(),
                "format_version": 1, ONNX_KEY: "onnx"}
    header = read_detector_header(source)
    if header["kind"] != TREX2_KIND:
        raise RegionPromptError(f"{source}: a {header['kind']!r} detector; only T-Rex2 detectors export to ONNX "
                                "(their decoder takes prompt embeddings as an input)")
    for key in ("model", "namer"):
        name = header.get(key)
        if name is not None:
            shutil.copytree(source / name, staging / name)
    if (source / MODEL_CARD_FILE).is_file():
        shutil.copy2(source / MODEL_CARD_FILE, staging / MODEL_CARD_FILE)
    return {**header, ONNX_KEY: "onnx"}


def _export_graph(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, *, inputs: list[str],
                  outputs: list[str], dynamic: tuple[Any, ...], opset: int) -> None:
    # torch.onnx prints its progress, and onnxscript logs every constant it does not fold: keep the CLI quiet.
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, os.fspath(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False)
    finally:
        optimizer_log.setLevel(level)


def _write_graphs(engine: TRex2Engine, folder: Path, opset: int) -> dict[str, str]:
    """The graphs of ``engine`` as ONNX files in ``folder``; returns graph name -> file name."""
    model = engine.model
    size, dim = model.card.image_size, model.card.dim
    generator = torch.Generator().manual_seed(0)
    # Example sizes of 2, not 1: torch.export fixes a dimension whose example is 1.
    batch, prompts, rois = (torch.export.Dim(n) for n in ("batch", "prompts", "regions"))
    pixels = torch.rand(2, 3, size, size, generator=generator)
    with torch.no_grad():
        encoded = model.encode_images(pixels)
    files = {IMAGE_GRAPH: "image.onnx", DECODER_GRAPH: "decoder.onnx"}
    _export_graph(ImageGraph(model), (pixels,), folder / files[IMAGE_GRAPH], inputs=["pixels"], outputs=["memory"],
                  dynamic=({0: batch},), opset=opset)
    embeddings = F.normalize(torch.randn(2, dim, generator=generator), dim=-1)
    _export_graph(DecoderGraph(model, encoded.spatial_shapes), (encoded.memory, embeddings, torch.tensor([True, False])),
                  folder / files[DECODER_GRAPH], inputs=["memory", "prompts", "selecting"], outputs=["logits", "boxes"],
                  dynamic=({0: batch}, {0: prompts}, {0: prompts}), opset=opset)
    if engine.namer is not None:
        regions = engine.namer.detector.regions
        files[NAMER_FEATURES_GRAPH], files[NAMER_REGIONS_GRAPH] = "namer_features.onnx", "namer_regions.onnx"
        namer_pixels = torch.rand(2, 3, regions.input_size, regions.input_size, generator=generator)
        with torch.no_grad():
            features = regions.feature_maps(namer_pixels)
        _export_graph(NamerFeatureGraph(regions.model), (namer_pixels,), folder / files[NAMER_FEATURES_GRAPH],
                      inputs=["pixels"], outputs=["features"], dynamic=({0: batch},), opset=opset)
        side = float(regions.input_size)
        boxes = torch.tensor([[0.0, 0.0, side, side], [side / 4, side / 8, side / 2, side * 0.9]])
        _export_graph(NamerRegionGraph(regions.model, regions.roi_size), (features[:1], boxes),
                      folder / files[NAMER_REGIONS_GRAPH], inputs=["features", "boxes"], outputs=["embeddings"],
                      dynamic=(None, {0: rois}), opset=opset)
    return files


def _quantize(folder: Path, files: dict[str, str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises shape pre-processing on the root logger, per graph
    try:
        for name in files.values():
            path = folder / name
            staged = path.with_suffix(".fp32.onnx")
            path.rename(staged)
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_dynamic(os.fspath(staged), os.fspath(path), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            staged.unlink()
    finally:
        root.setLevel(level)


def measure_parity(reference: Detector, exported: Detector, *, scenes: int = PARITY_SCENES, seed: int = 7
                   ) -> dict[str, Any]:
    """Both detectors on ``scenes`` rendered EmojiWorld test scenes at the model's input size, each
    searched for the names of its objects plus as many absent ones: the largest difference of T-Rex2's
    query scores and boxes (pixels), of the namer's region embeddings on the same boxes, and whether the
    final detections (at score 0.05) have the same boxes and labels.

    Returns a JSON-ready dict (``max_score_diff``, ``max_box_diff_px``, ``max_region_diff``,
    ``same_detections``, ``scenes``, ``max_detection_score_diff``)."""
    from regionprompt.images import load_image
    from regionprompt.world.render import SceneRenderer
    from regionprompt.world.scene import SceneConfig

    ref_engine, onnx_engine = reference.engine, exported.engine
    assert isinstance(ref_engine, TRex2Engine) and isinstance(onnx_engine, TRex2Engine)
    size = ref_engine.model.card.image_size
    renderer = SceneRenderer.default(SceneConfig(size=size, min_objects=2, max_objects=5))
    score_diff = box_diff = region_diff = detection_diff = 0.0
    same = True
    by_id = {c.id: c for c in renderer.concepts}
    for index in range(scenes):
        scene = renderer.render("test", index, seed)
        present = list(dict.fromkeys(by_id[o.concept_id].name for o in scene.objects))
        absent = [c.name for c in renderer.concepts if c.name not in present][index * 7 :: 97][: len(present)]
        names = present + absent
        image = load_image(scene.image)
        pixels = ref_engine._pixels([image])
        prompts = ref_engine.model.embed_texts(names)
        with torch.no_grad():
            ref_out = ref_engine.model(ref_engine.model.encode_images(pixels), prompts)
            onnx_out = onnx_engine.model(onnx_engine.model.encode_images(pixels), prompts)
        score_diff = max(score_diff, float((ref_out.logits.sigmoid() - onnx_out.logits.sigmoid()).abs().max()))
        box_diff = max(box_diff, float((ref_out.boxes - onnx_out.boxes).abs().max()) * max(image.wh))
        if ref_engine.namer is not None and onnx_engine.namer is not None:
            ref_regions, onnx_regions = ref_engine.namer.detector.regions, onnx_engine.namer.detector.regions
            boxes = torch.tensor([[0.0, 0.0, *image.wh]], dtype=torch.float32)
            boxes = torch.cat([boxes, torch.tensor([list(o.box_xyxy) for o in scene.objects], dtype=torch.float32)])
            ref_map = ref_regions.feature_maps(ref_regions.pixels([image.image]))[0]
            onnx_map = onnx_regions.feature_maps(onnx_regions.pixels([image.image]))[0]
            region_diff = max(region_diff, float((ref_regions.pool(ref_map, boxes, image.wh)
                                                 - onnx_regions.pool(onnx_map, boxes, image.wh)).abs().max()))
        [ref_dets] = reference.predict(image, text=names, threshold=0.05)
        [onnx_dets] = exported.predict(image, text=names, threshold=0.05)
        if len(ref_dets) != len(onnx_dets) or not torch.equal(ref_dets.labels, onnx_dets.labels):
            same = False
        elif len(ref_dets):
            same = same and bool((ref_dets.boxes - onnx_dets.boxes).abs().max() < 0.5)
            detection_diff = max(detection_diff, float((ref_dets.scores - onnx_dets.scores).abs().max()))
    return {"scenes": scenes, "max_score_diff": score_diff, "max_box_diff_px": box_diff,
            "max_region_diff": region_diff, "max_detection_score_diff": detection_diff, "same_detections": same}


def export_detector(model: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "onnx", int8: bool = False,
                    opset: int = DEFAULT_OPSET, parity_scenes: int = PARITY_SCENES) -> ExportResult:
    """Export the T-Rex2 detector ``model`` (``"default"`` or a folder) to the new folder ``out``.

    The folder appears only once complete and checked (written beside ``out`` and renamed).

    Raises:
        RegionPromptError: an unknown format, ``out`` exists and is not empty, not a T-Rex2 detector,
            onnx / onnxruntime missing, a float32 export whose scores differ from torch's by more than
            :data:`PARITY_TOLERANCE` on the check scenes. CheckpointError: the model folder is missing or invalid.
    """
    if fmt not in FORMATS:
        raise RegionPromptError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    if opset < 16:
        raise RegionPromptError(f"opset {opset} is too old: deformable attention needs GridSample (opset >= 16)")
    onnx, ort = _onnx_modules()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegionPromptError(f"{out} exists and is not an empty folder: give a new folder to export into")
    source = _source_folder(model)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        header = _copy_detector(source, staging)
        atomic_write_text(staging / DETECTOR_FILE, dump_json(header, indent=2))
        reference = Detector.load(staging, runtime="torch", cache=None)
        engine = reference.engine
        assert isinstance(engine, TRex2Engine)
        graphs_dir = staging / ONNX_KEY
        graphs_dir.mkdir()
        files = _write_graphs(engine, graphs_dir, opset)
        if int8:
            _quantize(graphs_dir, files)
        model_card = engine.model.card
        with torch.no_grad():
            shapes = engine.model.encode_images(torch.zeros(1, 3, model_card.image_size, model_card.image_size)).spatial_shapes
        namer = engine.namer
        export = OnnxExport(
            opset=opset, image_size=model_card.image_size, spatial_shapes=shapes, graphs=files,
            weights_hash=str(model_card.weights_hash),
            namer_weights_hash=None if namer is None else str(namer.model.card.weights_hash),
            namer_input_size=None if namer is None else namer.detector.regions.input_size,
            roi_size=None if namer is None else namer.detector.regions.roi_size, int8=int8,
            versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        )
        atomic_write_text(graphs_dir / EXPORT_FILE, dump_json(export.to_dict(), indent=2))
        exported = Detector.load(staging, runtime="onnx", cache=None)
        parity = measure_parity(reference, exported, scenes=parity_scenes) if parity_scenes else {}
        if parity and not int8 and (parity["max_score_diff"] > PARITY_TOLERANCE or not parity["same_detections"]):
            raise RegionPromptError(f"the exported graphs disagree with torch (max score difference "
                                    f"{parity['max_score_diff']:.2g}, same detections: {parity['same_detections']}); "
                                    "nothing was written")
        export = OnnxExport.from_dict({**export.to_dict(), "parity": parity})
        atomic_write_text(graphs_dir / EXPORT_FILE, dump_json(export.to_dict(), indent=2))
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sizes = {name: (out / ONNX_KEY / file).stat().st_size for name, file in export.graphs.items()}
    return ExportResult(out, export, sizes)


def read_export(folder: str | os.PathLike) -> OnnxExport:
    """The manifest of an export folder (``onnx/export.json``), checked."""
    folder = Path(folder)
    header = read_detector_header(folder)
    if header.get(ONNX_KEY) is None:
        raise CheckpointError(f"{folder}: not an ONNX export (no {ONNX_KEY!r} in {DETECTOR_FILE})")
    return read_onnx_export(folder / str(header[ONNX_KEY]))


__all__ = ["FORMATS", "ExportResult", "export_detector", "measure_parity", "read_export"]
