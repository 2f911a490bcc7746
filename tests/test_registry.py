"""The Model Registry: which runs register, where the alias `champion` goes, what a version
carries; the registered model loaded in a fresh process, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlp import registry
from mlp.experiment import run
from mlp.sweeps import winner_record
from tests.conftest import ROOT, run_train


def test_champion_moves_only_to_a_version_at_least_as_good(tiny_cfg) -> None:
    result = run(tiny_cfg("trainer.epochs=1"))
    client = MlflowClient(result.tracking_uri)
    mlflow.set_tracking_uri(result.tracking_uri)
    model_uri = mlflow.search_logged_models(experiment_ids=[result.experiment_id], output_format="list")[0].model_uri
    moves = []
    for val_acc in (0.90, 0.80, 0.90, 0.95):
        r = registry.register(model_uri, "digits", result.run_id, val_acc, {"study": "s", "trial": "7"})
        moves.append((r.version, r.champion, r.champion_version))
    # v2 (0.80) does not take it from v1 (0.90); v3 ties and takes it; v4 is better.
    assert moves == [("1", True, "1"), ("2", False, "1"), ("3", True, "3"), ("4", True, "4")]
    version = client.get_model_version_by_alias("digits", "champion")
    assert str(version.version) == "4" and version.run_id == result.run_id
    assert {k: version.tags[k] for k in ("run_id", "study", "trial", "val_acc")} == {
        "run_id": result.run_id, "study": "s", "trial": "7", "val_acc": "0.95"
    }  # fmt: skip
    assert (
        "registered as digits version 2; champion stays version 1"
        in registry.Registered("digits", "2", False, "1").summary()
    )


def test_a_run_can_opt_in_and_its_version_carries_its_accuracies(tiny_cfg) -> None:
    result = run(tiny_cfg("trainer.epochs=1", "tracking.register=true", "tracking.registered_model=mine"))
    assert result.registered is not None and result.registered.champion
    assert "registered as mine version 1, now models:/mine@champion" in result.summary()
    version = MlflowClient(result.tracking_uri).get_model_version_by_alias("mine", "champion")
    assert float(version.tags["val_acc"]) == result.val_acc and float(version.tags["test_acc"]) == result.test_acc


def test_winner_origin_reads_the_winner_files_header(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "best_x.yaml").write_text(
        "# @package _global_\n# winner: study=x trial=12 value=0.97 run=abc\n"
    )
    (tmp_path / "model" / "mlp.yaml").write_text("num_layers: 2\n")
    folders = [str(tmp_path / "elsewhere"), str(tmp_path)]
    assert registry.winner_origin({"hydra.choice.model": "best_x"}, folders) == {"study": "x", "trial": "12"}
    assert registry.winner_origin({"hydra.choice.model": "mlp"}, folders) is None
    assert registry.winner_origin({}, folders) is None


def test_the_shipped_winner_file_has_a_winner_line() -> None:
    origin = registry.winner_origin({"hydra.choice.model": "best"}, [str(ROOT / "conf")])
    study, trial, _ = winner_record(ROOT / "conf" / "model" / "best.yaml")
    assert origin == {"study": study, "trial": str(trial)}  # e.g. tpe-0, 69: the sweep it came from


@pytest.mark.slow
def test_train_model_best_registers_with_study_and_trial(tmp_path: Path) -> None:
    """`python train.py model=<winner file>` registers without being asked; the version names the study and trial."""
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "best_t.yaml").write_text(
        textwrap.dedent("""\
            # @package _global_
            # winner: study=t trial=3 value=0.5 run=abc
            defaults:
              - override /data: synthetic
            model: {num_layers: 2, layer_size: 32, activation: relu, dropout: 0.0}
            trainer: {epochs: 1, device: cpu, progress: false}
            """)
    )
    done = run_train("--config-dir", str(tmp_path / "conf"), "model=best_t", f"tracking.dir={tmp_path / 'mlruns'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "registered as mnist-mlp version 1, now models:/mnist-mlp@champion" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert (version.tags["study"], version.tags["trial"]) == ("t", "3")


def test_fresh_process_pyfunc_gives_the_runs_test_accuracy(champion: dict) -> None:
    """The registered model, loaded with mlflow.pyfunc in a new process, on the 10,000 MNIST test
    images as they come (uint8, 0-255, [N, 28, 28]): probabilities, and the run's exact accuracy."""
    script = textwrap.dedent(f"""\
        import json, mlflow, numpy as np
        from mlp.data import read_mnist
        _, _, x, y = read_mnist({str(ROOT / "data")!r})
        model = mlflow.pyfunc.load_model("models:/mnist-mlp@champion", model_config={{"device": "cpu"}})
        probs = model.predict(x.numpy())
        print(json.dumps({{"shape": probs.shape, "acc": int((probs.argmax(1) == y.numpy()).sum()) / len(y),
                           "sums": [float(probs.sum(1).min()), float(probs.sum(1).max())]}}))
        """)
    done = subprocess.run(
        [sys.executable, "-c", script], env=champion["env"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [10000, 10]
    assert out["acc"] == champion["result"].test_acc  # exactly, not approximately
    assert out["sums"] == pytest.approx([1, 1], abs=1e-5)
