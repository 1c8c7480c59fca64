"""Running an ONNX export of a T-Rex2 detector folder with onnxruntime.

An export folder (``regionprompt export MODEL --format onnx --out DIR``) is a T-Rex2 detector folder --
``detector.json``, ``trex2/`` and ``namer/`` copied byte for byte, so model hashes and concepts carry
over -- whose ``detector.json`` also names an ``onnx/`` folder::

    onnx/export.json         OnnxExport: opset, image size, level shapes, graph files, source hashes,
                             parity measured at export time
    onnx/image.onnx          backbone + deformable encoder        (see regionprompt.detect.onnx_graphs)
    onnx/decoder.onnx        query selection + decoder, prompt embeddings as an input
    onnx/namer_features.onnx, onnx/namer_regions.onnx   the region namer's tower (when the detector has one)

At load time the image side, the decoder and the namer's tower run in onnxruntime; the prompt side
stays in torch (the frozen text side with its embedding cache, the text projection, the visual prompt
encoder, which reads the encoder tokens onnxruntime returned). So text, exemplars and concepts made
after the export all work: the graphs hold no vocabulary.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionprompt.data.files import is_safe_relative
from regionprompt.detect.onnx_graphs import DECODER_GRAPH, IMAGE_GRAPH, NAMER_FEATURES_GRAPH, NAMER_REGIONS_GRAPH
from regionprompt.detect.regionclip.prompting import PromptCompiler
from regionprompt.detect.regionclip.regions import RegionEncoder
from regionprompt.detect.trex2_engine import TRex2Engine
from regionprompt.errors import BoxFormatError, CheckpointError, PromptError, RegionPromptError
from regionprompt.trex2.model import TRex2, check_images
from regionprompt.trex2.structures import EncodedImages, LayerPredictions, TRex2Output
from regionprompt.untrusted import loads_json

EXPORT_FILE = "export.json"  # inside the export's onnx/ folder
EXPORT_FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'regionprompt[onnx]'"


def onnxruntime_module() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`RegionPromptError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise RegionPromptError(f"running an ONNX export needs onnxruntime, which is not installed: {INSTALL_HINT} "
                                "(or load the folder with runtime='torch')") from None
    return onnxruntime


@dataclass(frozen=True)
class OnnxExport:
    """``onnx/export.json``: what the graphs were built from and how to feed them.

    Attributes:
        opset: ONNX opset of every graph.
        image_size: side ``S`` of the square ``pixels`` input of the image graph.
        spatial_shapes: ``(h, w)`` of the encoder's levels (fixed by ``image_size``).
        graphs: graph name (:mod:`~regionprompt.detect.onnx_graphs`) -> file name in the folder.
        weights_hash: the T-Rex2 model's weights hash (its ``trex2/card.json``); checked at load.
        namer_weights_hash: the namer's, or ``None`` without a namer graph.
        namer_input_size, roi_size: the namer's square input side and RoIAlign grid.
        int8: weights quantised to int8 (dynamic quantisation of the matrix products).
        parity: measured at export time: onnxruntime vs torch on rendered EmojiWorld scenes.
        versions: torch / onnx / onnxruntime versions that wrote the graphs.
    """

    opset: int
    image_size: int
    spatial_shapes: tuple[tuple[int, int], ...]
    graphs: dict[str, str]
    weights_hash: str
    namer_weights_hash: str | None = None
    namer_input_size: int | None = None
    roi_size: int | None = None
    int8: bool = False
    parity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = EXPORT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spatial_shapes"] = [list(s) for s in self.spatial_shapes]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnnxExport:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` / ``TypeError`` on anything malformed."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        if data.get("format_version") != EXPORT_FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r} is not supported "
                             f"(this RegionPrompt reads {EXPORT_FORMAT_VERSION})")
        shapes = tuple((int(h), int(w)) for h, w in data["spatial_shapes"])
        graphs = dict(data["graphs"])
        if not all(isinstance(v, str) and is_safe_relative(v) for v in graphs.values()):
            raise ValueError(f"graph files must be names inside the folder, got {graphs}")
        missing = {IMAGE_GRAPH, DECODER_GRAPH} - set(graphs)
        if missing:
            raise ValueError(f"graphs {sorted(missing)} are missing")
        return cls(**{**data, "spatial_shapes": shapes, "graphs": graphs})


def read_onnx_export(folder: Path) -> OnnxExport:
    """The checked ``export.json`` of an export's ``onnx/`` folder (its graph files must exist).

    Raises:
        CheckpointError: missing, invalid JSON, malformed, or a named graph file is missing.
    """
    path = folder / EXPORT_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not an ONNX export folder (no {EXPORT_FILE})")
    try:
        export = OnnxExport.from_dict(loads_json(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    for name in export.graphs.values():
        if not (folder / name).is_file():
            raise CheckpointError(f"{path}: graph file {name!r} is missing")
    return export


class OnnxGraph:
    """One onnxruntime session on the CPU: ``run(name=array, ...)`` -> the outputs, in graph order."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        # As many threads as torch uses, so the two runtimes compare (and share a machine) alike.
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{path}: onnxruntime cannot load this graph ({str(exc).splitlines()[0]})") from None
        self.path = path

    def run(self, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, inputs)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


