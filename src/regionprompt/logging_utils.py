"""Logging and progress bars shared by the CLI and long-running jobs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

LOGGER_NAME = "regionprompt"
_quiet = False  # set by configure_logging(verbosity < 0), the CLI's -q: no progress bars either


def get_logger(name: str | None = None) -> logging.Logger:
    """Return the package logger or one of its children (``regionprompt.<name>``)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def configure_logging(verbosity: int = 0) -> None:
    """Send package logs to stderr; ``verbosity`` 0 = INFO, >=1 = DEBUG, <0 = WARNING."""
    global _quiet
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    _quiet = verbosity < 0
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False


def progress_hidden() -> bool:
    """Whether progress bars are off: ``-q``, or ``REGIONPROMPT_NO_PROGRESS=1``."""
    return _quiet or os.environ.get("REGIONPROMPT_NO_PROGRESS") == "1"


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr.

    The bar is hidden with ``-q`` (:func:`configure_logging` with a negative verbosity), when
    ``REGIONPROMPT_NO_PROGRESS=1`` (tests, CI logs), or when stderr is not a terminal and the run is
    short; tqdm decides the latter.
    """
    disable = progress_hidden()
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, leave=False))


def progress_bar(*, desc: str, total: int | None, initial: int = 0, unit: str = "it", hidden: bool = False) -> tqdm:
    """A manually driven progress bar (``update``, ``set_postfix``) with the same switches as :func:`progress`;
    ``hidden`` turns it off (e.g. on every rank but the first of a distributed run)."""
    disable = hidden or progress_hidden()
    return tqdm(desc=desc, total=total, initial=initial, unit=unit, disable=disable, dynamic_ncols=True)
