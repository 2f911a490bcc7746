"""Any picture of one digit -> the 28x28 image MNIST would have made of it.

MNIST's own recipe (LeCun et al.): the digit's bounding box scaled to fit 20x20 pixels keeping
its aspect ratio, anti-aliased, then placed in a 28x28 field so that its centre of mass is at
the centre; a light digit on a dark ground. Before that, a photo needs its ink found:

1. decode with Pillow (first frame of an animation, EXIF orientation, transparency on white);
2. grey, shrunk to at most ``WORK_SIDE`` pixels (the result is 20 pixels tall anyway);
3. polarity: the border is mostly paper (its median); the ink is on the side where the picture
   reaches further from it (1st/99th percentiles, or the extremes when ink covers under ~1%);
   dark ink is inverted, so that ink is always light;
4. uneven light: the ground is estimated by a grey opening (min then max filter wider than a
   stroke) on a small copy and subtracted, so a shadow or a gradient is not ink; on paper,
   ink is measured relative to the light the paper gets there (light multiplies);
5. Otsu's threshold on what remains separates ink from ground; specks much smaller than the
   largest stroke are dropped; the ink keeps its grey levels (anti-aliased edges).

predict.py, the web app (mlp/serve/app.py) and benchmarks/recognizer.py all call ``load_digit``.
``pieces`` counts the separate pieces of ink in its 28x28 answer (the web app says when there are several).
"""

from __future__ import annotations

import io
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mlp.errors import UserError

MAX_PIXELS = 40_000_000  # larger images are refused (a 40-megapixel photo is already generous)
MAX_BYTES = 20 * 2**20  # larger files are refused before decoding
WORK_SIDE = 256  # longest side the search for ink works at, in pixels
GROUND_SIDE = 64  # longest side of the copy the ground (paper, light) is estimated on
MIN_CONTRAST = 40  # ink must stand this far (of 255) above the ground somewhere, or the image is blank
WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow's modes of grey deeper than 8 bits
SPECK = 0.08  # pieces of ink smaller than this fraction of the largest piece are noise
PIECE_INK = 32  # in a 28x28 image, ink at least this strong (of 255) belongs to a piece; fainter is a soft edge


class ImageError(UserError):
    """A file that cannot be read as a picture of a digit; the message says why."""


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode a file (path) or its bytes with Pillow; one-line ImageError for an empty, absurdly
    large, damaged, truncated or non-image file."""
    data = source if isinstance(source, bytes) else _read(Path(source))
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_BYTES:
        raise ImageError(f"too large: {len(data) / 2**20:.1f} MiB (limit {MAX_BYTES // 2**20} MiB)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                limit = f"limit {MAX_PIXELS / 1e6:.0f} megapixels"
                raise ImageError(f"too large: {img.width}x{img.height} pixels ({limit})")
            if img.format == "JPEG":  # decode a big photo at a reduced scale straight away (DCT scaling): far faster
                img.draft(img.mode, (WORK_SIDE, WORK_SIDE))
            img.load()  # the first frame of an animation
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (PNG, JPEG, BMP, GIF, WebP, ... expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's word for truncated and damaged data
        raise ImageError(f"damaged or truncated image ({e})") from None
    return img


NOT_A_FILE = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a device",
              stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}  # fmt: skip


def _read(path: Path) -> bytes:
    """The file's bytes; anything but a regular file is refused from its stat, before it is opened
    (reading a FIFO waits for a writer, /dev/zero never ends)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = NOT_A_FILE.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise ImageError(f"{kind}, not an image file")
        if info.st_size > MAX_BYTES:
            raise ImageError(f"too large: {info.st_size / 2**20:.1f} MiB (limit {MAX_BYTES // 2**20} MiB)")
        with path.open("rb") as f:
            return f.read(MAX_BYTES + 1)  # a file growing meanwhile is still caught by open_image's size check
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as e:
        raise ImageError(f"cannot read it ({e.strerror or e})") from None


