"""File helpers for dataset I/O: atomic writes, file hashes, JSON with located errors, header-only image sizes,
placing image files into an output dataset (hardlink, else copy)."""

from __future__ import annotations

from collections.abc import Callable

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from regionprompt.data.validate import ProblemKind, ReportBuilder
from regionprompt.errors import DatasetError, RegionPromptError
from regionprompt.untrusted import UnsafePathError, check_path_name, loads_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# EXIF orientations 5..8 rotate by 90 degrees: the displayed image has width and height swapped.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageMode(str, Enum):
    """How image files go into a converted dataset."""

    LINK = "link"  # hardlink when source and destination share a file system, else copy
    COPY = "copy"
    NONE = "none"  # labels / annotations only


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create ``path`` by calling ``write(tmp)`` on a temporary file in the same directory and then
    ``os.replace``, so readers never see a half-written file and a crash leaves the old file intact.
    Returns ``path``."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail with IsADirectoryError after the whole file was written
        raise RegionPromptError(f"{path}: is a directory; give the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RegionPromptError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\n`` line ends) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks (weights files do not fit in memory twice)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dump_json(data: Any, *, indent: int | None = None) -> str:
    """Deterministic JSON text: UTF-8 kept as is, no NaN/Infinity (invalid JSON), keys in insertion order."""
    try:
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators) + "\n"
    except ValueError as exc:
        raise DatasetError(f"cannot write JSON: {exc} (NaN or infinite values are not valid JSON)") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as displayed (EXIF orientation applied), from its header only.

    Raises:
        DatasetError: the file is missing or is not an image Pillow can identify.
    """
    try:
        with warnings.catch_warnings():
            # Size only: a huge image is not decoded here, so the bomb warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                try:
                    orientation = image.getexif().get(_EXIF_ORIENTATION)
                except (OSError, ValueError, SyntaxError):
                    orientation = None  # a broken EXIF block: the loader ignores it too
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def is_safe_relative(name: str) -> bool:
    """``name`` is a relative ``/``-separated path that stays inside its base directory
    (:func:`regionprompt.untrusted.check_path_name`)."""
    try:
        check_path_name(name, what="name")
    except UnsafePathError:
        return False
    return True


def place_image(src: Path, dst: Path, mode: ImageMode) -> None:
    """Put image ``src`` at ``dst`` (creating folders); an existing ``dst`` with the same size is kept."""
    if mode == ImageMode.NONE:
        return
    if not src.is_file():
        raise DatasetError(f"{src}: image file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_size == src.stat().st_size:
            return
        dst.unlink()
    if mode == ImageMode.LINK:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # other file system or links not allowed: fall back to a copy
    shutil.copyfile(src, dst)


def read_json(path: Path, builder: ReportBuilder) -> Any:
    """Parse a JSON file; a syntax error becomes a ``malformed file`` problem with its line and column
    (fatal: there is nothing to skip to), a missing file a :class:`DatasetError`."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        utf16 = exc.object[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = "; it looks like UTF-16: save it as UTF-8" if utf16 else ""
        raise builder.fatal(ProblemKind.MALFORMED_FILE, f"not UTF-8 text ({exc.reason} at byte {exc.start}){hint}",
                            file=str(path)) from None
    try:
        return loads_json(text)  # deep nesting and 5,000-digit integers are JSONDecodeErrors too
    except json.JSONDecodeError as exc:
        raise builder.fatal(
            ProblemKind.MALFORMED_FILE, f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno, column=exc.colno
        ) from None
