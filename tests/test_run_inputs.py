"""One run's inputs that are refused with one line before anything is written: keys added with
`+`, sizes that cannot fit in memory, unusable output folders, a damaged or deleted tracking
store, raw MNIST files that are not regular files; a full disk and a closed pipe at the end."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from mlp.errors import ConfigError, UserError
from mlp.run import data
from mlp.run.config import validate
from mlp.run.experiment import run
from tests.helpers import ROOT, subprocess_env


@pytest.mark.parametrize(
    ("override", "start", "schema"),
    [
        ("+model.extra=1", "model.extra: Key 'extra' not in 'ModelConfig'", "num_layers, layer_size"),
        ("+trainer.epoch=5", "trainer.epoch: Key 'epoch' not in 'TrainerConfig'", "epochs, batch_size"),
        ("+data.foo=1", "data.foo: Key 'foo' not in 'SyntheticConfig'", "num_train, num_test"),
        ("+foo=1", "foo: Key 'foo' not in 'Config'", "model, optimizer"),
        ("+sweep.studdy=a", "sweep.studdy: Key 'studdy' not in 'SweepConfig'", "study, trial"),
    ],
)
def test_keys_added_with_plus_are_refused(tiny_cfg, mlruns: Path, override: str, start: str, schema: str) -> None:
    with pytest.raises(UserError) as info:
        validate(tiny_cfg(override))
    message = str(info.value)
    assert message.startswith(start) and "accepted keys:" in message and schema in message
    assert "\n" not in message
    assert not mlruns.exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.layer_size=1000000"], "model.layer_size=1000000"),
        (["model.num_layers=1000000"], "model.num_layers=1000000"),
        (["data.num_train=10000000000", "data.val_size=100"], "data.num_train=10000000000"),
        (["data.num_test=10000000000"], "data.num_test=10000000000"),
    ],
)
def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(
    tiny_cfg, mlruns: Path, overrides: list[str], key: str
) -> None:
    with pytest.raises(UserError, match=r"more than this machine's [\d.]+ GB of RAM") as info:
        validate(tiny_cfg(*overrides))
    assert key in str(info.value) and "needs at least" in str(info.value)
    assert not mlruns.exists()


def test_a_large_batch_counts_when_the_model_is_wide(tiny_cfg) -> None:
    """A wide model with a small batch fits; with the whole (synthetic) set as one batch its
    activations are more than the machine has, and the batch size is named."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    images = ram // (4 * 784 * 5)  # a quarter of the RAM as uint8 + float32 images
    width = ram // (4 * images)  # float32 activations of 2 hidden layers for every image: twice the RAM
    wide = [f"model.layer_size={width}", "model.num_layers=3", f"data.num_train={images + 100}", "data.val_size=100"]
    validate(tiny_cfg(*wide, "trainer.batch_size=64"))
    with pytest.raises(UserError, match=rf"^trainer.batch_size={images} is not accepted"):
        validate(tiny_cfg(*wide, f"trainer.batch_size={images}"))


