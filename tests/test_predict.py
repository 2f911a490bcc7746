"""`python predict.py IMAGE ...` as a user runs it: photos of digits read by the registered
champion, bad files named with their reason, the 28x28 images saved on request. Its processes are
forked with their libraries loaded (tests/forked.py); the set-up error runs as typed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict as predict_py
from tests import forked
from tests.helpers import ROOT, subprocess_env


def predict(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return forked.run(ROOT / "predict.py", list(args), cwd=cwd, env=env, timeout=120)


@pytest.mark.slow  # predict.py in a subprocess, the champion
def test_photos_are_read_and_bad_files_named(champion: dict, digit_photos: list, tmp_path: Path) -> None:
    """Pictures read and the 28x28 images saved; each bad file named with its reason, the others still
    read. A FIFO would wait for a writer forever and /dev/zero never ends: each is refused from its stat."""
    good = digit_photos[:4]
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("L", (80, 80), 230).save(tmp_path / "blank.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder").mkdir()
    bad = ["notes.png", "empty.jpg", "blank.png", "missing.gif", "pipe.png", "/dev/zero", "folder"]
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
        "pipe.png: error: a FIFO (named pipe), not an image file",
        "/dev/zero: error: a device, not an image file",
        "folder: error: a directory, not an image file",
        "7 of 11 file(s) could not be read",
    ]
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()  # nothing stray where it ran


def test_without_a_model_it_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """In process: predict.py's main, what it prints and returns (the exit status 2 of a setup error
    through the real process: below)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none/mlflow.db")
    assert predict_py.main([str(ROOT / "samples" / "three.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: no tracking store at {tmp_path}/none/mlflow.db yet: "
        "train and register one with:  python train.py model=best   (or any run with tracking.register=true)"
    )


def test_files_that_are_no_images_are_said_without_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none/mlflow.db")  # no model: never looked for
    (tmp_path / "notes.png").write_text("not a picture")
    assert predict_py.main([str(tmp_path / "missing.png"), str(tmp_path / "notes.png")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path}/missing.png: error: no such file",
        f"{tmp_path}/notes.png: error: not an image (PNG, JPEG, BMP, GIF, WebP, ... expected)",
        "2 of 2 file(s) could not be read",
    ]


def save_input_target(tmp_path: Path, where: str) -> Path:
    """A --save-input folder that cannot be used; the file ``taken`` beside it holds "mine"."""
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes in a read-only folder")
    (tmp_path / "taken").write_text("mine")
    (tmp_path / "ro").mkdir(mode=0o500)
    return {"a file": tmp_path / "taken", "/proc": Path("/proc/seen"), "read-only": tmp_path / "ro" / "seen"}[where]


@pytest.mark.parametrize("where", ["a file", "/proc", "read-only"])
def test_an_unusable_save_input_folder_is_refused_before_any_image_is_read(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    target = save_input_target(tmp_path, where)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none/mlflow.db")  # checked before the model too
    assert predict_py.main(["missing.png", "--save-input", str(target)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1
    assert out.err.startswith(f"error: --save-input='{target}' is not accepted: expected a writable folder")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.slow  # predict.py in a subprocess
def test_a_setup_error_is_status_2_and_one_line_in_a_real_process(tmp_path: Path) -> None:
    target = save_input_target(tmp_path, "a file")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/none/mlflow.db")
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "missing.png", "--save-input", str(target)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"error: --save-input='{target}' is not accepted: expected a writable folder")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.slow  # predict.py in a subprocess, the champion
def test_the_readmes_example_runs_as_written(champion: dict) -> None:
    """The README's `$ python predict.py samples/...` block, run verbatim from the repository
    root on the shipped samples: the same lines, the same digits and status (the percentages
    shown are the shipped champion's; the session's small champion gives its own)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("$ python predict.py samples/"))
    command = lines[start].strip()[2:].split()
    shown = [line.strip() for line in lines[start + 1 : start + 5]]
    done = forked.run(ROOT / command[1], command[2:], cwd=ROOT, env=champion["env"])
    assert done.returncode == 1
    got = done.stdout.strip().splitlines() + done.stderr.strip().splitlines()
    pattern = re.compile(r"(\S+): (\d) \(\d+\.\d%\), runner-up \d \(\d+\.\d%\)")
    read = [pattern.fullmatch(line) for line in got[:2]]
    assert all(read) and [m.group(1, 2) for m in read] == [pattern.fullmatch(line).group(1, 2) for line in shown[:2]]
    assert got[2:] == shown[2:]  # the file that is no image, and the summary, word for word
