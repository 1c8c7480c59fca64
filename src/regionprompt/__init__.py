"""RegionPrompt: open-vocabulary object detection from text and visual prompts."""

from regionprompt.errors import RegionPromptError

__version__ = "0.1.0"

__all__ = ["RegionPromptError", "__version__"]
