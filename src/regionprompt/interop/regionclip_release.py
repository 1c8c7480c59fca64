"""Read RegionCLIP's released checkpoints (microsoft/RegionCLIP) from local files, without detectron2.

What the files hold (names from RegionCLIP's ``CLIPFastRCNN`` / ``PretrainFastRCNN`` modules; every file is
a ``torch.save`` of a state dict, possibly wrapped as detectron2's ``{"model": state_dict, ...}``):

=====================================  ==========================================================================
key prefix                             meaning, and where it goes here
=====================================  ==========================================================================
``backbone.*``                         the student CLIP ModifiedResNet (RN50: stem ``conv1..3``/``bn1..3``,
                                       ``layer1..layer4``, ``attnpool``), FrozenBN buffers (weight, bias,
                                       running_mean, running_var). C4: ``layer4`` (res5) and ``attnpool`` are run
                                       per region by the RoI head. -> ``visual.*`` of the image tower
``teacher_backbone.*``                 the same layout, the frozen CLIP teacher of pretraining (``--teacher``)
``lang_encoder.*``                     (pretraining checkpoints) OpenAI's CLIP text transformer: ``transformer.*``,
                                       ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
                                       ``text_projection`` -> the same keys of a full CLIP (open vocabulary)
``roi_heads.box_predictor.cls_score``  ``(C, D)`` class text embeddings of the training vocabulary (no bias)
``...box_predictor.test_cls_score``    ``(C', D)`` open-set test vocabulary, when it was configured
``...box_predictor.cls_bg_score``      ``(1, D)`` learned background embedding (``normalize(r) . w / T``) ->
                                       ``background.safetensors`` ("learned" background)
``...box_predictor.bbox_pred``         ``(4, D)`` class-agnostic box regression: not used (the detector
                                       keeps the proposals' boxes, RegionCLIP's ``NO_BOX_DELTA`` inference)
``offline_backbone.*``                 the detectron2 R50-FPN (``bottom_up.*``, ``fpn_*``) or R50-C4 backbone of
``offline_proposal_generator.*``       the offline RPN and its ``rpn_head`` -> :class:`Detectron2RPN`
=====================================  ==========================================================================

An ``rpn_*.pth`` release is a detectron2 checkpoint with ``backbone.*`` + ``proposal_generator.*`` (RegionCLIP
renames them to ``offline_*`` when it loads ``BB_RPN_WEIGHTS``). A concept-embedding file
(``lvis_1203_cls_emb.pth``, ``coco_65_cls_emb.pth``...) is one ``(N, D)`` float tensor (D = 1024 for RN50,
640 for RN50x4), rows in the order of the class names.

Files are read by :func:`~regionprompt.interop.torch_files.load_weights_only` (``torch.load(weights_only=True)``);
numpy arrays (detectron2 pickles) are allowed by naming only numpy's array-rebuilding functions, and converted
to tensors. Anything else needing a Python object is refused with a
:class:`~regionprompt.errors.CheckpointError` that lists the objects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regionprompt.detect.detectron2_rpn import Detectron2RPN
from regionprompt.detect.regionclip.zeroshot import LEARNED_BACKGROUND, ZeroShotConfig
from regionprompt.errors import CheckpointError, RegionPromptError
from regionprompt.interop.checkpoints import count_blocks, infer_card
from regionprompt.interop.detectron2 import rpn_from_state
from regionprompt.interop.torch_files import load_weights_only
from regionprompt.logging_utils import get_logger
from regionprompt.vl.cards import ModelCard, ModelCardError, VisionCard
from regionprompt.vl.clip_model import CLIP_TEXT_KEYS, RegionPromptCLIP, check_state_dict
from regionprompt.vl.vocabulary import VocabularyCLIP, VocabularyTextEncoder

LOG = get_logger("interop.regionclip_release")

STUDENT = "backbone."
TEACHER = "teacher_backbone."
TEXT = "lang_encoder."
PREDICTOR = "roi_heads.box_predictor."
OFFLINE_BACKBONE = "offline_backbone."
OFFLINE_RPN = "offline_proposal_generator."
#: RegionCLIP's classification temperature (MODEL.CLIP.CLSS_TEMP) and test shorter side (INPUT.MIN_SIZE_TEST).
REGIONCLIP_TEMPERATURE = 0.01
REGIONCLIP_INPUT_SIZE = 800


# ---- reading files -------------------------------------------------------------------------------


def _as_tensor(value: Any, key: str, path: Path) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise CheckpointError(f"{path}: entry {key!r} is a numpy object array, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    return None  # ints, strings... (detectron2's "iteration", "__author__"): not weights


def read_release_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a RegionCLIP / detectron2 checkpoint by key: unwrapped from ``{"model": ...}`` (or
    ``{"state_dict": ...}``), numpy arrays as tensors, DistributedDataParallel's ``module.`` dropped."""
    path = Path(path)
    obj = load_weights_only(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: holds a single {tuple(obj.shape)} tensor (a concept-embedding file?), "
                              "not a checkpoint")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state = {}
    for key, value in obj.items():
        tensor = _as_tensor(value, str(key), path)
        if tensor is not None:
            state[str(key)] = tensor
    if not state:
        raise CheckpointError(f"{path}: contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_concept_embeddings(path: str | Path) -> torch.Tensor:
    """A concept-embedding file: ``(N, D)`` float32 (a bare tensor, or a mapping holding exactly one 2-D
    tensor). Raises :class:`CheckpointError` for anything else."""
    path = Path(path)
    obj = load_weights_only(path)
    if isinstance(obj, Mapping):
        found = [(k, t) for k, v in obj.items() if (t := _as_tensor(v, str(k), path)) is not None and t.ndim == 2]
        if len(found) != 1:
            raise CheckpointError(f"{path}: expected one (N, D) tensor of text embeddings, found a mapping with "
                                  f"{len(obj)} entries (keys: {', '.join(map(str, list(obj)[:5]))})")
        obj = found[0][1]
    tensor = _as_tensor(obj, "embeddings", path) if not isinstance(obj, torch.Tensor) else obj
    if tensor is None or tensor.ndim != 2 or not tensor.is_floating_point():
        shape = tuple(tensor.shape) if tensor is not None else type(obj).__name__
        raise CheckpointError(f"{path}: expected an (N, D) float tensor of text embeddings, got {shape}")
    return tensor.float()


def read_names(path: str | Path) -> list[str]:
    """Class names, in embedding-row order, from ``.txt`` (one per line, blank lines skipped) or ``.json``:
    a list of strings, a list of objects with ``name`` (sorted by ``id`` when every object has one, as
    COCO and LVIS category lists), or an object with such a ``categories`` list.

    Raises:
        RegionPromptError: unreadable file, or no names in it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegionPromptError(f"cannot read the names file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RegionPromptError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, Mapping):
            data = data.get("categories")
        if not isinstance(data, list):
            raise RegionPromptError(f"{path}: expected a JSON list of names, of objects with 'name', or an object "
                                    "with a 'categories' list")
        if data and all(isinstance(d, Mapping) for d in data):
            if not all(isinstance(d.get("name"), str) for d in data):
                raise RegionPromptError(f"{path}: every category object needs a string 'name'")
            if all(isinstance(d.get("id"), int) for d in data):
                data = sorted(data, key=lambda d: d["id"])
            names = [d["name"] for d in data]
        elif all(isinstance(d, str) for d in data):
            names = list(data)
        else:
            raise RegionPromptError(f"{path}: mixes names and other values")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RegionPromptError(f"{path}: holds no names")
    return names


# ---- the CLIP image tower ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseContents:
    """What a RegionCLIP checkpoint holds (key counts per part), as :func:`describe_release` reads it."""

    student: int  # backbone.* tensors (CLIP ModifiedResNet)
    teacher: int  # teacher_backbone.*
    text: int  # lang_encoder.* in OpenAI's text-tower layout
    box_predictor: tuple[str, ...]  # names under roi_heads.box_predictor (cls_score, cls_bg_score, ...)
    offline_rpn: int  # offline_backbone.* + offline_proposal_generator.*
    ignored: tuple[str, ...] = field(default_factory=tuple)  # other top-level prefixes (not used)


def describe_release(state: Mapping[str, torch.Tensor]) -> ReleaseContents:
    """Key counts of each part of a RegionCLIP checkpoint (module docstring)."""
    def count(prefix: str) -> int:
        return sum(1 for k in state if k.startswith(prefix))

    text_keys = [k for k in state if k.startswith(TEXT) and k[len(TEXT):].startswith(CLIP_TEXT_KEYS)]
    predictor = sorted({k[len(PREDICTOR):].split(".")[0] for k in state if k.startswith(PREDICTOR)})
    known = (STUDENT, TEACHER, TEXT, PREDICTOR, OFFLINE_BACKBONE, OFFLINE_RPN)
    ignored = sorted({k.split(".")[0] for k in state if not k.startswith(known)})
    return ReleaseContents(count(STUDENT), count(TEACHER), len(text_keys), tuple(predictor),
                           count(OFFLINE_BACKBONE) + count(OFFLINE_RPN), tuple(ignored))


def _check_is_regionclip(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> None:
    if f"{prefix}conv1.weight" in state and f"{prefix}layer1.0.conv1.weight" in state:
        if f"{prefix}attnpool.c_proj.weight" not in state:
            raise CheckpointError(f"{source}: the CLIP backbone {prefix}* has no attention pool ({prefix}attnpool.*), "
                                  "which region embeddings need (a checkpoint trained without the CLIP text classifier?)")
        return
    if prefix == TEACHER and any(k.startswith(STUDENT) for k in state):
        raise CheckpointError(f"{source}: no teacher copy (teacher_backbone.*) in this checkpoint: only RegionCLIP "
                              "pretraining checkpoints carry one; drop --teacher to import the student backbone.*")
    if "visual.conv1.weight" in state or "visual.proj" in state:
        raise CheckpointError(f"{source}: an OpenAI/open_clip CLIP state dict (visual.*), not a RegionCLIP checkpoint; "
                              "load it with regionprompt.interop.checkpoints.load_checkpoint")
    if "backbone.bottom_up.stem.conv1.weight" in state or "backbone.stem.conv1.weight" in state:
        raise CheckpointError(f"{source}: a detectron2 ResNet RPN/detector checkpoint (backbone.*stem.*), not a "
                              "RegionCLIP CLIP backbone; give it as --rpn")
    sample = ", ".join(sorted(state)[:4])
    raise CheckpointError(f"{source}: not a RegionCLIP checkpoint: no CLIP ModifiedResNet under {prefix}* "
                          f"(expected {prefix}conv1.weight, {prefix}layer1.0.conv1.weight; keys start: {sample} ...)")


def image_tower_state(state: Mapping[str, torch.Tensor], source: str, *, teacher: bool = False) -> dict[str, torch.Tensor]:
    """The CLIP ModifiedResNet of a RegionCLIP checkpoint as ``visual.*`` keys (OpenAI/open_clip layout).

    ``backbone.X`` (or ``teacher_backbone.X``) becomes ``visual.X``: RegionCLIP kept CLIP's module names and
    only swapped BatchNorm for FrozenBN, whose four buffers are BatchNorm's; the step counters BatchNorm
    also has are added as zeros. Floating tensors become float32.
    """
    prefix = TEACHER if teacher else STUDENT
    _check_is_regionclip(state, prefix, source)
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            out["visual." + key[len(prefix):]] = value.float() if value.is_floating_point() else value
    for key in list(out):
        if key.endswith(".running_var"):  # every FrozenBN of the tower
            out[key[: -len("running_var")] + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return out


def vision_card(visual: Mapping[str, torch.Tensor], *, name: str, source: str) -> ModelCard:
    """The :class:`ModelCard` (image side) of a ``visual.*`` ModifiedResNet, from tensor shapes: blocks per
    stage, stem width, attention-pool grid (input size / 32) and output (joint embedding) dimension."""
    try:
        pos = visual["visual.attnpool.positional_embedding"]
        grid = round((pos.shape[0] - 1) ** 0.5)
        if grid * grid + 1 != pos.shape[0]:
            raise CheckpointError(f"{source}: attnpool.positional_embedding has {pos.shape[0]} rows, not 1 + a square")
        vision = VisionCard(
            image_size=grid * 32,
            width=int(visual["visual.layer1.0.conv1.weight"].shape[0]),
            layers=tuple(count_blocks(visual, f"visual.layer{b}.") for b in (1, 2, 3, 4)),  # type: ignore[arg-type]
        )
        embed_dim = int(visual["visual.attnpool.c_proj.weight"].shape[0])
        return ModelCard(name=name, embed_dim=embed_dim, vision=vision)
    except (KeyError, IndexError, ModelCardError) as exc:
        raise CheckpointError(f"{source}: cannot infer the CLIP image tower from its weights: {exc}") from None


def _load_visual(model: RegionPromptCLIP, visual: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    mismatched = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} expected"
                  for k, v in visual.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in visual]
    unexpected = [k for k in visual if k not in expected]
    if mismatched or missing or unexpected:
        raise CheckpointError(f"{source}: the CLIP backbone does not match the inferred architecture: "
                              f"{mismatched[:2]} missing {missing[:3]} unexpected {unexpected[:3]}")
    model.load_state_dict(dict(visual), strict=False)


def text_tower_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``lang_encoder.*`` keys in OpenAI's text-tower layout with the prefix dropped (empty if none)."""
    return {k[len(TEXT):]: (v.float() if v.is_floating_point() else v) for k, v in state.items()
            if k.startswith(TEXT) and k[len(TEXT):].startswith(CLIP_TEXT_KEYS)}


# ---- the offline RPN -----------------------------------------------------------------------------


def offline_rpn_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``offline_backbone.*`` / ``offline_proposal_generator.*`` as detectron2's ``backbone.*`` /
    ``proposal_generator.*`` (the inverse of RegionCLIP's renaming of ``BB_RPN_WEIGHTS``); empty if none."""
    out = {}
    for key, value in state.items():
        if key.startswith(OFFLINE_BACKBONE):
            out["backbone." + key[len(OFFLINE_BACKBONE):]] = value
        elif key.startswith(OFFLINE_RPN):
            out["proposal_generator." + key[len(OFFLINE_RPN):]] = value
    return out


def read_rpn(path: str | Path, **overrides: Any) -> Detectron2RPN:
    """A detectron2 RPN from an ``rpn_*.pth`` release (``backbone.*`` + ``proposal_generator.*``) or from the
    ``offline_*`` keys of a RegionCLIP checkpoint; ``overrides`` as :func:`~regionprompt.interop.detectron2.card_from_state`."""
    state = read_release_state(path)
    offline = offline_rpn_state(state)
    return rpn_from_state(offline or state, str(path), **overrides)


# ---- the import ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedRegionCLIP:
    """What :func:`import_regionclip` built, for a detector folder (``Detector.from_models``)."""

    clip: RegionPromptCLIP  # a VocabularyCLIP (fixed vocabulary) or a RegionPromptCLIP (lang_encoder text)
    rpn: Detectron2RPN | None
    config: ZeroShotConfig
    background: torch.Tensor  # (D,): cls_bg_score of the box predictor, or zeros (RegionCLIP zero-shot)
    text_source: str  # where the text side came from (a file, or "lang_encoder.*", or the box predictor)
    rpn_source: str | None
    contents: ReleaseContents


def _vocabulary_from_predictor(state: Mapping[str, torch.Tensor], names: Sequence[str], names_file: str,
                               source: str) -> tuple[torch.Tensor, str]:
    """``(len(names), D)`` rows of the box predictor's class embeddings that fit ``names`` (open-set test
    vocabulary first), and where they came from."""
    found = []
    for key in ("test_cls_score.weight", "cls_score.weight"):
        tensor = state.get(PREDICTOR + key)
        if tensor is not None:
            if tensor.ndim == 2 and tensor.shape[0] == len(names):
                return tensor.float(), f"{source} ({PREDICTOR}{key})"
            found.append(f"{PREDICTOR}{key} has {tensor.shape[0]} rows")
    if not found:
        raise CheckpointError(f"{source}: no text side: the checkpoint has neither a CLIP text encoder (lang_encoder.*) "
                              "nor class embeddings (roi_heads.box_predictor.cls_score); give --embeddings and --names")
    raise CheckpointError(f"{source}: {len(names)} names in {names_file}, but {'; '.join(found)}; give the "
                          "concept-embedding file of these names with --embeddings")


def import_regionclip(checkpoint: str | Path, *, embeddings: str | Path | None = None,
                      names: str | Path | None = None, rpn: str | Path | None = None, use_rpn: bool = True,
                      teacher: bool = False, input_size: int = REGIONCLIP_INPUT_SIZE, max_proposals: int = 300,
                      rpn_overrides: Mapping[str, Any] | None = None) -> ImportedRegionCLIP:
    """Build the parts of a zero-shot detector from a RegionCLIP checkpoint.

    Args:
        checkpoint: ``regionclip_pretrained-*.pth`` / ``regionclip_finetuned-*.pth`` (or any file with the
            layout of the module docstring).
        embeddings: a concept-embedding file ``(N, D)``; with ``names`` it is the text side (a fixed
            vocabulary). ``None``: the checkpoint's ``lang_encoder.*`` (open vocabulary), else the box
            predictor's class embeddings with ``names``.
        names: the N class names (``.txt`` / ``.json``, see :func:`read_names`), in row order.
        rpn: an ``rpn_*.pth`` file; ``None``: the checkpoint's ``offline_*`` RPN.
        use_rpn: ``False``: no proposal network (the detector classifies boxes it is given).
        teacher: use ``teacher_backbone.*`` instead of the student ``backbone.*``.
        input_size: square side both networks see (RegionCLIP tests at a shorter side of 800).
        max_proposals: proposals per image.
        rpn_overrides: :class:`Detectron2RpnCard` fields to set (``nms_thresh``, ``stride_in_1x1``...).
    Raises:
        CheckpointError: wrong file kinds, embedding rows != names, embedding dim != the tower's output dim,
            no RPN where one is needed (each a one-line message naming the file).
        RegionPromptError: unreadable names file.
    """
    checkpoint = Path(checkpoint)
    source = str(checkpoint)
    state = read_release_state(checkpoint)
    contents = describe_release(state)
    visual = image_tower_state(state, source, teacher=teacher)
    name = checkpoint.stem + ("-teacher" if teacher else "")
    card = vision_card(visual, name=name, source=source).with_updates(training={
        "source": checkpoint.name, "weights": (TEACHER if teacher else STUDENT) + "*",
        "note": "imported by `regionprompt import-regionclip` from a RegionCLIP (microsoft/RegionCLIP) checkpoint"})
    dim = card.embed_dim
    if embeddings is not None and names is None:
        raise RegionPromptError("--embeddings needs --names: the class names of its rows, in order")

    text = text_tower_state(state)
    clip: RegionPromptCLIP
    if embeddings is None and names is None and text:
        # Pretraining checkpoints carry OpenAI's frozen CLIP text encoder: a full, open-vocabulary CLIP.
        full = {**visual, **text, "logit_scale": torch.tensor(math.log(1 / REGIONCLIP_TEMPERATURE))}
        inferred = infer_card(full, name=name, quick_gelu=True)  # OpenAI's text tower uses QuickGELU
        clip_card = inferred.with_updates(training=card.training)
        clip = RegionPromptCLIP.uninitialized(clip_card)
        clip.load_state_dict(check_state_dict(clip, full, source))
        text_source, templates = f"{source} (lang_encoder.*)", "regionclip81"
    else:
        if names is None:
            raise RegionPromptError(f"{source}: has no CLIP text encoder (lang_encoder.*): give the class names "
                                    "(--names) and their concept embeddings (--embeddings)")
        name_list = read_names(names)
        if embeddings is not None:
            rows = read_concept_embeddings(embeddings)
            text_source = vocab_source = str(embeddings)
            if rows.shape[0] != len(name_list):
                raise CheckpointError(f"{embeddings}: {rows.shape[0]} embedding rows, but {len(name_list)} names in "
                                      f"{names}: the names file must list the classes of the embedding file, in order")
        else:
            rows, text_source = _vocabulary_from_predictor(state, name_list, str(names), source)
            vocab_source = source
        if rows.shape[1] != dim:
            raise CheckpointError(
                f"{text_source}: embeddings of dimension {rows.shape[1]}, but the image tower of {checkpoint.name} "
                f"embeds regions in {dim} (attnpool.c_proj); use concept embeddings of the same CLIP architecture "
                "(RN50: 1024, RN50x4: 640)")
        vocabulary = VocabularyTextEncoder(name_list, rows, source=Path(vocab_source).name)
        clip = VocabularyCLIP(card, vocabulary, logit_scale=math.log(1 / REGIONCLIP_TEMPERATURE), initialize=False)
        templates = "single"  # the rows are finished class embeddings (already template-ensembled)
    _load_visual(clip, visual, source)
    clip.eval()

    background = torch.zeros(dim)
    bg = state.get(PREDICTOR + "cls_bg_score.weight")
    if bg is not None and not teacher:
        if tuple(bg.shape) != (1, dim):
            raise CheckpointError(f"{source}: {PREDICTOR}cls_bg_score.weight has shape {tuple(bg.shape)}, expected (1, {dim})")
        background = bg[0].float()

    detector_rpn, rpn_source = None, None
    if use_rpn:
        overrides = dict(rpn_overrides or {})
        overrides.setdefault("min_size_test", input_size)
        overrides.setdefault("max_size_test", max(input_size, round(input_size * 1333 / 800)))
        if rpn is not None:
            detector_rpn, rpn_source, rpn_file = read_rpn(rpn, **overrides), str(rpn), Path(rpn).name
        else:
            offline = offline_rpn_state(state)
            if not offline:
                raise CheckpointError(
                    f"{source}: holds no offline RPN (offline_backbone.*, offline_proposal_generator.*); give an "
                    "rpn_*.pth file with --rpn (e.g. rpn_lvis_866.pth), or import without a proposal network")
            detector_rpn = rpn_from_state(offline, source, **overrides)
            rpn_source, rpn_file = f"{source} (offline_*)", checkpoint.name
        detector_rpn.card = detector_rpn.card.with_updates(name=Path(rpn_file).stem, training={"source": rpn_file})

    config = ZeroShotConfig(temperature=REGIONCLIP_TEMPERATURE, background=LEARNED_BACKGROUND, background_texts=(),
                            templates=templates, input_size=input_size, max_proposals=max_proposals, nms_iou=0.5)
    LOG.info("imported %s: %s, text from %s, RPN from %s", source, card.vision, text_source, rpn_source)
    return ImportedRegionCLIP(clip, detector_rpn, config, background, text_source, rpn_source, contents)


def import_regionclip_detector(checkpoint: str | Path, out: str | Path, **kwargs: Any) -> tuple[Path, ImportedRegionCLIP]:
    """:func:`import_regionclip`, then write a detector folder ``out`` (``detector.json`` + ``clip/`` +
    ``rpn/`` + ``background.safetensors``) that ``Detector.load(out)`` reads."""
    from regionprompt.api import Detector

    parts = import_regionclip(checkpoint, **kwargs)
    detector = Detector.from_models(parts.clip, parts.rpn, parts.config, cache=None, background=parts.background)
    return detector.save(out), parts


__all__ = ["ImportedRegionCLIP", "ReleaseContents", "describe_release", "image_tower_state", "import_regionclip",
           "import_regionclip_detector", "load_weights_only", "offline_rpn_state", "read_concept_embeddings",
           "read_names", "read_release_state", "read_rpn", "text_tower_state", "vision_card"]
