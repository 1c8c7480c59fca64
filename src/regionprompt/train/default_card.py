"""The model card of a detector folder (``model_card.json``) and installing a folder as the package default.

``model_card.json`` sits beside ``detector.json`` (the loader ignores it) and records what a user needs to
trust the weights: architecture, the recipe of every training stage, wall time per stage, evaluation
numbers, the model hash (:attr:`regionprompt.api.Detector.model_hash`) and the sha256 of every weights file.

:func:`install_detector` copies a detector folder into ``regionprompt/models/default`` in the smallest
storage that keeps its outputs (:data:`STORAGES`): float16, with the CLIP token embedding cut to the tokens
of its training text when those texts are known (:mod:`regionprompt.vl.compact`). Both model loaders
(``load_checkpoint`` for CLIP, ``load_model_dir`` for the RPN) verify the weights against the hash of the
tensors as stored and ``load_state_dict`` them into float32 modules, so a float16 file loads into an
ordinary float32 model. Each smaller storage is compared with the float32 original (image and prompt
embedding cosines, proposal boxes) and the next larger one is used when it drifts.
"""

from __future__ import annotations

import hashlib
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
from regionprompt.data.files import atomic_write_text, dump_json
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
MODEL_PARTS = ("clip", "rpn")
#: float16 copies must keep image and text embeddings this close (cosine) to the float32 original ...
MIN_EMBEDDING_COSINE = 0.999
#: ... and find the same proposals (mean best IoU of the float32 top proposals among the float16 ones).
MIN_PROPOSAL_IOU = 0.95


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def weights_summary(detector_dir: Path) -> dict[str, Any]:
    """Per model part: the weights file's sha256, size, dtype(s), parameter count and card weights hash."""
    header = read_json(detector_dir / DETECTOR_FILE)
    out: dict[str, Any] = {}
    for part in MODEL_PARTS:
        name = header.get(part)
        if name is None:
            continue
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


def architecture(detector_dir: Path) -> dict[str, Any]:
    """The model cards of the parts (without their training records) and the detector settings."""
    header = read_json(detector_dir / DETECTOR_FILE)
    out: dict[str, Any] = {"kind": header.get("kind"), "detector_config": header.get("config")}
    for part in MODEL_PARTS:
        name = header.get(part)
        if name is None:
            out[part] = None
            continue
        card = read_json(detector_dir / name / CARD_FILE)
        out[part] = {k: v for k, v in card.items() if k not in ("training", "weights_hash", "metrics")}
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
        "model_hash": weights["clip"]["weights_hash"],
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
    """Copy a detector folder (``detector.json`` + its model folders) to ``target``, replacing it.

    The copy is made beside ``target`` and renamed into place, so ``target`` is never half written.
    """
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
    """How far ``candidate`` (a :class:`~regionprompt.api.Detector`) is from ``reference``: the smallest
    cosine between their whole-image embeddings of ``images`` and between their prompt embeddings of
    ``names`` (with the detector's templates), and the mean best IoU of the reference's top 20 proposals
    among the candidate's."""
    from torchvision.ops import box_iou

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


def check_passes(check: Mapping[str, float]) -> bool:
    return (check["min_image_cosine"] >= MIN_EMBEDDING_COSINE and check["min_text_cosine"] >= MIN_EMBEDDING_COSINE
            and check.get("proposal_iou", 1.0) >= MIN_PROPOSAL_IOU)


def _write_storage(source: Path, staging: Path, header: Mapping[str, Any], storage: str,
                   token_texts: Sequence[str] | None) -> None:
    """``source`` detector folder -> ``staging`` with its weights stored as ``storage`` (:data:`STORAGES`)."""
    from regionprompt.detect.rpn import RpnCard
    from regionprompt.vl.cards import ModelCard

    if storage == "float32":
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(MODEL_CARD_FILE))
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


#: Ways to store the weights, smallest first: float16 with the CLIP token embedding cut to the tokens of
#: the training text (:mod:`regionprompt.vl.compact`), plain float16, float32.
STORAGES = ("compact", "float16", "float32")


def install_detector(source: Path, target: Path, *, half: bool = True, token_texts: Sequence[str] | None = None,
                     check_images: Sequence[Path] = (), check_names: Sequence[str] = ()) -> InstallReport:
    """Install the detector folder ``source`` (with its ``model_card.json``) as ``target``.

    With ``half``, the smallest storage of :data:`STORAGES` whose detector passes :func:`compare_detectors`
    against the float32 original on ``check_images`` and ``check_names`` is kept (``compact`` is tried only
    when ``token_texts``, the texts the CLIP text tower was trained on, are given); otherwise float32. Both
    model loaders verify weights against the hash of the tensors as stored and load them into float32
    modules. The card of the copy records the storage, the check and the model hash of the stored weights.
    The folder is assembled beside ``target`` and moved into place at the end.
    """
    from regionprompt.api import Detector

    source, target = Path(source), Path(target)
    header = read_json(source / DETECTOR_FILE)
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
        if check_passes(check):
            break
        rejected[storage] = check
    card = read_json(source / MODEL_CARD_FILE) if (source / MODEL_CARD_FILE).is_file() else {}
    installed = Detector.load(staging, cache=None)  # the loader must accept what we ship
    card.update(
        model_hash=installed.model_hash,
        weights=weights_summary(staging),
        install={"storage": storage, "check": check, "rejected": rejected, "source": str(source),
                 "source_model_hash": read_json(source / header["clip"] / CARD_FILE).get("weights_hash"),
                 "check_images": len(check_images), "check_names": len(check_names),
                 "thresholds": {"min_embedding_cosine": MIN_EMBEDDING_COSINE, "min_proposal_iou": MIN_PROPOSAL_IOU}},
    )
    write_model_card(staging, card)
    for path in staging.rglob("*"):  # temp files are created private; a shipped model is world-readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    if target.exists():
        # Files of the old folder that are not part of a detector (e.g. a README) stay.
        managed = {DETECTOR_FILE, MODEL_CARD_FILE, *(str(header[p]) for p in MODEL_PARTS if header.get(p))}
        for entry in target.iterdir():
            if entry.name not in managed and not (staging / entry.name).exists():
                shutil.move(str(entry), staging / entry.name)
        shutil.rmtree(target)
    staging.rename(target)
    return InstallReport(target, storage, check, rejected, installed.model_hash)


__all__ = ["MODEL_CARD_FILE", "STORAGES", "InstallReport", "architecture", "build_model_card", "compare_detectors",
           "copy_detector", "install_detector", "weights_summary", "write_model_card"]
