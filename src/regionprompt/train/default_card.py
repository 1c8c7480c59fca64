"""The model card of a detector folder (``model_card.json``) and installing a folder as the package default.

``model_card.json`` sits beside ``detector.json`` (the loader ignores it) and records what a user needs to
trust the weights: architecture, the recipe of every training stage, wall time per stage, evaluation
numbers, the model hash (:attr:`regionprompt.api.Detector.model_hash`) and the sha256 of every weights file.

:func:`install_detector` copies a detector folder into ``regionprompt/models/default`` in the smallest
storage that keeps its outputs (:data:`STORAGES`): float16, with the CLIP token embedding cut to the tokens
of its training text when those texts are known (:mod:`regionprompt.vl.compact`). Both kinds of detector
folder install this way: a zero-shot RegionCLIP folder (``clip/`` + ``rpn/``) and a T-Rex2 folder
(``trex2/``, whose CLIP text side carries the token embedding). The model loaders (``load_checkpoint``
for CLIP, ``load_model_dir`` for the RPN and T-Rex2) verify the weights against the hash of the tensors
as stored and ``load_state_dict`` them into float32 modules, so a float16 file loads into an ordinary
float32 model. Each smaller storage is compared with the float32 original and the next larger one is
used when it drifts: image and prompt embedding cosines and proposal boxes for RegionCLIP; prompt
embedding cosines, detection scores and detection boxes for T-Rex2.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open

from regionprompt import __version__
from regionprompt.data.files import atomic_write_text, dump_json, file_sha256
from regionprompt.errors import CheckpointError
from regionprompt.images import load_image, to_tensor
from regionprompt.model_dir import (
    CARD_FILE,
    WEIGHTS_FILE,
    read_model_dir,
    save_model_dir,
)

MODEL_CARD_FILE = "model_card.json"
DETECTOR_FILE = "detector.json"
TREX2_KIND = "trex2"  # ``detector.json`` kind of a T-Rex2 folder (regionprompt.api.TREX2_KIND)
#: The model parts of a zero-shot RegionCLIP folder; their ``detector.json`` keys name the sub-folders.
MODEL_PARTS = ("clip", "rpn")
#: float16 copies must keep image and text embeddings this close (cosine) to the float32 original ...
MIN_EMBEDDING_COSINE = 0.999
#: ... and find the same proposals (mean best IoU of the float32 top proposals among the float16 ones).
MIN_PROPOSAL_IOU = 0.95
#: T-Rex2: the float32 top detections must be found again (mean best IoU among same-category float16 ones) ...
MIN_DETECTION_IOU = 0.95
#: ... with the same scores: no k-th best score of a category on an image may move more than this.
MAX_SCORE_DIFF = 0.02
#: ... or this, for a T-Rex2 detector with a region namer: its scores are sqrt(p * objectness), and the
#: square root magnifies the small float16 changes of a low objectness (d sqrt(o) = do / (2 sqrt(o))).
MAX_SCORE_DIFF_NAMED = 0.08
#: T-Rex2 check: the first this many check names are the text prompts (one search per name is enough to
#: exercise the text side, the query selection and the decoder).
TREX2_CHECK_NAMES = 5
#: Detections per image (and per category for the score comparison) that the T-Rex2 check compares.
TREX2_CHECK_TOP = 20


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def model_parts(header: Mapping[str, Any]) -> dict[str, str]:
    """``{part: sub-folder}`` of a detector folder from its ``detector.json``: ``clip`` (+ ``rpn``) for
    RegionCLIP, ``trex2`` for T-Rex2 (whose header names its folder under ``"model"``)."""
    if header.get("kind") == TREX2_KIND:
        parts = {"trex2": str(header["model"])}
        if header.get("namer") is not None:  # the RegionCLIP model naming text categories
            parts["namer"] = str(header["namer"])
        return parts
    return {part: str(header[part]) for part in MODEL_PARTS if header.get(part) is not None}


def hash_part(header: Mapping[str, Any]) -> str:
    """The part whose weights hash is the detector's model hash (:attr:`regionprompt.api.Detector.model_hash`)."""
    return "trex2" if header.get("kind") == TREX2_KIND else "clip"