@pytest.mark.parametrize("where", ["file", "under a file", "/proc"])
def test_tracking_dir_that_cannot_be_written_is_refused(tiny_cfg, tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    folder = {"file": a_file, "under a file": a_file / "mlruns", "/proc": Path("/proc/mlruns")}[where]
    with pytest.raises(ConfigError, match=r"^tracking.dir='.*' is not accepted: expected a writable folder"):
        validate(tiny_cfg(f"tracking.dir={folder}"))
    assert a_file.read_text() == "mine\n" and not Path("/proc/mlruns").exists()


@pytest.mark.parametrize("where", ["file", "/proc"])
def test_hydra_run_dir_that_cannot_be_made_is_one_line(train_py, tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    folder = a_file if where == "file" else "/proc/outputs"
    code, _, lines = train_py("data=synthetic", f"hydra.run.dir={folder}")  # in process: the one line, the status
    assert code == 2
    assert lines == [
        f"error: cannot use {folder}: {'File exists' if where == 'file' else 'No such file or directory'} "
        "(an output folder must be a folder you can write in: check hydra.run.dir, hydra.sweep.dir and tracking.dir)"
    ]
    assert a_file.read_text() == "mine\n" and not (tmp_path / "mlruns").exists()


def quick_run(tiny_cfg, *overrides: str):
    return run(tiny_cfg("trainer.epochs=1", "tracking.log_model=false", *overrides))


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
def test_a_damaged_mlflow_db_is_refused_and_left_as_it_was(tiny_cfg, mlruns: Path) -> None:
    """A page of a table that a run does not read (MLflow would write into this file unawares)."""
    quick_run(tiny_cfg)  # a real store with one run
    db = mlruns / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        (root_page,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'webhooks'").fetchone()
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
    damaged = bytearray(db.read_bytes())
    damaged[(root_page - 1) * page_size : root_page * page_size] = b"\xa5" * page_size
    db.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"fails SQLite's integrity check .*; move it away"):
        quick_run(tiny_cfg)
    assert db.read_bytes() == damaged


def test_a_deleted_experiment_says_how_to_restore_it(tiny_cfg, mlruns: Path) -> None:
    mlruns.mkdir()
    uri = f"sqlite:///{mlruns}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("old")
    client.delete_experiment(experiment_id)
    with pytest.raises(UserError) as info:
        quick_run(tiny_cfg, "tracking.experiment=old")
    assert str(info.value) == (
        f"tracking.experiment='old' is deleted in MLflow ({uri}): restore it with `MLFLOW_TRACKING_URI={uri} "
        f"mlflow experiments restore --experiment-id {experiment_id}` "
        "or choose another name with tracking.experiment=..."
    )
    assert client.search_runs([experiment_id], run_view_type=ViewType.ALL) == []


def test_raw_mnist_files_that_are_not_regular_files_are_refused_at_once(tmp_path: Path) -> None:
    """Reading /dev/zero or a FIFO for its md5 would never end: a child process with a time limit."""
    roots = {kind: tmp_path / kind for kind in ("dev-zero", "fifo", "folder")}
    for kind, root in roots.items():
        raw = data.raw_dir(root)
        raw.mkdir(parents=True)
        for name in data.MNIST_MD5:  # the other three files are the real ones
            if name != "train-images-idx3-ubyte":
                (raw / name).symlink_to(data.raw_dir(ROOT / "data") / name)
        target = raw / "train-images-idx3-ubyte"
        {"dev-zero": lambda t: t.symlink_to("/dev/zero"), "fifo": os.mkfifo, "folder": Path.mkdir}[kind](target)
    script = (
        "import sys\nfrom mlp.run import data\nfor root in sys.argv[1:]:\n    try:\n        data.ensure_mnist(root)\n"
    )
    script += "    except data.DataError as e:\n        print(e)\n"
    done = subprocess.run([sys.executable, "-c", script, *map(str, roots.values())], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=subprocess_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{data.raw_dir(root)}/train-images-idx3-ubyte is not a regular file (a folder, FIFO or device?); "
        "put the official file there"
        for root in roots.values()
    ]


def test_a_raw_mnist_file_of_another_size_is_corrupt_without_reading_it(tmp_path: Path) -> None:
    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0" * 100)
    with pytest.raises(data.DataError, match=r"is corrupt \(100 bytes, expected 47040016\)"):
        data.ensure_mnist(tmp_path)


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs) at ``folder``: mounting needs root."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mount -t tmpfs is not permitted here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # the test's MLflow client holds the store open


@pytest.mark.slow  # trains a model (in process: train.py run as __main__)
def test_a_full_disk_ends_the_run_failed_with_one_line(train_py, tmp_path: Path) -> None:
    """A 2 MB disk holds the store (~1 MB) and the figures, not the 3.7 MB model: the copy of
    the model into the artifacts fails with ENOSPC, as on a disk that fills up during a run."""
    with small_disk(tmp_path / "disk", "2m") as disk:
        mlruns = disk / "mlruns"
        code, _, lines = train_py("data=synthetic", "trainer.epochs=1", "trainer.device=cpu", f"tracking.dir={mlruns}")
        assert code == 2
        (line,) = lines
        (failed,) = MlflowClient(f"sqlite:///{mlruns}/mlflow.db").search_runs(["1"])
        assert line.startswith(f"error: no space left (No space left on device, ENOSPC) while writing {mlruns}/")
        assert line.endswith(f"model.pt2: free space or point tracking.dir elsewhere; the MLflow run "
                             f"{failed.info.run_id} ended FAILED")  # fmt: skip
        assert failed.info.status == "FAILED"
        assert not list(mlruns.rglob("model.pt2"))  # the half-written model was removed


@pytest.mark.slow
def test_piping_into_head_is_quiet(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    MlflowClient(f"sqlite:///{mlruns}/mlflow.db").search_experiments()  # the store exists: MLflow says nothing
    command = (f"{sys.executable} {ROOT}/train.py data=synthetic trainer.epochs=1 tracking.log_model=false "
               f"tracking.dir={mlruns} hydra.run.dir={tmp_path}/out | head -1")  # fmt: skip
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr == ""
