"""Limits and resources of the REST server, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from regionprompt.errors import RegionPromptError
from regionprompt.prompts import MAX_TEXT_LENGTH

#: Prompts per request: a request holds a worker for its whole text embedding, so a server takes far
#: fewer than the Python API (:data:`regionprompt.prompts.MAX_PROMPTS`).
SERVER_MAX_PROMPTS = 64


@dataclass(frozen=True)
class ServerSettings:
    """What one server instance accepts and how much work it takes on.

    Attributes:
        max_upload_bytes: largest request body, and largest single uploaded file, in bytes (413 above).
        max_image_pixels: largest image (width * height) decoded (413 above); checked from the header
            before any pixel is decoded.
        max_prompts: most prompts in one request: texts + boxes + points + negatives + concepts (400 above).
        max_prompt_images: most extra images carrying generic visual prompts in one request.
        max_text_length: longest text prompt or concept name, in characters.
        request_timeout_s: longest a request waits for its result, queueing included (504 after);
            work already running finishes in the background and keeps its slot until then.
        workers: inference threads. PyTorch already spreads one inference over the cores, so more
            threads mostly add memory; 1 also keeps a detector that is not thread-safe safe.
        max_waiting: requests allowed to wait for a worker; one more gets 503 at once.
        model_name: how ``GET /models`` names the loaded model (a path or ``"default"``).
        default_threshold: score threshold when a request gives none (``None``: the detector's own).
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_prompts: int = SERVER_MAX_PROMPTS
    max_prompt_images: int = 8
    max_text_length: int = MAX_TEXT_LENGTH
    request_timeout_s: float = 120.0
    workers: int = 1
    max_waiting: int = 8
    model_name: str = "default"
    default_threshold: float | None = None

    def __post_init__(self) -> None:
        positive = ("max_upload_bytes", "max_image_pixels", "max_prompts", "max_text_length", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise RegionPromptError(f"server setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_images < 0 or self.max_waiting < 0:
            raise RegionPromptError("server settings max_prompt_images and max_waiting must be >= 0")
        if not self.request_timeout_s > 0:
            raise RegionPromptError(f"server setting request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.default_threshold is not None and not 0.0 <= self.default_threshold <= 1.0:
            raise RegionPromptError(f"server setting default_threshold must be in [0, 1], got {self.default_threshold}")