def weights_summary(detector_dir: Path) -> dict[str, Any]:
    """Per model part: the weights file's sha256, size, dtype(s), parameter count and card weights hash."""
    header = read_json(detector_dir / DETECTOR_FILE)
    out: dict[str, Any] = {}
    for part, name in model_parts(header).items():
        folder = detector_dir / name
        path = folder / WEIGHTS_FILE
        dtypes: set[str] = set()
        count = 0
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                piece = handle.get_slice(key)
                dtypes.add(piece.get_dtype())
                shape = piece.get_shape()
                numel = 1
                for side in shape:
                    numel *= side
                count += numel
        out[part] = {"file": f"{name}/{WEIGHTS_FILE}", "sha256": file_sha256(path), "bytes": path.stat().st_size,
                     "dtypes": sorted(dtypes), "parameters": count,
                     "weights_hash": read_json(folder / CARD_FILE).get("weights_hash")}
    return out


def _architecture_only(card: Mapping[str, Any]) -> dict[str, Any]:
    """A model card without its provenance (training record, weights hash, metrics), nested CLIP card too."""
    out = {k: v for k, v in card.items() if k not in ("training", "weights_hash", "metrics")}
    if isinstance(out.get("clip"), Mapping):  # a T-Rex2 card holds its backbone's (the teacher's) card
        out["clip"] = _architecture_only(out["clip"])
    return out


