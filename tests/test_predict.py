"""`python predict.py IMAGE ...` as a user runs it: photos of digits read by the registered
champion, bad files named with their reason, the 28x28 images saved on request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ROOT, subprocess_env


def predict(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_photos_are_read_and_bad_files_named(champion: dict, digit_photos: list, tmp_path: Path) -> None:
    good = digit_photos[:4]
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("L", (80, 80), 230).save(tmp_path / "blank.png")
    bad = ["notes.png", "empty.jpg", "blank.png", "missing.gif"]
    args = [str(p) for p, _ in good[:2]] + bad + [str(p) for p, _ in good[2:]]
    done = predict(*args, "--save-input", "seen", env=champion["env"], cwd=tmp_path)
    assert done.returncode == 1  # some files failed; the others were still read
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(good)
    for (path, label), line in zip(good, lines, strict=True):
        match = re.fullmatch(rf"{re.escape(str(path))}: (\d) \((\d+\.\d)%\), runner-up (\d) \((\d+\.\d)%\)", line)
        assert match, line
        assert int(match[1]) == label and int(match[3]) != label and float(match[2]) >= float(match[4])
        seen = np.asarray(Image.open(tmp_path / "seen" / f"{path.name}.28x28.png"))
        assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0  # MNIST's light on dark
    assert done.stderr.strip().splitlines() == [
        "notes.png: error: not an image (PNG, JPEG, BMP, GIF, WebP, ... expected)",
        "empty.jpg: error: empty file",
        "blank.png: error: blank: no ink found (a picture of one digit expected)",
        "missing.gif: error: no such file",
        "4 of 8 file(s) could not be read",
    ]
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()  # nothing stray where it ran


def test_without_a_model_it_says_how_to_make_one(tmp_path: Path, digit_photos: list) -> None:
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/none/mlflow.db")
    done = predict(str(digit_photos[0][0]), env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: no tracking store at {tmp_path}/none/mlflow.db yet: "
        "train and register one with:  python train.py model=best   (or any run with tracking.register=true)"
    )