def grey(img: Image.Image) -> np.ndarray:
    """The picture as float32 grey levels 0-255, upright, transparency flattened onto white
    (a drawing of dark strokes on nothing) unless that leaves nothing to see, then the opacity
    itself is the ink (light strokes on nothing)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in WIDE_GREY:  # Pillow's convert("L") would clip everything above 255 to white
        return by_range(np.asarray(img, dtype=np.float64))
    if img.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        flat = Image.new("RGBA", img.size, "white")
        flat.alpha_composite(img)
        levels = np.asarray(flat.convert("L"), dtype=np.float32)
        if np.ptp(levels) < MIN_CONTRAST and np.ptp(np.asarray(alpha)) >= MIN_CONTRAST:
            return np.asarray(alpha, dtype=np.float32)
        return levels
    return np.asarray(img.convert("L"), dtype=np.float32)


def by_range(values: np.ndarray) -> np.ndarray:
    """Grey levels of any depth (16-bit, 32-bit integer, float) scaled to 0-255 by their real range:
    a 16-bit scan, a 12-bit camera's or a float image in [0, 1] all become 8-bit grey."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.float32)
    low, high = values[finite].min(), values[finite].max()
    scaled = (np.where(finite, values, low) - low) * (255 / (high - low) if high > low else 0.0)
    return scaled.astype(np.float32)


def _shrink(levels: np.ndarray, side: int) -> np.ndarray:
    h, w = levels.shape
    if max(h, w) <= side:
        return levels
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(levels, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def light_ink(levels: np.ndarray) -> tuple[np.ndarray, bool]:
    """(the picture with light ink, whether it was inverted). The rule: the paper is the border's
    median (the border is mostly paper, however little ink there is); the ink is on the side where
    the picture reaches further from the paper, seen at the 1st and 99th percentiles (so a few
    stray pixels, a glint or a speck, do not decide), or, when neither of those stands
    ``MIN_CONTRAST`` from the paper (ink on under about 1% of the picture: a small thin digit on a
    large sheet), at the darkest and lightest pixels. Dark ink (paper nearer the light end) is
    inverted. A blank picture stays as it is (and is refused as blank afterwards)."""
    h, w = levels.shape
    b = max(1, min(h, w) // 20)
    border = np.concatenate([levels[:b].ravel(), levels[-b:].ravel(), levels[:, :b].ravel(), levels[:, -b:].ravel()])
    paper = float(np.median(border))
    low, high = np.percentile(levels, [1, 99])
    if max(high - paper, paper - low) < MIN_CONTRAST:  # the percentiles see no ink: too little of it
        low, high = float(levels.min()), float(levels.max())
    return (255 - levels, True) if high - paper < paper - low else (levels, False)


def ground(ink: np.ndarray) -> np.ndarray:
    """The light falling on the paper, without the strokes: a grey opening (a min filter wider
    than a stroke, then a max filter as wide) on a small copy, smoothed and scaled back."""
    h, w = ink.shape
    small = Image.fromarray(np.clip(_shrink(ink, GROUND_SIDE), 0, 255).astype(np.uint8))
    k = max(3, (max(small.size) // 5) | 1)  # odd, about a fifth of the picture: wider than any stroke
    opened = small.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))
    smooth = opened.filter(ImageFilter.GaussianBlur(k / 2))
    return np.asarray(smooth.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the level that best splits the values into two classes (max between-class variance)."""
    hist, edges = np.histogram(values, bins=256, range=(0, 256))
    p = hist / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(edges[int(np.nanargmax(between)) + 1])


def ink_map(levels: np.ndarray) -> np.ndarray:
    """Grey levels of a picture -> ink strength 0-255 (0 where there is none), ground removed."""
    ink, inverted = light_ink(_shrink(levels, WORK_SIDE))
    dark = ground(ink)
    strength = np.clip(ink - dark, 0, None)
    if inverted:  # ink on paper: light multiplies, so ink is the fraction of the paper's light it takes away
        strength *= 255 / np.maximum(255 - dark, 16)
    if strength.max() < MIN_CONTRAST:
        raise ImageError("blank: no ink found (a picture of one digit expected)")
    threshold = max(otsu(strength), MIN_CONTRAST / 2)
    mask = strength > threshold
    if not mask.any():
        raise ImageError("blank: no ink found (a picture of one digit expected)")
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(pieces.ravel())[1:]
    specks = np.flatnonzero(sizes < SPECK * sizes.max()) + 1
    keep = ndimage.binary_dilation(mask & ~np.isin(pieces, specks), iterations=2)  # strokes and their soft edges
    full = np.percentile(strength[mask], 90)  # a typical stroke's strength becomes full ink
    soft = np.clip((strength - threshold / 2) / max(full - threshold / 2, 1.0), 0, 1)
    return 255 * soft * keep


def mnist_frame(ink: np.ndarray) -> np.ndarray:
    """Ink map -> 28x28 uint8: bounding box scaled to fit 20x20 (aspect kept, anti-aliased),
    centre of mass at the centre of the 28x28 field."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = box.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(
        Image.fromarray(box.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS), dtype=np.float32
    )
    digit = np.clip(digit, 0, 255)
    cy, cx = ndimage.center_of_mass(digit)
    top = int(np.clip(round(13.5 - cy), 0, 28 - size[1]))
    left = int(np.clip(round(13.5 - cx), 0, 28 - size[0]))
    field = np.zeros((28, 28), dtype=np.float32)
    field[top : top + size[1], left : left + size[0]] = digit
    return np.round(field).astype(np.uint8)


def pieces(digit: np.ndarray) -> int:
    """How many separate pieces of ink a 28x28 image holds: 1 for one digit, 2 for "12" written side by
    side. Pieces are 8-connected pixels of ink of at least ``PIECE_INK`` (the soft edges would join
    close ones); specks, under ``SPECK`` of the largest piece, are noise here as in ``ink_map``."""
    labels, count = ndimage.label(digit >= PIECE_INK, structure=np.ones((3, 3)))
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= SPECK * sizes.max()).sum())


