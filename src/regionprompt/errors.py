"""Exceptions users can act on.

Every error that reaches a user derives from :class:`RegionPromptError`; the CLI prints its message
(never a traceback) and exits with status 2. Messages name the offending file or value.
"""

from __future__ import annotations


class RegionPromptError(Exception):
    """Base class for all errors raised deliberately by RegionPrompt."""


class ImageLoadError(RegionPromptError):
    """An image could not be read: missing, corrupt, truncated, empty, too large or of unknown type."""


class DatasetError(RegionPromptError):
    """A dataset file (COCO JSON, YOLO labels, captions) is malformed or inconsistent."""


class BoxFormatError(RegionPromptError, ValueError):
    """Boxes with the wrong shape, an unknown format, or non-finite values."""


class PromptError(RegionPromptError, ValueError):
    """A prompt is invalid: empty, outside its image, or refers to an unknown concept."""


class EvaluationError(RegionPromptError):
    """Ground truth and predictions cannot be evaluated together."""


class CheckpointError(RegionPromptError):
    """A weights file is unreadable, truncated, not a checkpoint, or does not match the expected architecture."""
