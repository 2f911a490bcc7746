"""Pictures of digits -> MNIST's 28x28 convention: real files in every format, both polarities,
uneven light, specks, and the one-line reasons a file is refused."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from mlp.serve import images
from mlp.serve.images import ImageError, load_digit


def drawn_seven(size: int = 300, ink: int = 30, paper: int = 235, width: int = 22) -> Image.Image:
    """A '7' in dark ink on light paper, as a person draws it, in the middle of the sheet."""
    img = Image.new("L", (size, size), paper)
    s = size / 300
    ImageDraw.Draw(img).line([(90 * s, 80 * s), (210 * s, 80 * s), (130 * s, 230 * s)], fill=ink, width=int(width * s))
    return img


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return load_digit(encoded(drawn_seven(), "PNG"))


def similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 images (1 = the same up to brightness)."""
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def test_mnist_convention_box_20_centre_of_mass_centred_light_on_dark(reference: np.ndarray) -> None:
    assert reference.shape == (28, 28) and reference.dtype == np.uint8
    rows, cols = np.flatnonzero(reference.any(axis=1)), np.flatnonzero(reference.any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)  # fits 20x20 (+1: anti-aliased edge)
    cy, cx = ndimage.center_of_mass(reference.astype(float))
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert reference.max() == 255 and reference[0].max() == 0  # light digit, dark ground
    assert 0 < ((reference > 0) & (reference < 255)).sum()  # anti-aliased: grey edges


def test_a_thin_tall_stroke_keeps_its_aspect_ratio() -> None:
    img = Image.new("L", (200, 400), 255)
    ImageDraw.Draw(img).line([(100, 50), (100, 350)], fill=0, width=16)
    seen = load_digit(encoded(img, "PNG"))
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    assert rows[-1] - rows[0] + 1 >= 20 and cols[-1] - cols[0] + 1 <= 4


@pytest.mark.parametrize(
    "fmt,mode,kwargs",
    [("PNG", "L", {}), ("JPEG", "RGB", {"quality": 70}), ("BMP", "RGB", {}), ("GIF", "P", {}),
     ("WEBP", "RGB", {"quality": 80}), ("PNG", "RGBA", {})],
)  # fmt: skip
def test_every_format_and_colour_mode_gives_the_same_digit(reference, fmt: str, mode: str, kwargs: dict) -> None:
    img = drawn_seven().convert(mode)
    assert similar(load_digit(encoded(img, fmt, **kwargs)), reference) > 0.95


def test_light_ink_on_dark_is_detected(reference: np.ndarray) -> None:
    inverted = Image.eval(drawn_seven(), lambda v: 255 - v)  # chalk on a blackboard
    assert similar(load_digit(encoded(inverted, "PNG")), reference) > 0.95


def test_transparent_drawings_in_either_ink(reference: np.ndarray) -> None:
    alpha = Image.eval(drawn_seven(), lambda v: 255 - v)  # opaque where the ink is
    dark = Image.merge("RGBA", [Image.new("L", alpha.size, 0)] * 3 + [alpha])
    light = Image.merge("RGBA", [Image.new("L", alpha.size, 255)] * 3 + [alpha])
    assert similar(load_digit(encoded(dark, "PNG")), reference) > 0.95
    assert similar(load_digit(encoded(light, "PNG")), reference) > 0.95


def test_uneven_light_is_not_ink(reference: np.ndarray) -> None:
    """Paper going from bright to darker than half its brightness across the sheet (a shadow):
    a global threshold would take the shadowed paper for ink."""
    levels = np.asarray(drawn_seven(), dtype=np.float32)
    shade = np.linspace(1.0, 0.4, levels.shape[1])[None, :]
    photo = Image.fromarray(np.clip(levels * shade, 0, 255).astype(np.uint8))
    assert similar(load_digit(encoded(photo, "JPEG", quality=85)), reference) > 0.9


def test_specks_of_dirt_do_not_move_the_box(reference: np.ndarray) -> None:
    img = drawn_seven()
    draw = ImageDraw.Draw(img)
    for x, y in [(15, 15), (280, 20), (20, 285), (285, 280)]:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=30)
    assert similar(load_digit(encoded(img, "PNG")), reference) > 0.95


def test_mnist_digits_as_photos_come_back_close_to_themselves() -> None:
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a '1', 20 pixels tall, centred as MNIST's are
    for _ in range(5):
        seen = load_digit(images.photo_like(digit, rng, uneven_light=True))
        assert similar(seen, digit) > 0.8


