"""RegionPrompt: open-vocabulary object detection from text and visual prompts."""

from regionprompt.errors import RegionPromptError

__version__ = "0.1.0"

__all__ = ["Detector", "RegionPromptError", "__version__"]


def __getattr__(name: str) -> object:  # PEP 562: a lazy module attribute
    # The detector pulls in torch and the models; importing it lazily keeps `import regionprompt` light.
    if name == "Detector":
        from regionprompt.api import Detector

        return Detector
    raise AttributeError(f"module 'regionprompt' has no attribute {name!r}")
