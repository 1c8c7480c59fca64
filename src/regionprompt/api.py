"""The user-facing detector: ``Detector.load(...)`` then ``detector.predict(images, text=..., boxes=...)``.

A detector folder::

    detector.json   {"kind": "regionclip-zeroshot", "format_version": 1, "clip": "clip", "rpn": "rpn",
                     "config": {...ZeroShotConfig fields...}}
    clip/           the RegionPromptCLIP (model.safetensors + card.json): region and text encoders; or,
                    for an imported RegionCLIP release, an image tower with a fixed vocabulary
                    (:mod:`regionprompt.vl.vocabulary`, card text kind "vocabulary")
    rpn/            the ProposalNetwork (model.safetensors + card.json), or a detectron2 RPN (card kind
                    "detectron2-rpn", :mod:`regionprompt.detect.detectron2_rpn`); "rpn": null for a detector
                    that only classifies boxes it is given (``proposals=``)
    background.safetensors
                    optional (``"background": "background.safetensors"`` in detector.json): the ``(D,)``
                    background embedding learned by open-vocabulary transfer (``regionprompt train
                    detector --arch regionclip``) under the key ``"background"``; ``"config"``'s
                    ``"background": "learned"`` requires it

or, for a T-Rex2 detector (``regionprompt train detector --arch trex2``)::

    detector.json   {"kind": "trex2", "format_version": 1, "model": "trex2", "config": {...TRex2DetectConfig...}}
    trex2/          the TRex2 model (model.safetensors + card.json): backbone, prompt encoders, decoder
    namer/          optional: a CLIP model (RegionCLIP student) naming T-Rex2's boxes for text-only
                    categories; detector.json then holds "namer": "namer" and "namer_config": {...ZeroShotConfig...}
                    (see :mod:`regionprompt.detect.region_namer`)

An ONNX export of a T-Rex2 detector (``regionprompt export MODEL --format onnx --out DIR``) is such a folder
whose detector.json also holds ``"onnx": "onnx"``, the sub-folder with the graphs; it loads with onnxruntime
(:mod:`regionprompt.detect.onnx_runtime`), or in torch with ``runtime="torch"``.

A bare T-Rex2 model folder (``OUT/model`` of ``regionprompt train detector --arch trex2``) loads too, with
the default :class:`TRex2DetectConfig`. ``Detector.load("default")`` reads the folder shipped inside the
package (``regionprompt/models/default``).

Example::

    detector = Detector.load("runs/detector")
    [dets] = detector.predict("scene.png", text="dog, red apple")  # threshold: the model's default
    dets.plot(load_image("scene.png").image).save("out.png")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from regionprompt.concept import PromptConcept
from regionprompt.data.files import (
    atomic_write,
    atomic_write_text,
    dump_json,
    is_safe_relative,
)
from regionprompt.detect.regionclip.zeroshot import (
    LEARNED_BACKGROUND,
    ZeroShotConfig,
    ZeroShotDetector,
)
from regionprompt.detect.region_namer import RegionNamer
from regionprompt.detect.trex2_engine import TRex2DetectConfig, TRex2Engine
from regionprompt.devices import resolve_device
from regionprompt.errors import CheckpointError, PromptError, RegionPromptError
from regionprompt.model_dir import read_weights
from regionprompt.prompts import (
    MAX_PROMPTS,
    BoxPrompt,
    PointPrompt,
    Prompt,
    TextPrompt,
    check_prompt_count,
    check_text_length,
    group_prompts,
    split_phrases,
)
from regionprompt.proposals import ProposalSource
from regionprompt.results import Detections
from regionprompt.untrusted import loads_json
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache

DETECTOR_FILE = "detector.json"
DETECTOR_KIND = "regionclip-zeroshot"
TREX2_KIND = "trex2"
#: How a namer scores T-Rex2's boxes unless told otherwise: the settings of the RegionCLIP tables
#: (224 px input, the paper's temperature and "auto" background); it names T-Rex2's 30 best boxes
#: (on val: text AP50 18.3 with 30, 17.8 with 20, 17.7 with all 60 queries; naming is most of its time).
NAMER_CONFIG = ZeroShotConfig(input_size=224, max_proposals=30)
FORMAT_VERSION = 1
BACKGROUND_FILE = "background.safetensors"  # learned background embedding of a RegionCLIP detector folder
BACKGROUND_KEY = "background"  # its tensor's name in that file
DEFAULT_VISUAL_LABEL = "object"
ONNX_KEY = "onnx"  # detector.json of an ONNX export: the sub-folder holding the graphs and export.json
RUNTIMES = ("auto", "torch", "onnx")


DEFAULT_MODEL_ENV = "REGIONPROMPT_DEFAULT_MODEL"


def default_model_dir() -> Path:
    """Where ``Detector.load("default")`` looks: ``$REGIONPROMPT_DEFAULT_MODEL`` when set (a detector folder
    that then serves every ``"default"`` / command without ``--model``), else ``models/default`` inside the
    installed package."""
    override = os.environ.get(DEFAULT_MODEL_ENV)
    if override:
        return Path(override).expanduser()
    return Path(str(resources.files("regionprompt"))) / "models" / "default"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_coords(value: Any, count: int) -> bool:
    """A flat run of ``count`` numbers (a list, tuple, array or tensor)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim == 1 and value.shape[0] == count
    return isinstance(value, (list, tuple)) and len(value) == count and all(_is_number(v) for v in value)