class OnnxTRex2:
    """A :class:`TRex2` whose image side and decoder run in onnxruntime; everything else (prompt
    embeddings, card, hashes) is the torch model's. :class:`TRex2Engine` takes it in place of the model."""

    runtime = "onnxruntime"

    def __init__(self, model: TRex2, export: OnnxExport, image: OnnxGraph, decoder: OnnxGraph) -> None:
        self.torch_model = model.eval()
        self.export = export
        self.image_graph = image
        self.decoder_graph = decoder

    def __getattr__(self, name: str) -> Any:
        if name == "torch_model":  # not set yet (copy, unpickling): no delegation to recurse through
            raise AttributeError(name)
        return getattr(self.torch_model, name)

    def eval(self) -> OnnxTRex2:
        self.torch_model.eval()
        return self

    def autocast(self, bfloat16: bool) -> contextlib.AbstractContextManager[None]:
        """No autocast: the graphs are float32 (or int8); a bfloat16 precision setting has no effect."""
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> EncodedImages:
        """``(B, 3, H, W)`` in [0, 1] -> encoder tokens (resized in torch, encoded in onnxruntime)."""
        pixels = self.torch_model.preprocess(check_images(images))
        [memory] = self.image_graph.run(pixels=_array(pixels))
        return EncodedImages(torch.from_numpy(memory), self.export.spatial_shapes)

    @torch.no_grad()
    def __call__(self, encoded: EncodedImages, prompts: torch.Tensor, denoising: Any = None, *,
                 select_with: int | None = None) -> TRex2Output:
        """As :meth:`TRex2.forward` for inference: the final layer's predictions (``encoder`` holds none:
        ``(B, 0, K)`` logits); denoising queries are for training, which needs the torch model."""
        if denoising is not None:
            raise RegionPromptError("denoising queries need the torch model: train with TRex2, not an ONNX export")
        count = int(prompts.shape[0])
        if count == 0:
            raise PromptError("an ONNX export needs at least one prompt embedding")
        selecting = np.arange(count) < (count if select_with is None else select_with)
        logits, boxes = self.decoder_graph.run(memory=_array(encoded.memory), prompts=_array(prompts),
                                               selecting=selecting)
        logits_t, boxes_t = torch.from_numpy(logits), torch.from_numpy(boxes)
        batch = logits_t.shape[0]
        empty = LayerPredictions(logits_t.new_zeros(batch, 0, count), boxes_t.new_zeros(batch, 0, 4))
        return TRex2Output((LayerPredictions(logits_t, boxes_t),), empty)