def architecture(detector_dir: Path) -> dict[str, Any]:
    """The model cards of the parts (without their training records) and the detector settings.

    RegionCLIP folders list ``clip`` and ``rpn`` (``None`` without a proposal network); T-Rex2 folders
    list ``trex2``.
    """
    header = read_json(detector_dir / DETECTOR_FILE)
    out: dict[str, Any] = {"kind": header.get("kind"), "detector_config": header.get("config")}
    parts = model_parts(header)
    names = ("trex2",) if header.get("kind") == TREX2_KIND else MODEL_PARTS
    for part in names:
        out[part] = _architecture_only(read_json(detector_dir / parts[part] / CARD_FILE)) if part in parts else None
    return out


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def build_model_card(detector_dir: Path, *, name: str, description: str, recipe: Mapping[str, Any],
                     stage_records: Mapping[str, Mapping[str, Any]], stage_seconds: Mapping[str, float],
                     evaluation: Mapping[str, Any], command: str | None = None) -> dict[str, Any]:
    """The model card of ``detector_dir`` (a JSON-able dict; see the module docstring).

    Args:
        recipe: the pipeline's settings (every stage's config).
        stage_records: per training stage, what the trainer recorded (``recipe.json``: recipe, data, loss).
        stage_seconds: wall time per stage in seconds (all invocations that built it).
        evaluation: protocol, data and the numbers (fractions in [0, 1]).
    """
    weights = weights_summary(detector_dir)
    return {
        "name": name,
        "description": description,
        "model_hash": weights[hash_part(read_json(detector_dir / DETECTOR_FILE))]["weights_hash"],
        "architecture": architecture(detector_dir),
        "weights": weights,
        "training": {"command": command, "recipe": dict(recipe), "stages": {k: dict(v) for k, v in stage_records.items()}},
        "wall_time_s": {k: round(float(v), 1) for k, v in stage_seconds.items()},
        "total_wall_time_s": round(float(sum(stage_seconds.values())), 1),
        "evaluation": dict(evaluation),
        "machine": machine(),
        "regionprompt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_model_card(detector_dir: Path, card: Mapping[str, Any]) -> Path:
    path = detector_dir / MODEL_CARD_FILE
    atomic_write_text(path, dump_json(dict(card), indent=2))
    return path


def copy_detector(source: Path, target: Path) -> Path:
    """Copy a detector folder (``detector.json`` + its model folders: ``clip/`` + ``rpn/`` or ``trex2/``)
    to ``target``, replacing it.

    The copy is made beside ``target`` and renamed into place, so ``target`` is never half written.

    Raises:
        CheckpointError: ``source`` has no readable ``detector.json`` or lacks a model folder it names.
    """
    source, target = Path(source), Path(target)
    for name in model_parts(read_json(source / DETECTOR_FILE)).values():
        if not (source / name / CARD_FILE).is_file():  # fail before replacing a good target
            raise CheckpointError(f"{source}: {DETECTOR_FILE} names {name}/, which holds no {CARD_FILE}")
    tmp = target.parent / f".{target.name}.copying"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


# ---- installing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallReport:
    """What :func:`install_detector` wrote: the folder, the storage kept, its check and the rejected ones."""

    target: Path
    storage: str
    check: dict[str, float]
    rejected: dict[str, dict[str, float]]
    model_hash: str


def compare_detectors(reference: Any, candidate: Any, images: Sequence[Path], names: Sequence[str]) -> dict[str, float]:
    """How far ``candidate`` (a :class:`~regionprompt.api.Detector`) is from ``reference``.

    RegionCLIP: the smallest cosine between their whole-image embeddings of ``images`` and between their
    prompt embeddings of ``names`` (with the detector's templates), and the mean best IoU of the
    reference's top 20 proposals among the candidate's. T-Rex2: see :func:`compare_trex2`.
    """
    from torchvision.ops import box_iou

    if reference.kind == TREX2_KIND:
        return compare_trex2(reference, candidate, images, names)
    pictures = [load_image(p).image for p in images]
    a, b = reference.engine, candidate.engine
    size = a.regions.input_size
    pixels = torch.stack([to_tensor(im.resize((size, size), Image.BILINEAR)) for im in pictures])
    with torch.no_grad():
        image_cos = (a.model.encode_image(pixels) * b.model.encode_image(pixels)).sum(-1).min()
        text_cos = (a.embedder.embed(list(names)) * b.embedder.embed(list(names))).sum(-1).min()
    check = {"min_image_cosine": float(image_cos), "min_text_cosine": float(text_cos)}
    if a.proposal_source is not None:
        ious = []
        for pa, pb in zip(a.propose(pictures), b.propose(pictures)):
            top = pa.boxes[:20]
            if len(top) and len(pb.boxes):
                ious.append(box_iou(top, pb.boxes).max(dim=1).values.mean())
        check["proposal_iou"] = float(torch.stack(ious).mean()) if ious else 1.0
    return check


def compare_trex2(reference: Any, candidate: Any, images: Sequence[Path], names: Sequence[str]) -> dict[str, float]:
    """How far the T-Rex2 ``candidate`` detector is from ``reference``, searching ``images`` for the first
    :data:`TREX2_CHECK_NAMES` of ``names`` as text prompts (score threshold 0: every kept query counts).

    Returns:
        ``min_text_cosine``: the smallest cosine between their ``(D,)`` text prompt embeddings;
        ``max_score_diff``: per image and category, both detectors' scores sorted high to low, the
        largest difference of the k-th best (k < :data:`TREX2_CHECK_TOP`) -- independent of query order,
        which a float16 rounding of near-tied encoder tokens may change;
        ``detection_iou``: the mean over images of the mean best IoU of the reference's top
        :data:`TREX2_CHECK_TOP` detections among the candidate's of the same category (boxes xyxy pixels).
    """
    from torchvision.ops import box_iou

    prompts = list(dict.fromkeys(names))[:TREX2_CHECK_NAMES]
    pictures = [load_image(p) for p in images]
    with torch.no_grad():
        a, b = reference.engine.texts(prompts), candidate.engine.texts(prompts)
        text_cos = min(float((a[n] * b[n]).sum()) for n in prompts)
        ours, theirs = reference.predict(pictures, text=prompts, threshold=0.0), candidate.predict(pictures, text=prompts, threshold=0.0)
    score_diff, ious = 0.0, []
    for da, db in zip(ours, theirs):
        for c in range(len(prompts)):
            sa = da.scores[da.labels == c].sort(descending=True).values[:TREX2_CHECK_TOP]
            sb = db.scores[db.labels == c].sort(descending=True).values[:TREX2_CHECK_TOP]
            k = min(len(sa), len(sb))
            # A category found on one side only differs by its best score (against nothing, i.e. 0).
            diff = float((sa[:k] - sb[:k]).abs().max()) if k else float(torch.cat([sa, sb]).max()) if len(sa) + len(sb) else 0.0
            score_diff = max(score_diff, diff)
        top = da.scores.argsort(descending=True)[:TREX2_CHECK_TOP]
        best = []
        for i in top.tolist():
            same = db.boxes[db.labels == da.labels[i]]
            best.append(float(box_iou(da.boxes[i : i + 1], same).max()) if len(same) else 0.0)
        if best:
            ious.append(sum(best) / len(best))
    return {"min_text_cosine": text_cos, "max_score_diff": score_diff,
            "detection_iou": sum(ious) / len(ious) if ious else 1.0}


def check_passes(check: Mapping[str, float], *, named: bool = False) -> bool:
    """Whether a smaller storage's check (:func:`compare_detectors`) keeps the float32 outputs
    (``named``: a T-Rex2 detector with a region namer, see :data:`MAX_SCORE_DIFF_NAMED`)."""
    return (all(check[k] >= MIN_EMBEDDING_COSINE for k in ("min_image_cosine", "min_text_cosine") if k in check)
            and check.get("proposal_iou", 1.0) >= MIN_PROPOSAL_IOU
            and check.get("detection_iou", 1.0) >= MIN_DETECTION_IOU
            and check.get("max_score_diff", 0.0) <= (MAX_SCORE_DIFF_NAMED if named else MAX_SCORE_DIFF))


def _write_storage(source: Path, staging: Path, header: Mapping[str, Any], storage: str,
                   token_texts: Sequence[str] | None) -> None:
    """``source`` detector folder -> ``staging`` with its weights stored as ``storage`` (:data:`STORAGES`)."""
    from regionprompt.detect.rpn import RpnCard
    from regionprompt.vl.cards import ModelCard

    if storage == "float32":
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(MODEL_CARD_FILE))
        return
    if header.get("kind") == TREX2_KIND:
        _write_trex2_storage(source, staging, header, storage, token_texts)
        return
    staging.mkdir(parents=True)
    shutil.copy2(source / DETECTOR_FILE, staging / DETECTOR_FILE)
    clip_dir = header["clip"]
    if storage == "compact":
        from regionprompt.vl.clip_model import RegionPromptCLIP
        from regionprompt.vl.compact import keep_learnt_tokens, save_compact

        clip = RegionPromptCLIP.load(source / clip_dir)
        keep_learnt_tokens(clip, token_texts or ())
        save_compact(clip, staging / clip_dir)
    else:
        card, state = read_model_dir(source / clip_dir, ModelCard, kind="CLIP")
        save_model_dir(staging / clip_dir, state, card, dtype=torch.float16)
    if header.get("rpn") is not None:
        card, state = read_model_dir(source / header["rpn"], RpnCard, kind="RPN")
        save_model_dir(staging / header["rpn"], state, card, dtype=torch.float16)


