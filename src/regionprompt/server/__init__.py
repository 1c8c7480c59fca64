"""The REST server and web UI (``regionprompt serve``); needs the ``server`` extra (FastAPI, uvicorn).

``create_app`` is imported lazily so that reading :class:`ServerSettings` (e.g. for ``--help``)
works without the extra installed.
"""

from __future__ import annotations

from typing import Any

from regionprompt.server.settings import ServerSettings


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from regionprompt.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ServerSettings", "create_app"]
