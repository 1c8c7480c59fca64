import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regionprompt.errors import ImageLoadError
from regionprompt.images import load_image, to_tensor


@pytest.fixture(scope="module")
def photo(shared_data) -> Path:
    return sorted((shared_data / "coco_mini" / "val2017").glob("*.jpg"))[0]


def test_real_photo_from_every_source(photo):
    ref = load_image(photo)
    assert ref.image.mode == "RGB" and ref.name == str(photo)
    array = np.asarray(ref.image)
    for source in (str(photo), photo.read_bytes(), Image.open(photo), array, torch.from_numpy(array.copy()).permute(2, 0, 1)):
        assert np.array_equal(np.asarray(load_image(source).image), array)
    as_float = to_tensor(ref.image)
    assert as_float.shape == (3, array.shape[0], array.shape[1]) and float(as_float.max()) <= 1.0
    assert np.array_equal(np.asarray(load_image(as_float).image), array)


def test_exif_orientation_is_applied(photo, tmp_path):
    original = Image.open(photo).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    original.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image(path).image
    assert loaded.size == (original.size[1], original.size[0])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1", "F"])
def test_modes_become_rgb(photo, tmp_path, mode):
    base = Image.open(photo).convert("RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) * 3.0)
    else:
        image = base.convert(mode)
    loaded = load_image(image).image
    assert loaded.mode == "RGB" and loaded.size == base.size
    if mode == "F":  # arbitrary float range: stretched, so only the pattern must survive
        gray = np.asarray(base.convert("L"), dtype=np.float64).ravel()
        assert np.corrcoef(gray, np.asarray(loaded.convert("L"), dtype=np.float64).ravel())[0, 1] > 0.99
    if mode in ("L", "I;16", "CMYK", "LA"):
        gray = np.asarray(base.convert("L"), dtype=np.int16)
        got = np.asarray(loaded.convert("L"), dtype=np.int16)
        tolerance = 40 if mode == "CMYK" else 2
        assert np.abs(got - gray).mean() < tolerance
    if mode in ("I;16", "RGBA", "L"):  # encodings survive a file round trip too
        path = tmp_path / f"img_{mode.replace(';', '')}.png"
        image.save(path)
        assert load_image(path).image.mode == "RGB"


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    assert np.asarray(load_image(rgba).image).min() == 255


def test_corrupt_inputs_name_the_file(photo, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:4000])
    cases = {
        empty: "empty",
        garbage: "not an image",
        truncated: "corrupt or truncated",
        tmp_path / "missing.jpg": "not found",
        tmp_path: "directory",
    }
    for path, message in cases.items():
        with pytest.raises(ImageLoadError, match=message) as info:
            load_image(path)
        assert str(path) in str(info.value)


def test_too_many_pixels_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (8000, 7000)).save(big)  # 56 MP, but only a few kB on disk
    with pytest.raises(ImageLoadError, match="56.0 megapixels, above the limit of 50.0"):
        load_image(big)
    assert load_image(big, max_pixels=None).image.size == (8000, 7000)
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=1000)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((5, 5, 2), np.uint8), "expected an array"),
        (np.full((3, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((0, 4), np.uint8), "no pixels"),
        (b"", "0 bytes"),
        (12, "unsupported image source"),
    ],
)
def test_bad_in_memory_inputs(bad, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(bad)


def test_png_with_alpha_from_real_data(shared_data):
    loaded = load_image(shared_data / "hf_two_cats" / "000000039769.png")
    assert loaded.image.mode == "RGB" and loaded.wh == (640, 480)
    buffer = io.BytesIO()
    loaded.image.save(buffer, "PNG")
    assert load_image(buffer.getvalue()).wh == (640, 480)
