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
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlp.run import registry
from mlp.run.experiment import run
from mlp.run.winner_files import winner_origin, winner_record
from tests.helpers import ROOT, compose_cfg

CANONICAL = registry.canonical_split()


def _logged_model(result) -> str:
    mlflow.set_tracking_uri(result.tracking_uri)
    return mlflow.search_logged_models(experiment_ids=[result.experiment_id], output_format="list")[0].model_uri


def test_the_canonical_split_is_the_default_data_config() -> None:
    assert registry.TrainedOn.of(compose_cfg([]).data) == CANONICAL == registry.TrainedOn("mnist", 10000, 0)


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_champion_moves_only_to_a_strictly_better_model_on_the_canonical_split(tiny_cfg) -> None:
    result = run(tiny_cfg("trainer.epochs=1"))
    model_uri = _logged_model(result)
    other_size, other_seed = registry.TrainedOn("mnist", 1, 0), registry.TrainedOn("mnist", 10000, 1)
    synthetic = registry.TrainedOn("synthetic", 100, 0)
    steps = [(CANONICAL, 0.90), (CANONICAL, 0.80), (CANONICAL, 0.90), (synthetic, 1.0), (other_size, 1.0),
             (other_seed, 0.99), (CANONICAL, 0.95)]  # fmt: skip
    registered = [
        registry.register(model_uri, "digits", result.run_id, acc, {"study": "s", "trial": "7"}, trained_on)
        for trained_on, acc in steps
    ]
    # v2 (0.80) does not take it from v1 (0.90), nor does v3 (a tie), nor v4-v6 (other data or
    # split: a 1.0 there says nothing about MNIST's validation set); v7 is better on the same split.
    assert [(r.version, r.champion, r.champion_version) for r in registered] == [
        ("1", True, "1"), ("2", False, "1"), ("3", False, "1"), ("4", False, "1"), ("5", False, "1"),
        ("6", False, "1"), ("7", True, "7"),
    ]  # fmt: skip
    summaries = [r.summary() for r in registered]
    assert summaries[0] == "registered as digits version 1, now models:/digits@champion"
    assert summaries[2] == (
        "registered as digits version 3; champion stays version 1: "
        "this model's validation accuracy 90.00% is not above its 90.00% on the same split"
    )
    assert summaries[3] == (
        "registered as digits version 4; champion stays version 1: this model was trained on data=synthetic, "
        "the champion on MNIST's canonical split (val_size 10000, split_seed 0); only such models are compared"
    )
    assert "this model was trained on MNIST with val_size 1, split_seed 0, the champion on" in summaries[4]
    assert "this model was trained on MNIST with val_size 10000, split_seed 1, the champion on" in summaries[5]
    assert summaries[6] == (
        "registered as digits version 7, now models:/digits@champion (validation accuracy 95.00% > 90.00% of version 1)"
    )
    client = MlflowClient(result.tracking_uri)
    version = client.get_model_version_by_alias("digits", "champion")
    assert str(version.version) == "7" and version.run_id == result.run_id
    assert {k: version.tags[k] for k in ("run_id", "study", "trial", "val_acc")} == {
        "run_id": result.run_id, "study": "s", "trial": "7", "val_acc": "0.95"
    }  # fmt: skip
    tags = ("data.name", "data.val_size", "data.split_seed", "champion_eligible")
    assert [version.tags[k] for k in tags] == ["mnist", "10000", "0", "true"]
    assert [client.get_model_version("digits", "5").tags[k] for k in tags] == ["mnist", "1", "0", "false"]
    assert [client.get_model_version("digits", "4").tags[k] for k in tags] == ["synthetic", "100", "0", "false"]


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_without_a_champion_other_data_is_registered_but_never_champion(tiny_cfg) -> None:
    result = run(tiny_cfg("trainer.epochs=1", "tracking.register=true", "tracking.registered_model=mine"))
    assert result.registered is not None and not result.registered.champion
    assert (
        "registered as mine version 1; no champion: this model was trained on data=synthetic; only models "
        "trained on MNIST's canonical split (val_size 10000, split_seed 0) become champion"
    ) in result.summary()
    with pytest.raises(MlflowException):
        MlflowClient(result.tracking_uri).get_model_version_by_alias("mine", "champion")
    version = MlflowClient(result.tracking_uri).get_model_version("mine", "1")
    assert float(version.tags["val_acc"]) == result.val_acc and float(version.tags["test_acc"]) == result.test_acc
    assert (version.tags["data.name"], version.tags["champion_eligible"]) == ("synthetic", "false")


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_a_champion_registered_before_data_tags_is_judged_by_its_runs_params(tiny_cfg) -> None:
    """A version registered before versions recorded their data: its run's params say what it was
    trained on. Here data=synthetic, so it was never comparable: a model on the canonical split
    takes the alias even with a lower validation accuracy, and the line says why."""
    result = run(tiny_cfg("trainer.epochs=1"))
    model_uri = _logged_model(result)
    old = mlflow.register_model(model_uri, "digits", tags={"run_id": result.run_id, "val_acc": "0.99"})
    client = MlflowClient(result.tracking_uri)
    client.set_registered_model_alias("digits", "champion", old.version)
    moved = registry.register(model_uri, "digits", result.run_id, 0.5, {}, CANONICAL)
    assert moved.champion and moved.summary() == (
        "registered as digits version 2, now models:/digits@champion "
        "(version 1, the champion until now, was trained on data=synthetic)"
    )