def _items(value: Any, count: int, what: str) -> list[Any]:
    """One box/point (``count`` numbers) or prompt -> ``[it]``; a sequence of them -> a list; None -> []."""
    if value is None:
        return []
    if _is_coords(value, count) or isinstance(value, (BoxPrompt, PointPrompt, TextPrompt, Mapping, str)):
        return [value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 2:
            raise PromptError(f"{what}: expected a ({'N, ' if value.ndim else ''}{count}) array, got shape {tuple(value.shape)}")
        return [row for row in value]
    if not isinstance(value, Iterable):
        raise PromptError(f"{what} must be a list of prompts, got {type(value).__name__}")
    return list(value)


def _texts(text: Any) -> list[str | TextPrompt]:
    """The phrases of ``text``: ``None``, one string (split at commas...), a :class:`TextPrompt`, or a
    list of strings / TextPrompts; anything else is refused here rather than turned into ``"5"``."""
    if text is None:
        return []
    if isinstance(text, str):
        phrases = split_phrases(text)
        if not phrases:
            raise PromptError(f"text prompt {text[:80]!r} holds no phrase")
        return list(phrases)
    if isinstance(text, TextPrompt):
        return [text]
    if not isinstance(text, Sequence) or isinstance(text, (bytes, Mapping)):
        raise PromptError(f"text must be a string or a list of strings, got {type(text).__name__}")
    for i, item in enumerate(text):
        if not isinstance(item, (str, TextPrompt)):
            raise PromptError(f"text[{i}] must be a string, got {type(item).__name__}")
    return list(text)


def _label_of(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise PromptError(f"{where}: label must be a string, got {type(value).__name__}")


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float, or :class:`PromptError` unless it is a real number in [0, 1]
    (``"0.3"``, ``True`` and NaN are refused, not coerced)."""
    if not _is_number(threshold) or not math.isfinite(float(threshold)) or not 0 <= float(threshold) <= 1:
        raise PromptError(f"threshold must be a number in [0, 1], got {threshold!r:.80}")
    return float(threshold)


def _is_image_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _visual(item: Any, kind: type, image: Any, label: str | None, negative: bool) -> BoxPrompt | PointPrompt:
    """A box/point given as numbers, a mapping (``box``/``point``, ``label``, ``image``) or a prompt;
    ``image`` and ``label`` fill in what the item does not say."""
    key, count = ("box", 4) if kind is BoxPrompt else ("point", 2)
    if isinstance(item, kind):
        return replace(item, image=item.image if item.image is not None else image,
                       label=item.label or label, negative=negative)
    if isinstance(item, Mapping):
        if key not in item:
            raise PromptError(f"{key} prompt {dict(item)!r:.200} needs a {key!r} entry")
        coords = item[key]
        if isinstance(coords, (str, bytes)) or not isinstance(coords, Iterable):
            raise PromptError(f"{key} prompt: expected {count} numbers, got {coords!r:.80}")
        return kind(tuple(coords), item.get("image", image), _label_of(item.get("label"), f"{key} prompt") or label,
                    negative)
    if not _is_coords(item, count):
        raise PromptError(f"{key} prompt: expected {count} numbers, got {item!r}")
    return kind(tuple(float(v) for v in item), image, label, negative)


def build_prompts(text: str | Sequence[str | TextPrompt] | None = None, *, boxes: Any = None, points: Any = None,
                  prompt_images: Any = None, negatives: Any = None,
                  visual_label: str = DEFAULT_VISUAL_LABEL, max_prompts: int | None = MAX_PROMPTS) -> list[Prompt]:
    """The prompt objects of :meth:`Detector.predict` 's arguments (see there).

    ``max_prompts``: most phrases + boxes + points + negatives (``None``: no limit), counted before any
    is built; each phrase is limited to :data:`~regionprompt.prompts.MAX_TEXT_LENGTH` characters.

    Raises:
        PromptError: a wrongly typed argument, an empty or too long text prompt, too many prompts, a
            malformed box or point, prompt images not matching the prompts.
    """
    if not isinstance(visual_label, str) or not visual_label.strip():
        raise PromptError(f"visual_label must be a non-empty string, got {visual_label!r:.80}")
    prompts: list[Prompt] = []
    texts = _texts(text)
    box_items, point_items = _items(boxes, 4, "boxes"), _items(points, 2, "points")
    negative_items = _items(negatives, 4, "negatives")
    check_prompt_count(len(texts) + len(box_items) + len(point_items) + len(negative_items), max_prompts)
    for t in texts:
        prompt = t if isinstance(t, TextPrompt) else TextPrompt(t)
        check_text_length(prompt.text)
        prompts.append(prompt)
    visual_count = len(box_items) + len(point_items)
    if _is_image_list(prompt_images):
        if len(prompt_images) != visual_count:
            raise PromptError(f"prompt_images holds {len(prompt_images)} images for {visual_count} box/point prompts; "
                              "give one image for all, or one per prompt (boxes first, then points)")
        images = list(prompt_images)
    else:
        images = [prompt_images] * visual_count
    # Unlabelled exemplars form one category named ``visual_label``.
    for item, image in zip(box_items, images[: len(box_items)]):
        prompts.append(_visual(item, BoxPrompt, image, visual_label, False))
    for item, image in zip(point_items, images[len(box_items):]):
        prompts.append(_visual(item, PointPrompt, image, visual_label, False))
    # Negative exemplars are drawn where the positive ones are, unless they say otherwise.
    negative_image = None if _is_image_list(prompt_images) else prompt_images
    for item in negative_items:
        if isinstance(item, (str, TextPrompt)) or (isinstance(item, Mapping) and "text" in item):
            if isinstance(item, Mapping):  # {"text": "dog face", "label": "dog"}, as the server's JSON has it
                if not isinstance(item["text"], str):
                    raise PromptError(f"negative text must be a string, got {type(item['text']).__name__}")
                prompts.append(TextPrompt(check_text_length(item["text"], "negative text"),
                                          _label_of(item.get("label"), "negative text"), negative=True))
                continue
            phrase = item.text if isinstance(item, TextPrompt) else item
            prompts.append(TextPrompt(check_text_length(phrase, "negative text"), getattr(item, "label", None),
                                      negative=True))
        elif isinstance(item, PointPrompt) or (isinstance(item, Mapping) and "point" in item) or _is_coords(item, 2):
            prompts.append(_visual(item, PointPrompt, negative_image, None, True))
        else:
            prompts.append(_visual(item, BoxPrompt, negative_image, None, True))
    return prompts


def _alias(value: Any, alias: Any, name: str, alias_name: str) -> Any:
    """``value``, or ``alias`` when only the alias was given (``predict(conf=0.3)`` for ``threshold=0.3``)."""
    if alias is None:
        return value
    if value is not None:
        raise PromptError(f"give {name}= or its alias {alias_name}=, not both")
    return alias


def _as_image_list(images: Any) -> list[Any]:
    """One image source -> ``[it]``; a list/tuple or a 4-d array/tensor (a batch) -> its items; a folder
    or a glob pattern -> its image files (:func:`~regionprompt.images.expand_image_sources`)."""
    from regionprompt.images import expand_image_sources

    if isinstance(images, (list, tuple)) and not images:
        raise PromptError("no image given")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return [image for image in images]
    return expand_image_sources(images)


class Detector:
    """Open-vocabulary detection with text, visual (box / point) and mixed prompts.

    Args:
        engine: what does the work: a zero-shot RegionCLIP detector (:class:`ZeroShotDetector`) or a
            T-Rex2 detector (:class:`TRex2Engine`).
        source: where it was loaded from (for messages and ``repr``).
        concept_library: resolves concept names in ``predict(concepts=[...])`` (an object with
            ``get(name) -> PromptConcept``); ``None``: the default library, opened when first needed.
    """

    def __init__(self, engine: ZeroShotDetector | TRex2Engine, *, source: str = "<memory>",
                 concept_library: Any = None) -> None:
        self.engine = engine
        self.source = source
        self._concept_library = concept_library

    def __repr__(self) -> str:
        return f"Detector(kind={self.kind!r}, source={self.source!r}, model_hash={self.model_hash[:12]!r})"

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_models(cls, clip: RegionPromptCLIP, rpn: ProposalSource | None = None, config: ZeroShotConfig | None = None,
                    *, cache: EmbeddingCache | None = None, concept_library: Any = None,
                    background: torch.Tensor | None = None) -> Detector:
        """A detector from models in memory (``rpn=None``: classify given boxes only; ``background``: a
        ``(D,)`` learned background embedding, needed by ``config.background="learned"``)."""
        return cls(ZeroShotDetector(clip, rpn, config, cache=cache, background_embedding=background),
                   concept_library=concept_library)

    @classmethod
    def from_trex2(cls, model: Any, config: TRex2DetectConfig | None = None, *, cache: EmbeddingCache | None = None,
                   concept_library: Any = None, namer: RegionPromptCLIP | None = None,
                   namer_config: ZeroShotConfig | None = None) -> Detector:
        """A detector from a :class:`~regionprompt.trex2.model.TRex2` in memory.

        ``namer``: a RegionCLIP CLIP model (e.g. the region-text pretrained student) that names T-Rex2's
        boxes for text-only categories (:mod:`~regionprompt.detect.region_namer`), scored as by a zero-shot
        detector with ``namer_config``."""
        region_namer = None
        if namer is not None:
            region_namer = RegionNamer(ZeroShotDetector(namer, None, namer_config or NAMER_CONFIG, cache=cache))
        return cls(TRex2Engine(model, config, cache=cache, namer=region_namer), concept_library=concept_library)

    @property
    def kind(self) -> str:
        """``"regionclip-zeroshot"`` or ``"trex2"``."""
        return TREX2_KIND if isinstance(self.engine, TRex2Engine) else DETECTOR_KIND

    @property
    def runtime(self) -> str:
        """``"torch"``, or ``"onnxruntime"`` for an ONNX export loaded with onnxruntime."""
        return self.engine.runtime if isinstance(self.engine, TRex2Engine) else "torch"

    def reconfigure(self, **changes: Any) -> Detector:
        """The same models with some settings changed (fields of this detector kind's config; others
        are ignored, so one call can serve both kinds)."""
        if isinstance(self.engine, TRex2Engine):
            engine: ZeroShotDetector | TRex2Engine = self.engine.reconfigure(**changes)
        else:
            known = {f.name for f in fields(ZeroShotConfig)}
            config = replace(self.engine.config, **{k: v for k, v in changes.items() if k in known})
            engine = ZeroShotDetector(self.engine.model, self.engine.proposal_source, config,
                                      cache=self.engine.embedder.cache,
                                      background_embedding=self.engine.background_embedding)
        return Detector(engine, source=self.source, concept_library=self._concept_library)

    @classmethod
    def load(cls, source: str | os.PathLike = "default", *, device: str | torch.device = "cpu",
             cache: EmbeddingCache | str | os.PathLike | None = "default", concept_library: Any = None,
             runtime: str = "auto", threads: int | None = None) -> Detector:
        """Load a detector folder (module docstring), or ``"default"``: the one shipped with the package.

        Args:
            source: ``"default"``, a detector folder, or an ONNX export folder (``regionprompt export``).
            device: where the models run (``"cpu"``, ``"cuda"``, ``"cuda:N"``).
            cache: text-embedding cache: ``"default"`` (``~/.cache/regionprompt``), a file path, an
                :class:`EmbeddingCache`, or ``None`` (no cache).
            concept_library: see the class docstring.
            runtime: ``"auto"`` (onnxruntime for an export folder, torch otherwise), ``"torch"`` (an export
                folder's torch copy) or ``"onnx"`` (refuse a folder that is not an export).
            threads: onnxruntime's threads (default: ``torch.get_num_threads()``).
        Raises:
            CheckpointError: the folder, its ``detector.json`` or a model inside is missing or invalid.
            RegionPromptError: an unknown device, or a GPU that torch does not see; an export folder with
                ``runtime`` "auto" / "onnx" and no onnxruntime installed.
        """
        device = resolve_device(device)  # an unusable device is refused before any weights are read
        if runtime not in RUNTIMES:
            raise RegionPromptError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if str(source) == "default":
            folder = default_model_dir()
            if not (folder / DETECTOR_FILE).is_file():
                raise CheckpointError(
                    f"the default model is not installed (no {DETECTOR_FILE} in {folder}): this copy of RegionPrompt "
                    "ships without trained weights. Build a detector folder with "
                    "`regionprompt train default` once it exists, or save one with Detector.from_models(...).save(DIR), "
                    "then load it with Detector.load(DIR) / --model DIR"
                )
        else:
            folder = Path(source)
        if cache == "default":
            cache = EmbeddingCache()
        elif isinstance(cache, (str, os.PathLike)):
            cache = EmbeddingCache(cache)
        engine: ZeroShotDetector | TRex2Engine
        if runtime == "onnx" and (_is_trex2_model_folder(folder) or read_detector_header(folder).get(ONNX_KEY) is None):
            raise CheckpointError(f"{folder}: not an ONNX export (make one with `regionprompt export {folder} "
                                  "--format onnx --out DIR`)")
        if _is_trex2_model_folder(folder):
            # A bare T-Rex2 model folder (what `train detector --arch trex2` writes): default settings.
            from regionprompt.trex2.model import TRex2

            engine = TRex2Engine(TRex2.load(folder).to(device), cache=cache)
        elif (header := read_detector_header(folder))["kind"] == TREX2_KIND:
            model, trex2_config = read_trex2_folder(folder, header)
            namer = read_namer(folder, header, device=device, cache=cache)
            engine = TRex2Engine(model.to(device), trex2_config, cache=cache, namer=namer)
            if header.get(ONNX_KEY) is not None and runtime != "torch":
                from regionprompt.detect.onnx_runtime import onnx_engine

                engine = onnx_engine(engine, _sub_folder(folder, header, ONNX_KEY), threads=threads)
        else:
            clip, rpn, config, background = _read_regionclip_folder(folder)
            clip = clip.to(device)
            if isinstance(rpn, torch.nn.Module):
                rpn = rpn.to(device)
            engine = ZeroShotDetector(clip, rpn, config, cache=cache, background_embedding=background)
        return cls(engine, source=str(folder), concept_library=concept_library)

    def save(self, directory: str | os.PathLike, *, compact: bool = False) -> Path:
        """Write this detector as a folder :meth:`load` reads; returns ``directory``.

        ``compact`` (T-Rex2 detectors): float16 weights with a row-sparse token embedding -- the form the
        shipped default model uses; the model hash then changes, so make concepts after reloading.
        """
        directory = Path(directory)
        if isinstance(self.engine, TRex2Engine):
            header = {**self.engine.save(directory, compact=compact), "format_version": FORMAT_VERSION}
            atomic_write_text(directory / DETECTOR_FILE, dump_json(header, indent=2))
            self.source = str(directory)
            return directory
        self.engine.model.save(directory / "clip")
        rpn = self.engine.proposal_source
        if rpn is not None:
            if not hasattr(rpn, "save"):
                raise RegionPromptError(f"cannot save proposal source {type(rpn).__name__}: it has no save()")
            rpn.save(directory / "rpn")
        header = {"kind": DETECTOR_KIND, "format_version": FORMAT_VERSION, "clip": "clip",
                  "rpn": "rpn" if rpn is not None else None, "config": self.engine.config.to_dict()}
        background = self.engine.background_embedding
        if background is not None:
            # Only detectors that have one name it: other folders stay exactly as before.
            tensors = {BACKGROUND_KEY: background.detach().float().cpu().contiguous()}
            atomic_write(directory / BACKGROUND_FILE, lambda tmp: save_file(tensors, tmp))
            header["background"] = BACKGROUND_FILE
        atomic_write_text(directory / DETECTOR_FILE, dump_json(header, indent=2))
        self.source = str(directory)
        return directory

    # ---- devices ---------------------------------------------------------------------------------

    def _modules(self) -> list[torch.nn.Module]:
        """Every model the engine runs: the detector's own, a T-Rex2 region namer, a RegionCLIP RPN."""
        modules = [self.engine.model]
        if isinstance(self.engine, TRex2Engine):
            if self.engine.namer is not None:
                modules.append(self.engine.namer.model)
        elif isinstance(self.engine.proposal_source, torch.nn.Module):
            modules.append(self.engine.proposal_source)
        return modules

    @property
    def device(self) -> torch.device:
        """Where the models are (``Detector.load(device=)``, :meth:`to`, ``predict(device=)``)."""
        return next(self.engine.model.parameters()).device

    def to(self, device: str | torch.device) -> Detector:
        """Move every model to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``) in place; returns ``self``.

        Raises:
            RegionPromptError: an unknown device, or a GPU that torch does not see on this machine.
        """
        target = resolve_device(device)
        for module in self._modules():
            module.to(target)
        if isinstance(self.engine, ZeroShotDetector) and self.engine.background_embedding is not None:
            self.engine.background_embedding = self.engine.background_embedding.to(target)
        return self

    # ---- properties ------------------------------------------------------------------------------

    @property
    def model_hash(self) -> str:
        """sha256 of the weights every embedding depends on (concepts carry it)."""
        return self.engine.model_hash

    @property
    def config(self) -> ZeroShotConfig | TRex2DetectConfig:
        return self.engine.config

    @property
    def default_threshold(self) -> float:
        """The score threshold ``predict`` uses when given none (the model's ``score_threshold``)."""
        return float(self.engine.config.score_threshold)

    # ---- prompts ---------------------------------------------------------------------------------

    def _library(self) -> Any:
        if self._concept_library is None:
            from regionprompt.concepts.library import ConceptLibrary

            self._concept_library = ConceptLibrary()
        return self._concept_library

    def resolve_concepts(self, concepts: Sequence[PromptConcept | str] | PromptConcept | str | None) -> list[PromptConcept]:
        """Concept objects and names (looked up in the concept library) -> concepts of this model.

        Raises:
            PromptError: an unknown name, or a concept made by another model.
        """
        if concepts is None:
            return []
        if not isinstance(concepts, (str, PromptConcept, Iterable)) or isinstance(concepts, (bytes, Mapping)):
            raise PromptError(f"concepts must be PromptConcept objects or names, got {type(concepts).__name__}")
        items = [concepts] if isinstance(concepts, (str, PromptConcept)) else list(concepts)
        out = []
        for item in items:
            if isinstance(item, str):
                from regionprompt.concepts.library import ConceptNotFoundError

                try:
                    item = self._library().get(item)
                except ConceptNotFoundError as exc:
                    raise PromptError(f"unknown concept {item!r}: {exc}") from None
            if not isinstance(item, PromptConcept):
                raise PromptError(f"concepts must be PromptConcept objects or names, got {type(item).__name__}")
            item.check_model(self.model_hash)
            out.append(item)
        return out

    def make_concept(self, name: str, *, text: str | Sequence[str] | None = None, boxes: Any = None,
                     points: Any = None, prompt_images: Any = None, negatives: Any = None) -> PromptConcept:
        """A reusable concept ``name`` from text and/or exemplars drawn on ``prompt_images``: every
        phrase, box and point is part of that one category; negatives apply to it."""
        if not isinstance(name, str) or not name.strip():
            raise PromptError(f"a concept needs a non-empty string name, got {name!r:.80}")
        check_text_length(name, "concept name")
        prompts = build_prompts(text, boxes=boxes, points=points, prompt_images=prompt_images, negatives=negatives,
                                visual_label=name)
        if not any(not p.negative for p in prompts):
            raise PromptError(f"concept {name!r}: give at least one phrase, box or point")
        labelled = [replace(p, label=None) if p.negative else replace(p, label=name) for p in prompts]
        return self.engine.make_concepts(group_prompts(labelled))[0]

    def make_concepts(self, text: str | Sequence[str | TextPrompt] | None = None, *, boxes: Any = None,
                      points: Any = None, prompt_images: Any = None, negatives: Any = None,
                      visual_label: str = DEFAULT_VISUAL_LABEL,
                      max_prompts: int | None = MAX_PROMPTS) -> list[PromptConcept]:
        """One concept per category of the prompts (arguments as in :meth:`predict`; exemplars must be
        drawn on ``prompt_images``). Embeds the prompts once for any number of later ``predict`` calls.

        ``max_prompts``: as for :meth:`predict`; pass ``None`` to embed a whole vocabulary (an evaluation's
        category names) in one call, knowingly."""
        prompts = build_prompts(text, boxes=boxes, points=points, prompt_images=prompt_images, negatives=negatives,
                                visual_label=visual_label, max_prompts=max_prompts)
        return self.engine.make_concepts(group_prompts(prompts))

    # ---- inference -------------------------------------------------------------------------------

    def predict(self, images: Any, text: str | Sequence[str | TextPrompt] | None = None, *, boxes: Any = None,
                points: Any = None, prompt_images: Any = None, negatives: Any = None,
                concepts: Sequence[PromptConcept | str] | PromptConcept | str | None = None,
                proposals: Sequence[Any] | None = None, threshold: float | None = None,
                visual_label: str = DEFAULT_VISUAL_LABEL, one_label_per_box: bool = False,
                conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                candidate_labels: str | Sequence[str] | None = None,
                device: str | torch.device | None = None) -> list[Detections]:
        """Detect what the prompts describe.

        Args:
            images: one image or a list (paths, bytes, PIL, numpy, tensors: anything
                :func:`~regionprompt.images.load_image` takes; a 4-d array/tensor is a batch).
            text: ``"dog, red apple"`` (split at commas, semicolons, periods, newlines) or a list of phrases;
                each phrase is a category.
            boxes: exemplar boxes ``(x1, y1, x2, y2)`` in pixels of the image they were drawn on, or
                mappings ``{"box": [...], "label": "apple", "image": ...}``; a labelled box joins the text
                category of that name (a mixed prompt).
            points: exemplar clicks ``(x, y)`` (or ``{"point": [...], "label": ...}``).
            prompt_images: the image the boxes and points were drawn on (one for all, or one per prompt,
                boxes first); ``None``: each searched image itself.
            negatives: what not to detect: phrases, boxes or points (drawn where the exemplars are);
                unlabelled negatives apply to every category.
            concepts: saved :class:`PromptConcept` s or names in the concept library.
            proposals: boxes to classify instead of the proposal network's, one ``(K, 4)`` per image.
            threshold: minimum score in [0, 1]; ``None``: :attr:`default_threshold` (the model's own).
            visual_label: the category name of unlabelled boxes and points.
            one_label_per_box: class-agnostic NMS (IoU above the detector's ``nms_iou``): an object found
                under several prompts keeps only its best label (what auto-labelling wants).
            conf, iou, max_det: the names ultralytics uses: ``conf`` is ``threshold``; ``iou`` and
                ``max_det`` set this call's ``nms_iou`` and ``max_detections`` (:meth:`reconfigure`).
            candidate_labels: the name Hugging Face's zero-shot detection pipeline uses for ``text``.
            device: move the models there first (ultralytics' habit; see :meth:`to`); ``None``: where they are.
        Returns:
            One :class:`Detections` per image, in order.
        Raises:
            RegionPromptError: ``device`` unknown or not on this machine.
            PromptError: no prompt, an empty phrase, a box outside its image, an unknown concept or one
                made by another model, an argument of the wrong type, more than
                :data:`~regionprompt.prompts.MAX_PROMPTS` phrases + boxes + points + negatives (saved
                concepts are not counted: they are embedded already) or a phrase longer than
                :data:`~regionprompt.prompts.MAX_TEXT_LENGTH` characters.
        """
        if device is not None and resolve_device(device) != self.device:
            self.to(device)
        threshold = _alias(threshold, conf, "threshold", "conf")
        text = _alias(text, candidate_labels, "text", "candidate_labels")
        changes = {key: value for key, value in (("nms_iou", iou), ("max_detections", max_det)) if value is not None}
        detector = self.reconfigure(**changes) if changes else self
        threshold = self.default_threshold if threshold is None else check_threshold(threshold)
        prompts = build_prompts(text, boxes=boxes, points=points, prompt_images=prompt_images, negatives=negatives,
                                visual_label=visual_label)
        resolved = self.resolve_concepts(concepts)
        positives = [p for p in prompts if not p.negative]
        if not positives and not resolved and not prompts:
            raise PromptError("the prompt list is empty: pass at least one text phrase, box, point or concept")
        if not positives and len(prompts):
            raise PromptError("negative prompts need a text, box or point category to apply to "
                              "(a concept carries its own negatives)")
        if not isinstance(one_label_per_box, bool):
            raise PromptError(f"one_label_per_box must be True or False, got {one_label_per_box!r}")
        categories = group_prompts(prompts) if positives else []
        found = detector.engine.detect(_as_image_list(images), categories, resolved, proposals=proposals,
                                       threshold=threshold)
        if one_label_per_box:
            found = [d.nms(detector.config.nms_iou, per_class=False) for d in found]
        return found

    __call__ = predict


def _is_trex2_model_folder(folder: Path) -> bool:
    """A folder holding a T-Rex2 ``card.json`` and no ``detector.json``."""
    from regionprompt.model_dir import CARD_FILE

    if (folder / DETECTOR_FILE).exists() or not (folder / CARD_FILE).is_file():
        return False
    try:
        card = loads_json((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and "num_queries" in card and "clip" in card


def read_detector_header(folder: Path) -> dict[str, Any]:
    """The checked ``detector.json`` of a detector folder.

    Raises:
        CheckpointError: no folder, no or invalid JSON, an unknown kind or format version.
    """
    header_path = folder / DETECTOR_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such detector folder (expected {DETECTOR_FILE} and the model folders); "
                              "give 'default' (the shipped model) or a detector folder such as runs/trex2/model: "
                              "models are read from local folders, names such as 'yolov8n' are not downloaded")
    if not header_path.is_file():
        raise CheckpointError(f"{folder}: not a detector folder (no {DETECTOR_FILE})")
    try:
        header = loads_json(header_path.read_text(encoding="utf-8"))  # deep nesting, huge ints: invalid JSON
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{header_path}: not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("kind") not in (DETECTOR_KIND, TREX2_KIND):
        kind = header.get("kind") if isinstance(header, dict) else None
        raise CheckpointError(f"{header_path}: detector kind {kind!r} is not supported "
                              f"(expected {DETECTOR_KIND!r} or {TREX2_KIND!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{header_path}: format_version {header.get('format_version')!r} is not supported "
                              f"(this RegionPrompt reads {FORMAT_VERSION})")
    return header


def _sub_folder(folder: Path, header: Mapping[str, Any], key: str) -> Path:
    name = header.get(key)
    if not isinstance(name, str) or not is_safe_relative(name):
        raise CheckpointError(f"{folder / DETECTOR_FILE}: {key!r} must name a sub-folder, got {name!r}")
    return folder / name


def read_trex2_folder(folder: Path, header: Mapping[str, Any]) -> tuple[Any, TRex2DetectConfig]:
    """The T-Rex2 model and detection config of a ``"trex2"`` detector folder."""
    from regionprompt.trex2.model import TRex2

    try:
        config = TRex2DetectConfig.from_dict(dict(header.get("config") or {}))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder / DETECTOR_FILE}: {exc}") from None
    return TRex2.load(_sub_folder(folder, header, "model")), config


def read_namer(folder: Path, header: Mapping[str, Any], *, device: str | torch.device = "cpu",
               cache: EmbeddingCache | None = None) -> RegionNamer | None:
    """The region namer of a ``"trex2"`` detector folder (``"namer"`` + ``"namer_config"``), or ``None``."""
    if header.get("namer") is None:
        return None
    try:
        config = ZeroShotConfig.from_dict(dict(header.get("namer_config") or {}))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder / DETECTOR_FILE}: namer_config: {exc}") from None
    clip = RegionPromptCLIP.load(_sub_folder(folder, header, "namer")).to(device)
    return RegionNamer(ZeroShotDetector(clip, None, config, cache=cache))


def read_detector_folder(folder: Path) -> tuple[RegionPromptCLIP, ProposalSource | None, ZeroShotConfig]:
    """The CLIP model, proposal network (or ``None``) and config of a RegionCLIP detector folder
    (its learned background embedding, if any, is read and checked too; :meth:`Detector.load` uses it).

    Raises:
        CheckpointError: anything missing or malformed, naming the file.
    """
    clip, rpn, config, _ = _read_regionclip_folder(folder)
    return clip, rpn, config


def _read_regionclip_folder(
    folder: Path,
) -> tuple[RegionPromptCLIP, ProposalSource | None, ZeroShotConfig, torch.Tensor | None]:
    """Everything a RegionCLIP detector folder holds: CLIP, proposal network, config, learned background."""
    header_path = folder / DETECTOR_FILE
    header = read_detector_header(folder)
    if header["kind"] != DETECTOR_KIND:
        raise CheckpointError(f"{header_path}: a {header['kind']!r} detector, not {DETECTOR_KIND!r}")
    try:
        config = ZeroShotConfig.from_dict(dict(header.get("config") or {}))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{header_path}: {exc}") from None
    if config.background == LEARNED_BACKGROUND and header.get("background") is None:
        # Checked before loading the models: the folder is unusable as configured, whatever they hold.
        raise CheckpointError(
            f"{header_path}: config background 'learned' needs a learned background embedding, but the file names "
            f"none (expected \"background\": \"{BACKGROUND_FILE}\", written by `regionprompt train detector --arch "
            "regionclip`); set the config's background to 'auto', 'text' or 'none' to use this folder without one"
        )
    from regionprompt.vl.vocabulary import load_clip_folder

    # A RegionPromptCLIP folder, or an image tower with a fixed vocabulary (imported RegionCLIP releases).
    clip = load_clip_folder(_sub_folder(folder, header, "clip"))
    rpn = None
    if header.get("rpn") is not None:
        from regionprompt.detect.detectron2_rpn import load_proposal_folder

        # Our ProposalNetwork, or a detectron2 RPN (card kind "detectron2-rpn").
        rpn = load_proposal_folder(_sub_folder(folder, header, "rpn"))
    background = None
    name = header.get("background")
    if name is not None:
        if not isinstance(name, str) or not is_safe_relative(name):
            raise CheckpointError(f"{header_path}: 'background' must name a file inside the folder, got {name!r}")
        background = _read_background(folder / name, clip.embed_dim)
    return clip, rpn, config, background


def _read_background(path: Path, dim: int) -> torch.Tensor:
    """The ``(dim,)`` float32 tensor ``"background"`` of a safetensors file, checked."""
    if not path.is_file():
        raise CheckpointError(f"{path}: the learned background embedding named in {DETECTOR_FILE} is missing")
    tensors = read_weights(path)
    embedding = tensors.get(BACKGROUND_KEY)
    if embedding is None or embedding.shape != (dim,) or not embedding.is_floating_point():
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise CheckpointError(f"{path}: expected one float tensor {BACKGROUND_KEY!r} of shape ({dim},) "
                              f"(the CLIP model's embedding size), found {found}")
    if not torch.isfinite(embedding).all():
        raise CheckpointError(f"{path}: the learned background embedding holds inf or NaN")
    return embedding.float()


__all__ = ["BACKGROUND_FILE", "DETECTOR_FILE", "DETECTOR_KIND", "TREX2_KIND", "Detector", "build_prompts",
           "default_model_dir", "read_detector_folder", "read_detector_header",
           "read_trex2_folder"]
