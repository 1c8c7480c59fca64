"""Zero-shot measurements of a CLIP-style model on EmojiWorld (no detector involved).

* :func:`retrieval_recall` -- image-to-caption retrieval recall@k among held-out scenes;
* :func:`multilabel_concept_ap` -- each image scored against every concept name; AP per concept over
  images (a concept is positive where any object of it is in the scene), averaged;
* :func:`region_classification` -- RegionCLIP's recognition benchmark: classify every ground-truth box
  against the whole vocabulary and score the result as detections (COCO AP50 base / novel / all),
  with region embeddings from a crop of the box (``"crop"``) or from RoIAlign on the whole image's
  feature map followed by the attention pool (``"roi"``).

Class embeddings come from :class:`~regionprompt.vl.embeddings.PromptEmbedder` (template ensembling).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from regionprompt.boxes import BoxFormat, convert_boxes
from regionprompt.eval.coco_eval import evaluate_detections
from regionprompt.eval.report import EvalReport
from regionprompt.images import load_image, to_tensor
from regionprompt.logging_utils import progress
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder

REGION_METHODS = ("crop", "roi")


def class_embeddings(model: RegionPromptCLIP, names: Sequence[str], templates: str = "emoji",
                     cache: EmbeddingCache | None = None) -> torch.Tensor:
    """``(C, D)`` L2-normalised, template-ensembled text embeddings of ``names``."""
    return PromptEmbedder(model.text_encoder(), templates=templates, cache=cache).embed(list(names))


@torch.no_grad()
def image_embeddings(model: RegionPromptCLIP, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, D)`` normalised."""
    model.eval()
    return torch.cat([model.encode_image(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass(frozen=True)
class RetrievalResult:
    """Image-to-caption recall@k (fraction of images whose own caption ranks in the top k)."""

    num_images: int
    recall: dict[int, float]


def retrieval_recall(image_emb: torch.Tensor, caption_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> RetrievalResult:
    """``(N, D)`` image and ``(N, D)`` caption embeddings of matching pairs (row i with row i)."""
    sims = image_emb @ caption_emb.t()
    rank = (sims > sims.diagonal().unsqueeze(1)).sum(dim=1)  # captions scoring above the true one
    return RetrievalResult(len(sims), {k: float((rank < k).float().mean()) for k in ks})


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP of a ranking (mean precision at each positive), as in VOC/sklearn."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


@dataclass(frozen=True)
class MultiLabelResult:
    """Mean AP over concepts present in at least one image, overall and per base/novel split."""

    mean_ap: float
    by_split: dict[str, float]
    num_concepts: int


def multilabel_concept_ap(image_emb: torch.Tensor, concept_emb: torch.Tensor, presence: np.ndarray,
                          splits: Sequence[str]) -> MultiLabelResult:
    """``presence`` ``(N_images, C)`` bool; ``splits`` the base/novel split of each of the C concepts."""
    scores = (image_emb @ concept_emb.t()).numpy()
    aps = np.array([average_precision(scores[:, c], presence[:, c]) for c in range(presence.shape[1])])
    valid = ~np.isnan(aps)
    split_arr = np.asarray(splits)
    by_split = {s: float(aps[valid & (split_arr == s)].mean()) for s in ("base", "novel") if (valid & (split_arr == s)).any()}
    return MultiLabelResult(float(aps[valid].mean()), by_split, int(valid.sum()))


def _square_crop(image: Image.Image, box: Sequence[float], size: int) -> torch.Tensor:
    """The box widened to a square around its centre (context rather than distortion), resized."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    crop = image.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    return to_tensor(crop.resize((size, size), Image.BICUBIC))


@torch.no_grad()
def region_embeddings(model: RegionPromptCLIP, image: Image.Image, boxes: torch.Tensor, method: str,
                      input_size: int) -> torch.Tensor:
    """``(K, D)`` normalised embeddings of ``boxes`` ``(K, 4)`` xyxy in pixels of ``image``.

    ``roi`` resizes the whole image to ``input_size`` (boxes scaled along) and pools regions from its
    res4 map; ``crop`` embeds each square crop at ``input_size``.
    """
    model.eval()
    if len(boxes) == 0:
        return torch.zeros(0, model.embed_dim)
    if method == "crop":
        crops = torch.stack([_square_crop(image, b, input_size) for b in boxes.tolist()])
        return image_embeddings(model, crops)
    if method != "roi":
        raise ValueError(f"method must be one of {REGION_METHODS}, got {method!r}")
    width, height = image.size
    pixels = to_tensor(image.resize((input_size, input_size), Image.BILINEAR)).unsqueeze(0)
    scale = torch.tensor([input_size / width, input_size / height] * 2)
    visual = model.visual
    res4 = visual.features(visual.normalize(pixels), stop_at="res4")["res4"]
    return F.normalize(visual.pool_regions(res4, [boxes * scale]), dim=-1)


@dataclass(frozen=True)
class GroundTruthRegions:
    """Region embeddings of every ground-truth box of a COCO set, computed once, classified many times.

    Attributes:
        gt: the COCO ground truth restricted to the evaluated images.
        regions: per image with boxes: ``(image_id, boxes (K, 4) xywh pixels, embeddings (K, D) normalised)``.
    """

    gt: dict[str, Any]
    regions: list[tuple[int, torch.Tensor, torch.Tensor]]


def embed_gt_regions(model: RegionPromptCLIP, gt_path: str | Path, *, method: str = "roi",
                     input_size: int | None = None, max_images: int | None = None) -> GroundTruthRegions:
    """Embed the ground-truth boxes of a COCO set (an EmojiWorld build; images in ``images/`` beside it)."""
    gt_path = Path(gt_path)
    gt = json.loads(gt_path.read_text())
    images = gt["images"][:max_images] if max_images else gt["images"]
    keep = {im["id"] for im in images}
    gt = {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    input_size = input_size or model.card.vision.image_size
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    regions = []
    for image in progress(images, desc=f"embed regions ({method})", unit="img"):
        anns = by_image.get(image["id"], [])
        if not anns:
            continue
        loaded = load_image(gt_path.parent / "images" / image["file_name"]).image
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        xyxy = convert_boxes(xywh, BoxFormat.XYWH, BoxFormat.XYXY)
        regions.append((image["id"], xywh, region_embeddings(model, loaded, xyxy, method, input_size)))
    return GroundTruthRegions(gt, regions)


def classify_gt_regions(model: RegionPromptCLIP, regions: GroundTruthRegions, *, templates: str = "emoji",
                        top_k: int = 5, temperature: float = 0.01, cache: EmbeddingCache | None = None,
                        prompt_names: dict[int, str] | None = None) -> EvalReport:
    """Score each region's ``top_k`` classes (softmax at ``temperature``) as detections on its true box.

    AP50 then measures recognition alone, since localisation is perfect by construction.
    ``prompt_names`` replaces the text prompt of some category ids (e.g. by a synonym).
    """
    categories = sorted(regions.gt["categories"], key=lambda c: c["id"])
    prompt_names = prompt_names or {}
    text = class_embeddings(model, [prompt_names.get(c["id"], c["name"]) for c in categories], templates, cache)
    category_ids = [c["id"] for c in categories]
    predictions = []
    for image_id, xywh, embeddings in regions.regions:
        probs = (embeddings @ text.t() / temperature).softmax(dim=-1)
        scores, index = probs.topk(min(top_k, probs.shape[1]), dim=-1)
        for box, row_scores, row_index in zip(xywh.tolist(), scores.tolist(), index.tolist()):
            for score, c in zip(row_scores, row_index):
                predictions.append({"image_id": image_id, "category_id": category_ids[c], "bbox": box, "score": score})
    return evaluate_detections(regions.gt, predictions)


def region_classification(model: RegionPromptCLIP, gt_path: str | Path, *, method: str = "roi",
                          templates: str = "emoji", input_size: int | None = None, top_k: int = 5,
                          temperature: float = 0.01, cache: EmbeddingCache | None = None,
                          max_images: int | None = None, prompt_names: dict[int, str] | None = None) -> EvalReport:
    """Classify every ground-truth box of a COCO set against all its categories (RegionCLIP's
    recognition benchmark): :func:`embed_gt_regions` then :func:`classify_gt_regions`."""
    regions = embed_gt_regions(model, gt_path, method=method, input_size=input_size, max_images=max_images)
    return classify_gt_regions(model, regions, templates=templates, top_k=top_k, temperature=temperature,
                               cache=cache, prompt_names=prompt_names)


def _phrase_key(text: str) -> str:
    import re

    return " " + re.sub(r"[^a-z0-9]+", " ", re.sub(r"\(.*?\)", " ", text.lower().replace("_", " "))).strip() + " "


def held_out_synonyms(captions: Sequence[str], concepts: Sequence[Any], lvis_categories: Sequence[dict] = ()) -> dict[int, str]:
    """Per concept id, one synonym that occurs in none of ``captions`` (whole-phrase match).

    Candidates are the concept's own synonyms, then the synonyms of the LVIS category (real data,
    ``lvis_v1_train_cat_info.json``) that shares a name with it ("backpack" -> "rucksack", "doughnut"
    -> "donut"). Words the model never saw next to the object measure whether its text side
    generalises: a frozen real language model can; a text tower trained only on these captions cannot.
    Names of other concepts are never used.
    """
    corpus = "\n".join(_phrase_key(c) for c in captions)
    names = {_phrase_key(n): c.id for c in concepts for n in c.names}
    lvis_synonyms: dict[int, list[str]] = {}
    for category in lvis_categories:
        options = [category["name"], *category.get("synonyms", [])]
        owner = next((names[_phrase_key(o)] for o in options if _phrase_key(o) in names), None)
        if owner is not None:
            lvis_synonyms.setdefault(owner, []).extend(o.replace("_", " ") for o in options)
    out = {}
    for concept in concepts:
        for candidate in (*concept.synonyms, *lvis_synonyms.get(concept.id, [])):
            key = _phrase_key(candidate)
            if len(key.strip()) > 2 and key not in corpus and names.get(key, concept.id) == concept.id and key != _phrase_key(concept.name):
                out[concept.id] = key.strip()
                break
    return out


def _mean_ap50(report: EvalReport, ids: set[int]) -> float:
    values = [c.ap50 for c in report.categories if c.id in ids and c.ap50 is not None]
    return float(np.mean(values)) if values else float("nan")


def evaluate_teacher(model: RegionPromptCLIP, *, test_gt: str | Path, val_dir: str | Path, val_images: int = 500,
                     templates: str = "emoji", input_size: int | None = None, world_seed: int = 0,
                     cache: EmbeddingCache | None = None, pretrain_captions: Sequence[str] | None = None,
                     lvis_categories: Sequence[dict] = ()) -> dict[str, Any]:
    """All zero-shot numbers of a teacher, as a JSON-able dict.

    Retrieval and multi-label AP use ``val_images`` EmojiWorld ``val`` scenes (held out from
    pretraining; cached under ``val_dir``); region classification uses the COCO build ``test_gt``.
    """
    from regionprompt.world.concepts import load_concepts
    from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache

    input_size = input_size or model.card.vision.image_size
    # The concept names are embedded for the multi-label test and again for each region method:
    # keep them in a cache beside the val scenes (keyed by the model's weights) unless given one.
    cache = cache if cache is not None else EmbeddingCache(Path(val_dir) / "embeddings.sqlite")
    val = build_scene_cache(SceneCacheSpec("val", world_seed, val_images, input_size), val_dir)
    pixels = torch.from_numpy(np.array(val.images)).permute(0, 3, 1, 2).float().div_(255.0)
    img = image_embeddings(model, pixels)
    captions = [r["captions"][0] for r in val.records]
    with torch.no_grad():
        cap = model.text_encoder().encode_text(captions)
    retrieval = retrieval_recall(img, cap)
    concepts = load_concepts()
    index = {c.id: i for i, c in enumerate(concepts)}
    presence = np.zeros((len(val), len(concepts)), dtype=bool)
    for row, record in enumerate(val.records):
        for obj in record["objects"]:
            presence[row, index[obj["concept_id"]]] = True
    concept_emb = class_embeddings(model, [c.name for c in concepts], templates, cache)
    multilabel = multilabel_concept_ap(img, concept_emb, presence, [c.split for c in concepts])
    # Chance level: the same ranking task with random concept embeddings (AP of a random ranking
    # is the positive rate, which is high for concepts present in few images).
    random_emb = F.normalize(torch.randn(concept_emb.shape, generator=torch.Generator().manual_seed(0)), dim=-1)
    chance = multilabel_concept_ap(img, random_emb, presence, [c.split for c in concepts])
    out: dict[str, Any] = {
        "model": model.card.name,
        "weights_hash": model.card.weights_hash,
        "templates": templates,
        "input_size": input_size,
        "retrieval": {"images": retrieval.num_images, **{f"R@{k}": round(v, 4) for k, v in retrieval.recall.items()}},
        "multilabel": {"concepts": multilabel.num_concepts, "mAP": round(multilabel.mean_ap, 4),
                       "mAP_random_text": round(chance.mean_ap, 4),
                       **{f"mAP_{k}": round(v, 4) for k, v in multilabel.by_split.items()}},
        "region_classification": {},
    }
    for method in REGION_METHODS:
        regions = embed_gt_regions(model, test_gt, method=method, input_size=input_size)
        report = classify_gt_regions(model, regions, templates=templates, cache=cache)
        groups = {g.name: g for g in report.splits}
        out["region_classification"][method] = {
            f"AP50_{name}": round(groups[name].ap50, 4) for name in ("all", "base", "novel") if name in groups and groups[name].ap50 is not None
        }
        if method == "roi" and pretrain_captions is not None:
            synonyms = held_out_synonyms(pretrain_captions, concepts, lvis_categories)
            present = {c.id for c in report.categories if c.num_gt} & set(synonyms)
            with_synonyms = classify_gt_regions(model, regions, templates=templates, cache=cache, prompt_names=synonyms)
            out["held_out_synonyms"] = {
                "concepts": len(present),
                "examples": {concepts.by_id(i).name: synonyms[i] for i in sorted(present)[:8]},
                "AP50_with_names": round(_mean_ap50(report, present), 4),
                "AP50_with_held_out_synonyms": round(_mean_ap50(with_synonyms, present), 4),
            }
    return out


def teacher_markdown(result: dict[str, Any]) -> str:
    """A short markdown table of :func:`evaluate_teacher`'s numbers."""
    r, m = result["retrieval"], result["multilabel"]
    lines = [
        f"### {result['model']} (input {result['input_size']} px, templates `{result['templates']}`)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| image->caption R@1 / R@5 ({r['images']} val scenes; chance {1 / r['images']:.3f} / {5 / r['images']:.3f}) | {r['R@1']:.3f} / {r['R@5']:.3f} |",
        f"| multi-label concept mAP (all / base / novel) | {m['mAP']:.3f} / {m.get('mAP_base', float('nan')):.3f} / {m.get('mAP_novel', float('nan')):.3f} |",
        f"| multi-label concept mAP with random text embeddings (chance) | {m['mAP_random_text']:.3f} |",
    ]
    if "held_out_synonyms" in result:
        h = result["held_out_synonyms"]
        lines.append(f"| held-out synonyms ({h['concepts']} test concepts), RoI AP50 with name / with synonym | "
                     f"{h['AP50_with_names']:.3f} / {h['AP50_with_held_out_synonyms']:.3f} |")
    for method, values in result["region_classification"].items():
        lines.append(
            f"| GT-box region classification, {method}: AP50 all / base / novel | "
            f"{values.get('AP50_all', float('nan')):.3f} / {values.get('AP50_base', float('nan')):.3f} / {values.get('AP50_novel', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"
