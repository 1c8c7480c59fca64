"""open_clip's building blocks without the start-up cost of ``import open_clip``.

RegionPrompt subclasses three of open_clip's modules (``modified_resnet``, ``transformer``, ``tokenizer``),
but ``open_clip/__init__.py`` imports every model it knows, timm and transformers among them: about two
seconds before a ``regionprompt detect`` can start. :func:`import_parts` imports only those modules. The
package object is registered unexecuted, with a module ``__getattr__`` (PEP 562) that runs the real
``open_clip/__init__.py`` on first use of any other name, so ``import open_clip; open_clip.create_model(...)``
anywhere later still works, with the same classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

PACKAGE = "open_clip"


def _lazy_package() -> None:
    """Register ``open_clip`` as a package whose ``__init__`` runs on first attribute use."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:  # not installed: let the normal import say so
        return
    package = importlib.util.module_from_spec(spec)
    state = {"done": False}

    def __getattr__(name: str) -> Any:
        if not state["done"] and not name.startswith("__"):
            state["done"] = True
            del package.__dict__["__getattr__"]
            spec.loader.exec_module(package)  # the real open_clip/__init__.py, in this module's namespace
            return getattr(package, name)
        raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[PACKAGE] = package


def import_parts(*names: str) -> tuple[ModuleType, ...]:
    """``open_clip.<name>`` modules for ``names`` (e.g. ``"transformer"``), without ``open_clip/__init__``."""
    _lazy_package()
    return tuple(importlib.import_module(f"{PACKAGE}.{name}") for name in names)