class OnnxRegionEncoder(RegionEncoder):
    """The namer's :class:`RegionEncoder` with its tower (feature map, RoI head) in onnxruntime."""

    def __init__(self, base: RegionEncoder, features: OnnxGraph, regions: OnnxGraph) -> None:
        super().__init__(base.model, input_size=base.input_size, roi_size=base.roi_size, max_regions=base.max_regions)
        self.features_graph = features
        self.regions_graph = regions

    @torch.no_grad()
    def feature_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        [maps] = self.features_graph.run(pixels=_array(pixels))
        return torch.from_numpy(maps)

    @torch.no_grad()
    def pool(self, feature_map: torch.Tensor, boxes: torch.Tensor, image_wh: tuple[int, int]) -> torch.Tensor:
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise BoxFormatError(f"boxes must be (K, 4) xyxy, got shape {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise BoxFormatError("boxes contain inf or NaN")
        if len(boxes) == 0:
            return torch.zeros(0, self.model.embed_dim)
        scaled = boxes * self.scale(image_wh).cpu()
        [embeddings] = self.regions_graph.run(features=_array(feature_map.unsqueeze(0)), boxes=_array(scaled))
        # Normalised in the graph already; again here so an int8 graph's rounding cannot leave |e| != 1.
        return F.normalize(torch.from_numpy(embeddings), dim=-1)


def onnx_engine(engine: TRex2Engine, folder: Path, *, threads: int | None = None) -> TRex2Engine:
    """``engine`` (loaded in torch from an export folder) with its graphs run by onnxruntime.

    ``folder``: the export's ``onnx/`` folder. Raises :class:`CheckpointError` when the graphs were made
    from other weights than the folder's torch models, :class:`RegionPromptError` without onnxruntime.
    """
    export = read_onnx_export(folder)
    onnxruntime_module()  # the install hint comes before any graph is touched
    model = engine.model
    if export.weights_hash != model.card.weights_hash:
        raise CheckpointError(f"{folder / EXPORT_FILE}: the graphs were exported from T-Rex2 weights "
                              f"{export.weights_hash[:12]}..., but the folder's model is "
                              f"{str(model.card.weights_hash)[:12]}...; export again")
    if export.image_size != model.card.image_size:
        raise CheckpointError(f"{folder / EXPORT_FILE}: image size {export.image_size} does not match the model's "
                              f"{model.card.image_size}")
    graphs = {name: OnnxGraph(folder / file, threads=threads) for name, file in export.graphs.items()}
    onnx_model = OnnxTRex2(model, export, graphs[IMAGE_GRAPH], graphs[DECODER_GRAPH])
    namer = engine.namer
    if namer is not None:
        if NAMER_FEATURES_GRAPH not in graphs or NAMER_REGIONS_GRAPH not in graphs:
            raise CheckpointError(f"{folder / EXPORT_FILE}: the detector has a region namer but the export holds "
                                  "no namer graphs; export again")
        if export.namer_weights_hash != namer.model.card.weights_hash:
            raise CheckpointError(f"{folder / EXPORT_FILE}: the namer graphs were exported from other weights "
                                  "than the folder's namer; export again")
        zero_shot = namer.detector
        zero_shot.regions = OnnxRegionEncoder(zero_shot.regions, graphs[NAMER_FEATURES_GRAPH],
                                              graphs[NAMER_REGIONS_GRAPH])
        # The compiler holds the region embedder it was built with: rebuild it on the onnxruntime one.
        zero_shot.compiler = PromptCompiler(zero_shot.embedder, zero_shot.regions.embed, None,
                                            zero_shot.config.point_box_fraction)
    return TRex2Engine(onnx_model, engine.config, cache=engine.cache, namer=namer)  # type: ignore[arg-type]


__all__ = ["EXPORT_FILE", "OnnxExport", "OnnxGraph", "OnnxRegionEncoder", "OnnxTRex2", "onnx_engine",
           "onnxruntime_module", "read_onnx_export"]