def test_winner_origin_reads_the_winner_files_header(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "best_x.yaml").write_text(
        "# @package _global_\n# winner: study=x trial=12 value=0.97 run=abc\n"
    )
    (tmp_path / "model" / "mlp.yaml").write_text("num_layers: 2\n")
    folders = [str(tmp_path / "elsewhere"), str(tmp_path)]
    assert winner_origin({"hydra.choice.model": "best_x"}, folders) == {"study": "x", "trial": "12"}
    assert winner_origin({"hydra.choice.model": "mlp"}, folders) is None
    assert winner_origin({}, folders) is None


def test_the_shipped_winner_file_has_a_winner_line() -> None:
    origin = winner_origin({"hydra.choice.model": "best"}, [str(ROOT / "conf")])
    recorded = winner_record(ROOT / "conf" / "model" / "best.yaml")
    assert origin == {"study": recorded.study, "trial": str(recorded.trial)}  # e.g. tpe-0, 69: the sweep it came from
    assert recorded.trained_on == CANONICAL  # read from its data section: it was written before the line named it


def _winner_file(folder: Path, study: str, data: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"best_{study}.yaml").write_text(
        textwrap.dedent(f"""\
            # @package _global_
            # winner: study={study} trial=3 value=0.5 run=abc
            defaults:
              - override /data: {data}
            model: {{num_layers: 1, layer_size: 16, activation: relu, dropout: 0.0}}
            trainer: {{epochs: 1, device: cpu, progress: false}}
            """)
    )


@pytest.mark.slow  # trains two models (in process: train.py run as __main__)
def test_train_model_best_registers_only_a_winner_on_the_canonical_split(train_py, tmp_path: Path) -> None:
    """`python train.py model=<winner file>` registers without being asked, with the study and trial,
    when the winner was trained on MNIST's canonical split; a synthetic study's winner is not
    registered by default, and the summary says why."""
    conf, mlruns = tmp_path / "conf", tmp_path / "mlruns"
    _winner_file(conf / "model", "syn", "synthetic")
    _winner_file(conf / "model", "m", "mnist")
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")

    code, out, err = train_py("--config-dir", str(conf), "model=best_syn", f"tracking.dir={mlruns}")  # in process
    assert code == 0, err[-20:]
    assert (
        "not registered: this winner was trained on data=synthetic, and only models trained on MNIST's "
        "canonical split (val_size 10000, split_seed 0) are registered by default"
    ) in out
    assert client.search_registered_models() == []

    code, out, err = train_py("--config-dir", str(conf), "model=best_m", f"tracking.dir={mlruns}")
    assert code == 0, err[-20:]
    assert "registered as mnist-mlp version 1, now models:/mnist-mlp@champion" in out
    version = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert (version.tags["study"], version.tags["trial"]) == ("m", "3")
    assert (version.tags["data.name"], version.tags["data.val_size"], version.tags["champion_eligible"]) == (
        "mnist", "10000", "true"
    )  # fmt: skip


@pytest.mark.slow
def test_fresh_process_pyfunc_gives_the_runs_test_accuracy(champion: dict) -> None:
    """The registered model, loaded with mlflow.pyfunc in a new process, on the 10,000 MNIST test
    images as they come (uint8, 0-255, [N, 28, 28]): probabilities, and the run's exact accuracy."""
    script = textwrap.dedent(f"""\
        import json, mlflow, numpy as np
        from mlp.run.data import read_mnist
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