def load_digit(source: str | Path | bytes) -> np.ndarray:
    """A picture of one digit (file path or bytes) -> the 28x28 uint8 image the model reads."""
    return mnist_frame(ink_map(grey(open_image(source))))


def photo_like(digit: np.ndarray, rng: np.random.Generator, uneven_light: bool = False) -> bytes:
    """An MNIST digit (28x28 uint8, light on dark) made to look like a photo of ink on paper, as a
    JPEG: inverted to dark on light, scaled to 200-400 pixels, rotated up to 8 degrees, padded
    and shifted on a larger sheet, and with ``uneven_light`` a shadow across it. For the tests
    and benchmarks/recognizer.py."""
    side = int(rng.integers(200, 401))
    paper = int(rng.integers(200, 250))
    dark = int(rng.integers(10, 60))  # the ink's grey level
    ink = paper - digit.astype(np.float32) * (paper - dark) / 255  # dark ink on light paper
    img = Image.fromarray(ink.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BICUBIC, fillcolor=paper)
    sheet_w, sheet_h = side + int(rng.integers(20, 200)), side + int(rng.integers(20, 200))
    sheet = Image.new("L", (sheet_w, sheet_h), paper)
    sheet.paste(img, (int(rng.integers(0, sheet_w - side + 1)), int(rng.integers(0, sheet_h - side + 1))))
    levels = np.asarray(sheet, dtype=np.float32)
    if uneven_light:  # light falling off across the sheet: a third darker on one side
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:sheet_h, 0:sheet_w]
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        levels = levels * (1 - 0.35 * (ramp - ramp.min()) / np.ptp(ramp))
    levels += rng.normal(0, 3, levels.shape)  # sensor noise
    out = io.BytesIO()
    Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(60, 90)))
    return out.getvalue()
