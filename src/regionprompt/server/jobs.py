"""The blocking work behind the endpoints (run on the inference queue's threads, never on the event loop).

Image decoding lives here too: decoding a large PNG takes long enough to stall the event loop.
This module is also the single place where the server calls the detector, through the
:class:`DetectorLike` protocol that :class:`regionprompt.api.Detector` satisfies.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from regionprompt.concept import PromptConcept
from regionprompt.concepts.library import ConceptLibrary, ConceptNotFoundError
from regionprompt.errors import ImageLoadError, PromptError
from regionprompt.images import LoadedImage, load_image
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    Prompt,
    TextPrompt,
    validate_visual_prompts,
)
from regionprompt.results import Detections
from regionprompt.server.schema import PromptRequest


class DetectorLike(Protocol):
    """What the server needs from a detector (see :class:`regionprompt.api.Detector`)."""

    model_hash: str

    def predict(self, images: Sequence[Any], **prompts: Any) -> list[Detections]: ...

    def make_concept(self, name: str, **prompts: Any) -> PromptConcept: ...


class ImageTooLargeError(ImageLoadError):
    """An uploaded image has more pixels than the server accepts."""


def decode_image(data: bytes, name: str, max_pixels: int) -> LoadedImage:
    """Decode an uploaded image, refusing oversized ones from their header, before decoding pixels.

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageLoadError: empty, not an image, corrupt or truncated.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        width = height = 0  # load_image below gives the precise message
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this server accepts at most "
            f"{max_pixels / 1e6:.1f}"
        )
    return load_image(data, max_pixels=max_pixels, name=name)


def lookup_concepts(library: ConceptLibrary, names: Sequence[str], model_hash: str) -> list[PromptConcept]:
    """Library concepts by name, checked against the serving model.

    Raises:
        PromptError: an unknown name, or a concept made by another model.
    """
    concepts = []
    for name in names:
        try:
            concept = library.get(name)
        except ConceptNotFoundError as exc:
            raise PromptError(f"unknown concept {name!r}: {exc}") from None
        concept.check_model(model_hash)
        concepts.append(concept)
    return concepts


def _prompt_kwargs(request: PromptRequest) -> dict[str, Any]:
    """Keyword prompts for the detector, leaving out empty kinds."""
    kwargs: dict[str, Any] = {}
    if request.texts:
        kwargs["text"] = [t.text for t in request.texts]
    if request.boxes:
        kwargs["boxes"] = list(request.boxes)
    if request.points:
        kwargs["points"] = list(request.points)
    if request.negatives:
        kwargs["negatives"] = list(request.negatives)
    return kwargs


def run_detection(
    detector: DetectorLike,
    library: ConceptLibrary,
    image: tuple[str, bytes],
    prompt_images: Sequence[tuple[str, bytes]],
    request: PromptRequest,
    *,
    max_pixels: int,
    threshold: float | None,
) -> dict[str, Any]:
    """Decode, look up concepts, detect; returns the JSON response body.

    Args:
        image: ``(file name, bytes)`` of the searched image.
        prompt_images: ``(file name, bytes)`` of images carrying generic visual prompts.
        request: parsed prompts; ``image`` indices refer to ``prompt_images``.
        threshold: score threshold (``None``: the detector's default).
    """
    start = time.perf_counter()
    if not request.has_positive:
        raise PromptError("no positive prompt: give at least one text, box, point or concept")
    searched = decode_image(image[1], image[0] or "image", max_pixels)
    extra = [decode_image(data, name or f"prompt image {i}", max_pixels).image for i, (name, data) in enumerate(prompt_images)]
    for index in sorted(request.image_indices()):
        for prompt in request.visual:
            if prompt.image == index:
                prompt.check_inside(extra[index].size)
    resolved = request.with_images(extra)
    validate_visual_prompts(resolved.visual, searched.wh)
    concepts = lookup_concepts(library, request.concepts, detector.model_hash)
    kwargs = _prompt_kwargs(resolved)
    if concepts:
        kwargs["concepts"] = concepts
    if threshold is not None:
        kwargs["threshold"] = threshold
    detections = detector.predict([searched.image], **kwargs)[0]
    body = detections.to_dict()
    body["image"] = searched.name
    body["model_hash"] = detector.model_hash
    body["threshold"] = threshold
    body["seconds"] = round(time.perf_counter() - start, 4)
    return body


def make_concept(
    detector: DetectorLike,
    name: str,
    image: tuple[str, bytes] | None,
    prompt_images: Sequence[tuple[str, bytes]],
    request: PromptRequest,
    *,
    max_pixels: int,
) -> PromptConcept:
    """Build a concept from prompts; visual prompts without an ``image`` index lie on ``image``."""
    if request.concepts:
        raise PromptError("a new concept is made from texts, boxes and points, not from other concepts")
    if not (request.texts or request.boxes or request.points):
        raise PromptError(f"concept {name!r}: give at least one text, box or point")
    extra = [decode_image(data, fname or f"prompt image {i}", max_pixels).image for i, (fname, data) in enumerate(prompt_images)]
    main = decode_image(image[1], image[0] or "image", max_pixels) if image is not None else None
    resolved = request.with_images(extra)

    def on_main(prompt: Prompt) -> Prompt:
        if isinstance(prompt, TextPrompt) or prompt.image is not None:
            return prompt
        if main is None:
            raise PromptError("box and point prompts need the image they were drawn on (upload it as 'image')")
        prompt.check_inside(main.wh)
        if isinstance(prompt, BoxPrompt):
            return BoxPrompt(prompt.box, main.image, prompt.label, prompt.negative)
        return PointPrompt(prompt.point, main.image, prompt.label, prompt.negative)

    for prompt in resolved.visual:
        if prompt.image is not None:
            prompt.check_inside(prompt.image.size)
    kwargs: dict[str, Any] = {}
    if resolved.texts:
        kwargs["text"] = [t.text for t in resolved.texts]
    if resolved.boxes:
        kwargs["boxes"] = [on_main(p) for p in resolved.boxes]
    if resolved.points:
        kwargs["points"] = [on_main(p) for p in resolved.points]
    if resolved.negatives:
        kwargs["negatives"] = [on_main(p) for p in resolved.negatives]
    return detector.make_concept(name, **kwargs)
