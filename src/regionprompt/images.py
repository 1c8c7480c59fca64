"""Loading images from anything a user may hand us, into 8-bit RGB, with clear errors.

Accepted sources: a path (``str`` / ``os.PathLike``), encoded bytes, a ``PIL.Image``, a numpy array
``(H, W)``, ``(H, W, 1|3|4)`` (uint8, uint16, or float in ``[0, 1]``) or a torch tensor ``(H, W)`` /
``(1|3|4, H, W)`` (uint8, or float in ``[0, 1]``). EXIF orientation is applied; grayscale, palette,
CMYK, 16-bit and alpha images become RGB (alpha composited on white, which is what viewers show).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from regionprompt.errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, torch.Tensor]

DEFAULT_MAX_PIXELS = 50_000_000
"""Images above this many pixels are refused (decompression bombs, scans nobody meant to send)."""


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image and where it came from.

    Attributes:
        image: 8-bit RGB ``PIL.Image`` with EXIF orientation applied.
        name: file path, or a short description of an in-memory source (used in messages and outputs).
    """

    image: Image.Image
    name: str

    @property
    def wh(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.image.size


def describe_source(source: Any) -> str:
    """A short human-readable name for an image source."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]} {source.mode}>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<{type(source).__name__} {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (raise max_pixels if this is intended)"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit and float images: scale the actual value range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        if image.mode.startswith("I;16") and hi > 255:
            scaled = array / 257.0
        elif hi > lo:
            scaled = (array - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(array)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"{name}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageLoadError(f"{name}: image contains NaN or infinite values")
        if values.min() < 0.0 or values.max() > 1.0:
            raise ImageLoadError(f"{name}: float images must lie in [0, 1], got [{values.min():.3g}, {values.max():.3g}]")
        data = (values * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageLoadError(f"{name}: unsupported array dtype {array.dtype}")
    mode = {2: "L"}.get(data.ndim) or ("RGB" if data.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(data), mode)


def _open_encoded(stream: io.IOBase | str | os.PathLike, name: str, max_pixels: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_pixels(image.size[0], image.size[1], max_pixels, name)
            # A truncated file only fails when decoded, so decode now, strictly.
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                image.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({exc})") from None
    return image


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> LoadedImage:
    """Load ``source`` as 8-bit RGB with EXIF orientation applied.

    Args:
        source: a path, encoded bytes, a PIL image, a numpy array or a torch tensor (see module doc).
        max_pixels: refuse images with more pixels than this (``None``: no limit).
        name: the name used in error messages and results (default: derived from the source).

    Raises:
        ImageLoadError: missing, empty, corrupt, truncated, too large or unsupported input; the
            message names the file.
    """
    name = name or describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{name}: file not found")
        if path.is_dir():
            raise ImageLoadError(f"{name}: is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{name}: file is empty")
        try:
            with path.open("rb") as handle:
                image = _open_encoded(handle, name, max_pixels)
        except PermissionError:
            raise ImageLoadError(f"{name}: permission denied") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"{name}: no data (0 bytes)")
        image = _open_encoded(io.BytesIO(bytes(source)), name, max_pixels)
    elif isinstance(source, Image.Image):
        _check_pixels(source.size[0], source.size[1], max_pixels, name)
        image = source
    elif isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (3, 4):
            tensor = tensor.permute(1, 2, 0)
        array = tensor.numpy()
        _check_pixels(array.shape[1] if array.ndim > 1 else 0, array.shape[0], max_pixels, name)
        image = _from_array(array, name)
    elif isinstance(source, np.ndarray):
        _check_pixels(source.shape[1] if source.ndim > 1 else 0, source.shape[0] if source.ndim else 0, max_pixels, name)
        image = _from_array(source, name)
    else:
        raise ImageLoadError(f"{name}: unsupported image source type {type(source).__name__}")
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block does not make the pixels unusable
    return LoadedImage(_to_rgb(image), name)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(3, H, W)`` float32 tensor in ``[0, 1]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def expand_image_sources(source: Any) -> list[Any]:
    """One ``predict`` image argument -> single image sources, in order.

    A folder gives its image files (sorted by name, not recursive; suffixes as
    :data:`regionprompt.data.files.IMAGE_SUFFIXES`); a string with ``*``, ``?`` or ``[`` that is not
    an existing file is a glob pattern (``"photos/**/*.jpg"``: ``**`` recurses) giving its image
    files, sorted; a list or tuple gives each item expanded; anything else (a file path, bytes, a PIL
    image, an array or tensor) is one image.

    Raises:
        ImageLoadError: a folder or pattern without image files.
    """
    from glob import glob

    from regionprompt.data.files import IMAGE_SUFFIXES

    if isinstance(source, (list, tuple)):
        return [item for part in source for item in expand_image_sources(part)]
    if not isinstance(source, (str, os.PathLike)):
        return [source]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ImageLoadError(f"{path}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if isinstance(source, str) and any(c in source for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob(source, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageLoadError(f"{source}: no image files match this pattern")
        return files
    return [source]