def _write_trex2_storage(source: Path, staging: Path, header: Mapping[str, Any], storage: str,
                         token_texts: Sequence[str] | None) -> None:
    """A T-Rex2 folder as ``compact`` (token rows absent from ``token_texts`` zeroed, float16, row-sparse
    token embedding: :meth:`regionprompt.api.Detector.save` with ``compact=True``) or plain ``float16``."""
    from regionprompt.api import Detector, read_trex2_folder
    from regionprompt.trex2.card import TRex2Card

    if storage == "compact":
        from regionprompt.vl.compact import keep_learnt_tokens

        model, config = read_trex2_folder(source, header)
        # The text side is frozen in T-Rex2 training, so its learnt rows are those of the teacher's text.
        keep_learnt_tokens(model.clip, token_texts or ())
        written = Detector.from_trex2(model, config).save(staging, compact=True)
        if header.get("namer") is not None:
            kept = {k: header[k] for k in ("namer", "namer_config")}
            atomic_write_text(written / DETECTOR_FILE, dump_json({**read_json(written / DETECTOR_FILE), **kept}, indent=2))
    else:
        staging.mkdir(parents=True)
        shutil.copy2(source / DETECTOR_FILE, staging / DETECTOR_FILE)
        card, state = read_model_dir(source / header["model"], TRex2Card, kind="T-Rex2")
        save_model_dir(staging / header["model"], state, card, dtype=torch.float16)
    if header.get("namer") is not None:
        from regionprompt.vl.cards import ModelCard

        card, state = read_model_dir(source / header["namer"], ModelCard, kind="CLIP")
        save_model_dir(staging / header["namer"], state, card, dtype=torch.float16)


#: Ways to store the weights, smallest first: float16 with the CLIP token embedding cut to the tokens of
#: the training text (:mod:`regionprompt.vl.compact`), plain float16, float32.
STORAGES = ("compact", "float16", "float32")


