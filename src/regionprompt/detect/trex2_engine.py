"""T-Rex2 detection behind the :class:`~regionprompt.api.Detector` API.

Prompts become ``(D,)`` prompt embeddings, then the detector's queries are scored against them:

* text phrases -> frozen text side (template ensemble, cached) -> learned projection; several phrases of
  one category are averaged;
* box / point exemplars -> the visual prompt encoder. All exemplars of one category drawn on one image
  are encoded together (one class token, T-Rex2's "several prompts, one embedding"); boxes and points
  of one image are encoded separately and averaged. Exemplars on other images (the generic workflow)
  give one embedding per image, averaged; exemplars on the searched image (interactive) are encoded from
  that image's own encoder tokens;
* mixed categories average their text and visual embeddings (each weighted once);
* concepts carry finished embeddings.

Scores are the sigmoid of the query-prompt logits. **Negative prompts** (an extension of T-Rex2): each
negative exemplar or phrase is one extra prompt column -- scored, but not allowed to pick queries, so
adding negatives never changes which objects are looked at -- and a query is dropped from category
``c`` when it scores higher against any of ``c``'s negatives than against ``c`` itself. Then the score threshold,
per-category NMS and the top ``max_detections``.

With a region namer (:mod:`~regionprompt.detect.region_namer`) the categories with a name are scored by
the namer on T-Rex2's boxes, and those of exemplars drawn on other images by both (``sqrt(p * s)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_convert

from regionprompt.concept import PromptConcept
from regionprompt.detect.postprocess import select_detections, suppressed_by_negatives
from regionprompt.detect.prompting import (
    CategoryRecipe,
    ImageKeys,
    check_concept_prompts,
    check_unique_names,
    concept_recipe,
    concept_sources,
    image_fingerprint,
    load_source,
    mean_embedding,
    source_record,
)
from regionprompt.detect.region_namer import RegionNamer, concept_matched, matched_by_exemplars, named_categories
from regionprompt.errors import PromptError
from regionprompt.images import LoadedImage, load_image, to_tensor
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    PromptCategory,
    TextPrompt,
    VisualPrompt,
    validate_visual_prompts,
)
from regionprompt.results import Detections
from regionprompt.trex2.model import TRex2
from regionprompt.trex2.structures import EncodedImages
from regionprompt.trex2.visual_prompts import make_prompt_batch
from regionprompt.vl.embeddings import EmbeddingCache


PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TRex2DetectConfig:
    """How T-Rex2 query scores become detections (saved in a detector folder's ``detector.json``)."""

    nms_iou: float = 0.7  # per-category NMS; DETR queries rarely duplicate, so only near-copies go
    max_detections: int = 100  # kept per image after NMS
    batch_size: int = 4  # images per backbone forward pass
    # Default score threshold of predict() with this model: T-Rex2's focal-trained sigmoid scores run lower
    # than RegionCLIP's sqrt(p * objectness); the shipped model's 0.2 balances hits and false positives.
    score_threshold: float = 0.2
    # "bfloat16": the image side and the decoder under bfloat16 autocast (TRex2.autocast; faster on CPUs
    # with AVX512-BF16 / AMX, scores move by ~1e-2); the namer and visual prompt encoding stay float32.
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if min(self.max_detections, self.batch_size) < 1:
            raise ValueError("max_detections and batch_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TRex2DetectConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown T-Rex2 detection config keys {unknown}")
        return cls(**data)


NAMER_DIR = "namer"  # sub-folder of a T-Rex2 detector folder holding the namer's CLIP model


def _one_image(encoded: EncodedImages, index: int) -> EncodedImages:
    return EncodedImages(encoded.memory[index : index + 1], encoded.spatial_shapes)


class TRex2Engine:
    """Text, visual (box / point), mixed and negative prompting of a trained :class:`TRex2`.

    Args:
        model: the detector; its weights hash keys concepts.
        config: detection settings.
        cache: persistent text-embedding cache (``None``: recompute every call).
    """

    kind = "trex2"
    proposal_source = None  # T-Rex2 finds its own boxes

    def __init__(self, model: TRex2, config: TRex2DetectConfig | None = None, *,
                 cache: EmbeddingCache | None = None, namer: RegionNamer | None = None) -> None:
        self.model = model.eval()
        self.config = config or TRex2DetectConfig()
        self.cache = cache
        self.namer = namer  # RegionCLIP region encoder naming the text-only categories (region_namer)
        self.model_hash = model.card.weights_hash or model.weights_hash()

    @property
    def dim(self) -> int:
        return self.model.card.dim

    @property
    def runtime(self) -> str:
        """``"torch"``, or ``"onnxruntime"`` for an ONNX export (:mod:`~regionprompt.detect.onnx_runtime`)."""
        return str(getattr(self.model, "runtime", "torch"))

    def reconfigure(self, **changes: Any) -> TRex2Engine:
        """The same model with some config fields changed (unknown fields are ignored: they belong to
        other detector kinds)."""
        known = {f.name for f in fields(TRex2DetectConfig)}
        updated = {**self.config.to_dict(), **{k: v for k, v in changes.items() if k in known}}
        return TRex2Engine(self.model, TRex2DetectConfig(**updated), cache=self.cache, namer=self.namer)

    # ---- embeddings ------------------------------------------------------------------------------

    def texts(self, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{phrase: (D,)}`` normalised text prompt embeddings, one model call for all."""
        unique = list(dict.fromkeys(phrases))
        if not unique:
            return {}
        return dict(zip(unique, self.model.embed_texts(unique, cache=self.cache)))

    def _pixels(self, images: Sequence[LoadedImage]) -> torch.Tensor:
        return torch.cat([self.model.preprocess(to_tensor(im.image)) for im in images])

    @torch.no_grad()
    def _encode_groups(self, encoded: EncodedImages, image_wh: Sequence[tuple[int, int]],
                       groups: Sequence[tuple[int, Sequence[VisualPrompt]]]) -> list[torch.Tensor]:
        """One ``(D,)`` embedding per ``(image index, prompts)`` group: boxes jointly, points jointly,
        the two averaged when a group has both."""
        parts: list[list[torch.Tensor]] = [[] for _ in groups]
        for kind in (BoxPrompt, PointPrompt):
            members = [(g, image, [p for p in prompts if isinstance(p, kind)]) for g, (image, prompts) in enumerate(groups)]
            members = [m for m in members if m[2]]
            if not members:
                continue
            coords = [torch.tensor([p.box if kind is BoxPrompt else p.point for p in items], dtype=torch.float32)
                      for _, _, items in members]
            batch = make_prompt_batch([(image, c) for (_, image, _), c in zip(members, coords)], image_wh)
            vectors = self.model.visual_prompt_embeddings(encoded, batch)
            for (g, _, _), vector in zip(members, vectors):
                parts[g].append(vector)
        return [mean_embedding(torch.stack(p)) for p in parts]

    def _generic(self, categories: Sequence[PromptCategory]) -> tuple[dict[tuple[int, int], torch.Tensor],
                                                                        dict[int, torch.Tensor], dict[int, dict[str, Any]]]:
        """Exemplars on other images -> ``{(category, image key): (D,)}`` joint positive embeddings,
        ``{id(negative prompt): (D,)}`` and ``{id(prompt): source record}``."""
        keys = ImageKeys()
        jobs: dict[int, list[tuple[Any, Sequence[VisualPrompt]]]] = {}  # image key -> [(tag, prompts)]
        for c, category in enumerate(categories):
            by_image: dict[int, list[VisualPrompt]] = {}
            for prompt in category.visuals:
                if prompt.image is not None:
                    by_image.setdefault(keys.index(prompt.image), []).append(prompt)
            for key, prompts in by_image.items():
                jobs.setdefault(key, []).append((("positive", c, key), prompts))
            for prompt in category.negatives:
                if isinstance(prompt, (BoxPrompt, PointPrompt)) and prompt.image is not None:
                    jobs.setdefault(keys.index(prompt.image), []).append((("negative", id(prompt)), [prompt]))
        positives: dict[tuple[int, int], torch.Tensor] = {}
        negatives: dict[int, torch.Tensor] = {}
        records: dict[int, dict[str, Any]] = {}
        for key, items in jobs.items():
            loaded = load_source(keys.sources[key])
            fingerprint = image_fingerprint(loaded.image)
            for _, prompts in items:
                for prompt in prompts:
                    prompt.check_inside(loaded.wh)
                    records[id(prompt)] = source_record(prompt, loaded.name, fingerprint)
            encoded = self.model.encode_images(self._pixels([loaded]))
            vectors = self._encode_groups(encoded, [loaded.wh], [(0, prompts) for _, prompts in items])
            for (tag, _), vector in zip(items, vectors):
                if tag[0] == "positive":
                    positives[(tag[1], tag[2])] = vector
                else:
                    negatives[tag[1]] = vector
        return positives, negatives, records

    @torch.no_grad()
    def compile(self, categories: Sequence[PromptCategory], concepts: Sequence[PromptConcept] = ()
                ) -> tuple[list[CategoryRecipe], dict[int, dict[str, Any]]]:
        """One :class:`CategoryRecipe` per category then per concept, and the exemplars' source records.

        Raises:
            PromptError: nothing to detect, a name given twice, a concept of another size, a prompt outside its image.
        """
        if not categories and not concepts:
            raise PromptError("no prompt given: pass text, boxes, points or concepts")
        check_unique_names(categories, concepts)
        phrases = [t.text for c in categories for t in (*c.texts, *c.negatives) if isinstance(t, TextPrompt)]
        text = self.texts(phrases)
        positives, negatives, records = self._generic(categories)
        empty = torch.zeros(0, self.dim)

        def stack(items: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(items) if items else empty

        recipes = []
        for c, category in enumerate(categories):
            texts = [text[t.text] for t in category.texts]
            negative_rows = [text[n.text] if isinstance(n, TextPrompt) else negatives[id(n)]
                             for n in category.negatives if isinstance(n, TextPrompt) or n.image is not None]
            recipes.append(CategoryRecipe(
                name=category.name, prompt=category,
                text=mean_embedding(torch.stack(texts)) if texts else None,
                visuals=stack([v for (owner, _), v in positives.items() if owner == c]),
                interactive=tuple(v for v in category.visuals if v.image is None),
                negatives=stack(negative_rows),
                interactive_negatives=tuple(n for n in category.negatives
                                            if not isinstance(n, TextPrompt) and n.image is None),
                fixed=None, has_text=bool(category.texts), has_visual=bool(category.visuals),
            ))
        for concept in concepts:
            concept.check_model(self.model_hash)
            recipes.append(concept_recipe(concept, self.dim))
        return recipes, records

    def make_concepts(self, categories: Sequence[PromptCategory]) -> list[PromptConcept]:
        """Reusable concepts of this model, one per category (exemplars must name their images)."""
        check_concept_prompts(categories)
        recipes, records = self.compile(categories)
        none = torch.zeros(0, self.dim)
        matched = [c for c in categories if matched_by_exemplars(c)] if self.namer is not None else []
        namer_embeddings = dict(zip(map(id, matched), self.namer.embed_exemplars(matched))) if matched else {}
        out = []
        for category, recipe in zip(categories, recipes):
            embedding, negatives = recipe.finish(none, none)
            namer_embedding = namer_embeddings.get(id(category))
            out.append(PromptConcept(name=category.name, embedding=embedding.clone(), model_hash=self.model_hash,
                                     negatives=negatives.clone(), sources=concept_sources(category, records),
                                     namer_embedding=None if namer_embedding is None else namer_embedding.clone()))
        return out

    def _matched(self, categories: Sequence[PromptCategory], concepts: Sequence[PromptConcept]
                 ) -> tuple[list[int], torch.Tensor]:
        """Which recipes (categories, then concepts) the namer matches by their exemplars, and their
        namer embeddings ``(C, E)`` (:mod:`~regionprompt.detect.region_namer`)."""
        if self.namer is None:
            return [], torch.zeros(0, 0)
        index = [i for i, c in enumerate(categories) if matched_by_exemplars(c)]
        rows = self.namer.embed_exemplars([categories[i] for i in index]) if index else []
        for j, concept in enumerate(concepts):
            if concept_matched(concept):
                index.append(len(categories) + j)
                rows.append(self.namer.check_embedding(concept))
        return index, torch.stack(rows) if rows else torch.zeros(0, 0)

    # ---- detection -------------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, images: Sequence[Any], categories: Sequence[PromptCategory] = (),
               concepts: Sequence[PromptConcept] = (), *, proposals: Sequence[Any] | None = None,
               threshold: float = 0.3) -> list[Detections]:
        """Detect the prompted categories on each image (arguments as
        :meth:`~regionprompt.detect.regionclip.zeroshot.ZeroShotDetector.detect`; no ``proposals``)."""
        if proposals is not None:
            raise PromptError("a T-Rex2 detector finds its own boxes: proposals= is for RegionCLIP detectors")
        loaded = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
        prompts = [p for c in categories for p in (*c.visuals, *c.negatives)]
        for image in loaded:
            validate_visual_prompts(prompts, image.wh)
        recipes, _ = self.compile(categories, concepts)
        named = named_categories(categories, concepts) if self.namer is not None else ([], [])
        matched = self._matched(categories, concepts)
        deferred = [*named[0], *matched[0]]
        out: list[Detections] = []
        step = self.config.batch_size
        for start in range(0, len(loaded), step):
            chunk = loaded[start : start + step]
            with self.model.autocast(self.config.precision == "bfloat16"):
                encoded = self.model.encode_images(self._pixels(chunk))
            encoded = EncodedImages(encoded.memory.float(), encoded.spatial_shapes)
            found = [self._detect_one(image, encoded, i, [im.wh for im in chunk], recipes, threshold, deferred)
                     for i, image in enumerate(chunk)]
            out.extend(self._name_chunk(chunk, found, named, matched, [r.name for r in recipes], threshold))
        return out

    def _name_chunk(self, chunk: Sequence[LoadedImage], found: Sequence[tuple[Detections, torch.Tensor, torch.Tensor]],
                    named: tuple[list[int], list[PromptCategory]], matched: tuple[list[int], torch.Tensor],
                    names: Sequence[str], threshold: float) -> list[Detections]:
        """T-Rex2's detections of a chunk of images plus the namer's for the named and the matched
        categories: one namer call of each per chunk, so the phrases are embedded once, not once per image."""
        if self.namer is None or not (named[0] or matched[0]):
            return [dets for dets, _, _ in found]
        boxes = [b for _, b, _ in found]
        extras: list[list[Detections]] = []
        columns = []
        if named[0]:
            extras.append(self.namer.name(chunk, boxes, [scores[:, named[0]] for _, _, scores in found], named[1],
                                          threshold))
            columns.append(named[0])
        if matched[0]:
            extras.append(self.namer.match(chunk, boxes, [scores[:, matched[0]] for _, _, scores in found], matched[1],
                                           [names[i] for i in matched[0]], threshold))
            columns.append(matched[0])
        out = []
        for k, (dets, _, _) in enumerate(found):
            parts = [dets] + [extra[k] for extra in extras]
            labels = [dets.labels] + [torch.tensor(cols, dtype=torch.long)[extra[k].labels]
                                      for cols, extra in zip(columns, extras)]
            merged = Detections(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                                torch.cat(labels), dets.names, dets.image_wh, prompts=dets.prompts,
                                image_name=dets.image_name)
            out.append(merged.topk(self.config.max_detections))
        return out

    def _detect_one(self, image: LoadedImage, encoded: EncodedImages, index: int, chunk_wh: list[tuple[int, int]],
                    recipes: Sequence[CategoryRecipe], threshold: float, deferred: Sequence[int] = ()
                    ) -> tuple[Detections, torch.Tensor, torch.Tensor]:
        """T-Rex2's detections of one image (the ``deferred`` categories, which the namer scores, left out),
        its query boxes ``(Q, 4)`` xyxy pixels and its query scores ``(Q, C)`` for every category."""
        names = [r.name for r in recipes]
        groups: list[tuple[int, Sequence[VisualPrompt]]] = []
        for recipe in recipes:
            if recipe.interactive:
                groups.append((index, recipe.interactive))
            groups.extend((index, [n]) for n in recipe.interactive_negatives)
        vectors = iter(self._encode_groups(encoded, chunk_wh, groups) if groups else [])
        negative_columns: list[list[int]] = []
        finished = []
        for recipe in recipes:
            own = torch.stack([next(vectors)]) if recipe.interactive else torch.zeros(0, self.dim)
            own_negatives = [next(vectors) for _ in recipe.interactive_negatives]
            finished.append(recipe.finish(own, torch.stack(own_negatives) if own_negatives else torch.zeros(0, self.dim)))
        columns = [embedding for embedding, _ in finished]
        for _, negatives in finished:
            negative_columns.append(list(range(len(columns), len(columns) + len(negatives))))
            columns.extend(negatives)
        with self.model.autocast(self.config.precision == "bfloat16"):
            output = self.model(_one_image(encoded, index), torch.stack(columns), select_with=len(recipes))
        output = output.float()
        scores = output.logits[0].sigmoid()  # (Q, K + negatives)
        width, height = image.wh
        boxes = box_convert(output.boxes[0], "cxcywh", "xyxy") * torch.tensor([width, height, width, height])
        positive = scores[:, : len(recipes)]
        own_scores = positive
        if deferred:  # those columns are scored by the namer (_name_chunk), not by T-Rex2 alone
            own_scores = positive.clone()
            own_scores[:, list(deferred)] = -1.0
        suppressed = suppressed_by_negatives(positive, [scores[:, negative] for negative in negative_columns])
        rows, cols = select_detections(boxes, own_scores, threshold, suppressed=suppressed,
                                       nms_iou=self.config.nms_iou, max_detections=self.config.max_detections)
        found = Detections(boxes[rows], positive[rows, cols], cols, names, image.wh,
                           prompts=tuple(r.prompt for r in recipes), image_name=image.name)
        return found, boxes, positive

    # ---- persistence -----------------------------------------------------------------------------

    def save(self, directory: Path, *, compact: bool = False) -> dict[str, Any]:
        """Write the model to ``directory/trex2``; returns the ``detector.json`` header.

        ``compact``: float16 weights and a row-sparse token embedding (see :mod:`regionprompt.vl.compact`).
        """
        from regionprompt.model_dir import save_model_dir
        from regionprompt.vl.compact import TOKEN_EMBEDDING

        if compact:
            sparse = (f"clip.{TOKEN_EMBEDDING}",) if self.model.card.clip.text.kind == "clip" else ()
            self.model.card = save_model_dir(directory / "trex2", self.model.state_dict(), self.model.card,
                                             dtype=torch.float16, sparse_rows=sparse)
            self.model_hash = self.model.card.weights_hash or self.model_hash
        else:
            self.model.save(directory / "trex2")
        header = {"kind": self.kind, "model": "trex2", "config": self.config.to_dict()}
        if self.namer is not None:
            namer = self.namer.model
            if compact and namer.card.text.kind == "minilm":  # the language model itself is not stored
                namer.card = save_model_dir(directory / NAMER_DIR, namer.state_dict(), namer.card, dtype=torch.float16)
            else:
                namer.save(directory / NAMER_DIR)
            header.update({"namer": NAMER_DIR, "namer_config": self.namer.config.to_dict()})
        return header


__all__ = ["NAMER_DIR", "TRex2DetectConfig", "TRex2Engine"]