def test_animated_gif_uses_its_first_frame(reference: np.ndarray) -> None:
    frames = [drawn_seven().convert("P"), Image.new("P", (300, 300), 0)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert similar(load_digit(data), reference) > 0.95


def test_bad_files_get_one_line_each(tmp_path) -> None:
    png = encoded(drawn_seven(), "PNG")
    cases = {
        b"": "empty file",
        b"hello, I am text": "not an image",
        png[: len(png) // 2]: "damaged or truncated image",
        encoded(Image.new("L", (64, 64), 200), "PNG"): "blank: no ink found",
        encoded(Image.new("1", (8000, 6000)), "PNG"): "too large: 8000x6000 pixels",
        b"\0" * (images.MAX_BYTES + 1): "too large: 20.0 MiB",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError) as caught:
            load_digit(data)
        assert str(caught.value).startswith(reason) and "\n" not in str(caught.value)
    with pytest.raises(ImageError, match="no such file"):
        load_digit(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="a directory"):
        load_digit(tmp_path)


@pytest.mark.parametrize(
    "levels,fmt",
    [
        (lambda a: a.astype(np.uint16) * 257, "PNG"),  # 16-bit grey, full range
        (lambda a: a.astype(np.uint16) * 16, "PNG"),  # a 12-bit camera's range in a 16-bit file
        (lambda a: (a / 255).astype(np.float32), "TIFF"),  # float (mode F) in [0, 1]
        (lambda a: a.astype(np.int32) * 100_000 - 2**30, "TIFF"),  # 32-bit integer (mode I), negative too
    ],
)
def test_16_bit_and_float_images_are_scaled_by_their_range(reference: np.ndarray, levels, fmt: str) -> None:
    """Pillow's convert("L") clips these to white (16-bit) or black (float in [0, 1]): read as blank before."""
    img = Image.fromarray(levels(np.asarray(drawn_seven())))
    data = encoded(img, fmt)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I", "F")
    assert similar(load_digit(data), reference) > 0.95


def test_a_flat_16_bit_image_is_still_blank() -> None:
    with pytest.raises(ImageError, match="blank"):
        load_digit(encoded(Image.fromarray(np.full((64, 64), 40_000, np.uint16)), "PNG"))


def test_fifos_devices_and_directories_are_refused_before_reading(tmp_path) -> None:
    """Reading a FIFO waits for a writer forever and /dev/zero never ends: refused from their stat."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    cases = {fifo: "a FIFO (named pipe), not an image file", tmp_path / "zero.png": "a device, not an image file",
             tmp_path: "a directory, not an image file"}  # fmt: skip
    for path, reason in cases.items():
        with pytest.raises(ImageError) as caught:
            load_digit(path)
        assert str(caught.value) == reason


def small_thin_seven(side: int = 400, tall: int = 30, width: int = 2) -> Image.Image:
    """The issue's picture: a thin 7, ``tall`` pixels high, dark on a large white sheet (ink on under 0.1% of it)."""
    img = Image.new("L", (side, side), 255)
    s, x, y = tall / 150, side / 2 - 12, side / 2 - 15  # drawn_seven's strokes, scaled down, in the middle
    ImageDraw.Draw(img).line([(x, y), (x + 120 * s, y), (x + 40 * s, y + 150 * s)], fill=30, width=width)
    return img


def blurred(a: np.ndarray) -> np.ndarray:
    """A 28x28 image softened by a pixel, so that a 1-pixel stroke half a pixel off still compares."""
    return ndimage.gaussian_filter(a.astype(float), 1)


def noisy_jpeg(img: Image.Image) -> bytes:
    levels = np.asarray(img, np.float32) * 0.9 + np.random.default_rng(0).normal(0, 3, (img.height, img.width))
    return encoded(Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8)), "JPEG", quality=70)


@pytest.mark.parametrize("kind", ["dark on white", "light on black", "noisy JPEG"])
def test_a_small_thin_digit_on_a_large_sheet_is_ink(reference: np.ndarray, kind: str) -> None:
    """Before, with ink on under 1% of the picture, the 1st and 99th percentiles both were paper: the
    polarity came out wrong (dark ink kept dark) and the picture was refused as "blank: no ink found"."""
    img = small_thin_seven()
    assert (np.asarray(img) < 128).mean() < 0.001
    data = {"dark on white": lambda: encoded(img, "PNG"),
            "light on black": lambda: encoded(Image.eval(img, lambda v: 255 - v), "PNG"),
            "noisy JPEG": lambda: noisy_jpeg(img)}[kind]()  # fmt: skip
    levels = images.grey(images.open_image(data))
    assert images.light_ink(levels)[1] is (kind != "light on black")  # inverted exactly when the ink is dark
    seen = load_digit(data)
    assert seen.max() == 255 and seen[0].max() == 0
    assert similar(blurred(seen), blurred(reference)) > 0.9  # the same 7 (thinner)


@pytest.mark.parametrize(
    "picture,inverted",
    [
        (lambda: drawn_seven(), True),  # dark on light, ink on about 4% of it
        (lambda: Image.eval(drawn_seven(), lambda v: 255 - v), False),  # chalk on a blackboard
        (lambda: Image.fromarray(255 - MNIST_ONE).resize((280, 280)), True),  # an MNIST-like digit printed
        (lambda: Image.fromarray(MNIST_ONE).resize((280, 280)), False),  # MNIST's own light on dark
        (lambda: Image.open(io.BytesIO(images.photo_like(MNIST_ONE, np.random.default_rng(1)))), True),
    ],
)
def test_polarity_of_pictures_with_plenty_of_ink(picture, inverted: bool) -> None:
    levels = images.grey(picture())
    assert images.light_ink(levels)[1] is inverted


def test_a_few_bright_glints_do_not_turn_dark_ink_light() -> None:
    """Mid-grey paper, dark ink on a few percent of it, and a handful of white pixels (glare): the
    percentiles decide, not the extremes, so the glints, whiter than the ink is dark, do not."""
    levels = np.asarray(drawn_seven(ink=60, paper=128), np.float32).copy()
    levels[[40, 41, 260], [40, 41, 250]] = 255
    assert images.light_ink(levels)[1] is True
    assert images.light_ink(255 - levels)[1] is False


@pytest.mark.parametrize("noise", [0, 3])
def test_a_large_blank_sheet_is_still_blank(noise: int) -> None:
    """The extremes decide polarity when the percentiles see nothing; a sheet with no ink is still refused."""
    levels = 235 + np.random.default_rng(0).normal(0, noise, (400, 400))
    data = encoded(Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8)), "JPEG", quality=70)
    with pytest.raises(ImageError, match=r"^blank: no ink found \(a picture of one digit expected\)$"):
        load_digit(data)


MNIST_ONE = np.zeros((28, 28), np.uint8)
MNIST_ONE[4:24, 12:16] = 255  # a '1', 20 pixels tall, centred as MNIST's are