def install_detector(source: Path, target: Path, *, half: bool = True, token_texts: Sequence[str] | None = None,
                     check_images: Sequence[Path] = (), check_names: Sequence[str] = ()) -> InstallReport:
    """Install the detector folder ``source`` (with its ``model_card.json``) as ``target``.

    ``source`` is a RegionCLIP (``clip/`` + ``rpn/``) or a T-Rex2 (``trex2/``) detector folder. With
    ``half``, the smallest storage of :data:`STORAGES` whose detector passes :func:`compare_detectors`
    against the float32 original on ``check_images`` and ``check_names`` is kept (``compact`` is tried only
    when ``token_texts``, the texts the CLIP text tower was trained on, are given -- for T-Rex2 those of
    the teacher whose text side it carries); otherwise float32. The model loaders verify weights against
    the hash of the tensors as stored and load them into float32 modules. The card of the copy records
    the storage, the check and the model hash of the stored weights. The folder is assembled beside
    ``target`` and moved into place at the end.
    """
    from regionprompt.api import Detector

    source, target = Path(source), Path(target)
    header = read_json(source / DETECTOR_FILE)
    parts = model_parts(header)
    if header.get("kind") == TREX2_KIND:
        thresholds = {"min_embedding_cosine": MIN_EMBEDDING_COSINE, "min_detection_iou": MIN_DETECTION_IOU,
                      "max_score_diff": MAX_SCORE_DIFF_NAMED if header.get("namer") else MAX_SCORE_DIFF,
                      "prompts": TREX2_CHECK_NAMES, "top": TREX2_CHECK_TOP}
    else:
        thresholds = {"min_embedding_cosine": MIN_EMBEDDING_COSINE, "min_proposal_iou": MIN_PROPOSAL_IOU}
    if half and not (check_images and check_names):
        raise CheckpointError("a float16 install needs check images and names to compare against the float32 detector")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.installing"
    tried = [s for s in STORAGES if (s != "compact" or token_texts is not None) and (half or s == "float32")]
    reference = Detector.load(source, cache=None) if half else None
    rejected: dict[str, dict[str, float]] = {}
    check: dict[str, float] = {}
    for storage in tried:
        if staging.exists():
            shutil.rmtree(staging)
        _write_storage(source, staging, header, storage, token_texts)
        if storage == "float32":
            check = {}
            break
        check = compare_detectors(reference, Detector.load(staging, cache=None), check_images, check_names)
        if check_passes(check, named=header.get("namer") is not None):
            break
        rejected[storage] = check
    card = read_json(source / MODEL_CARD_FILE) if (source / MODEL_CARD_FILE).is_file() else {}
    installed = Detector.load(staging, cache=None)  # the loader must accept what we ship
    card.update(
        model_hash=installed.model_hash,
        weights=weights_summary(staging),
        install={"storage": storage, "check": check, "rejected": rejected, "source": str(source),
                 "source_model_hash": read_json(source / parts[hash_part(header)] / CARD_FILE).get("weights_hash"),
                 "check_images": len(check_images), "check_names": len(check_names), "thresholds": thresholds},
    )
    write_model_card(staging, card)
    for path in staging.rglob("*"):  # temp files are created private; a shipped model is world-readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    if target.exists():
        # Files of the old folder that are not part of a detector (e.g. a README) stay. The old detector's
        # own model folders go too: it may be of the other kind (clip/ + rpn/ replaced by trex2/).
        try:
            old_parts = model_parts(read_json(target / DETECTOR_FILE)).values()
        except (CheckpointError, KeyError):
            old_parts = MODEL_PARTS + ("trex2", "namer")  # no readable header: the folder names detectors use
        managed = {DETECTOR_FILE, MODEL_CARD_FILE, *parts.values(), *old_parts}
        for entry in target.iterdir():
            if entry.name not in managed and not (staging / entry.name).exists():
                shutil.move(str(entry), staging / entry.name)
        shutil.rmtree(target)
    staging.rename(target)
    return InstallReport(target, storage, check, rejected, installed.model_hash)


__all__ = ["MODEL_CARD_FILE", "STORAGES", "InstallReport", "architecture", "build_model_card", "compare_detectors",
           "compare_trex2", "copy_detector", "hash_part", "install_detector", "model_parts", "weights_summary",
           "write_model_card"]
