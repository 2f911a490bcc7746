"""Sweeps through the real command line: tiny synthetic data, 1 epoch, MLflow and the study
in a temporary folder."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_train

pytestmark = pytest.mark.slow


class Sweep:
    """One temporary sweep set-up: storage, tracking store, sweep dir and best.yaml path."""

    def __init__(self, root: Path, study: str = "test"):
        self.root, self.study = root, study
        self.storage = f"sqlite:///{root}/optuna.db"
        self.mlruns = root / "mlruns"
        self.best = root / "conf" / "model" / "best.yaml"

    def args(self, n_trials: int, *extra: str) -> list[str]:
        epochs = [] if any(e.startswith("trainer.epochs=") for e in extra) else ["trainer.epochs=1"]
        return [
            "-m", "hydra/sweeper=optuna", "data=synthetic", *epochs, "trainer.batch_size=64",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={self.study}",
            f"hydra.sweeper.storage={self.storage}", f"hydra.sweeper.best_config={self.best}",
            f"tracking.dir={self.mlruns}", f"hydra.sweep.dir={self.root}/multirun", *extra,
        ]  # fmt: skip

    def run(self, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
        done = run_train(*self.args(n_trials, *extra), cwd=self.root)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def study_trials(self) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=self.study, storage=self.storage).trials

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.mlruns}/mlflow.db")

    def runs(self, role: str) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("mnist-mlp")
        runs = client.search_runs([experiment.experiment_id])
        return [r for r in runs if ("mlflow.parentRunId" in r.data.tags) == (role == "child")]

    def sweep_py(self, *args: str) -> subprocess.CompletedProcess:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{self.mlruns}/mlflow.db", "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args, "--storage", self.storage],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A study of 3 trials: a sweep of 2, then the same command again for 1 more."""
    sweep = Sweep(tmp_path_factory.mktemp("sweep"))
    sweep.run(2)
    sweep.first_params = [t.params for t in sweep.study_trials()]
    sweep.run(1)
    return sweep


def test_running_again_continues_the_study(swept: Sweep) -> None:
    trials = swept.study_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.params for t in trials[:2]] == swept.first_params  # kept, not repeated
    assert trials[0].user_attrs["reference"] == "base config"  # a new study starts from the defaults
    assert trials[0].params["model.num_layers"] == 4 and trials[0].params["model.activation"] == "leaky_relu"


def test_sweep_leaves_trials_parents_and_children(swept: Sweep) -> None:
    trials = swept.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    parents = [r for r in swept.runs("parent") if r.data.tags.get("sweep.role") == "parent"]
    first, second = sorted(parents, key=lambda r: r.info.start_time)
    children = swept.runs("child")
    assert len(children) == 3
    by_parent = {}
    for child in children:
        by_parent.setdefault(child.data.tags["mlflow.parentRunId"], []).append(int(child.data.tags["sweep.trial"]))
    assert {k: sorted(v) for k, v in by_parent.items()} == {first.info.run_id: [0, 1], second.info.run_id: [2]}
    parent = second
    assert sorted(int(c.data.tags["sweep.trial"]) for c in children) == [0, 1, 2]
    assert {c.data.tags["sweep.study"] for c in children} == {"test"}
    client = swept.client()
    for child in children:
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.png", "confusion_matrix.csv"} <= names
        trial = trials[int(child.data.tags["sweep.trial"])]
        assert child.data.metrics["val/acc"] == pytest.approx(trial.value)  # the objective is validation accuracy
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "optimization_results.yaml"} <= parent_files
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")} >= {"optuna/optimization_history.png"}
    assert parent.data.metrics["best/val_acc"] == max(t.value for t in trials)
    # The second sweep kept the best.yaml that the first one wrote.
    assert [a.path for a in client.list_artifacts(second.info.run_id, "previous")] == ["previous/best.yaml"]
    assert not list(client.list_artifacts(first.info.run_id, "previous"))


def test_best_yaml_holds_the_best_trial_and_reproduces_it(swept: Sweep) -> None:
    best = max(swept.study_trials(), key=lambda t: t.value)
    text = swept.best.read_text()
    assert text.startswith("# @package _global_")
    assert f"trial {best.number}," in text
    values = yaml.safe_load(text)
    for key, value in best.params.items():
        section, name = key.split(".")
        assert values[section][name] == pytest.approx(value), key

    # The test's best.yaml under a name of its own (the repo ships a conf/model/best.yaml).
    (swept.best.parent / "swept_best.yaml").write_text(text)
    done = run_train(
        "model=swept_best", "data=synthetic", f"hydra.searchpath=[file://{swept.root}/conf]",
        f"tracking.dir={swept.mlruns}", "tracking.log_model=false", f"hydra.run.dir={swept.root}/rerun", cwd=swept.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rerun = [r for r in swept.runs("parent") if "sweep.role" not in r.data.tags]
    assert len(rerun) == 1
    assert rerun[0].data.metrics["val/acc"] == best.value  # the same, to every digit


def test_sweep_py_leaderboard_list_and_export(swept: Sweep) -> None:
    listed = swept.sweep_py("list")
    assert listed.returncode == 0 and "test: 3 complete, 0 failed" in listed.stdout
    board = swept.sweep_py("leaderboard", "test", "--top", "2")
    assert board.returncode == 0, board.stderr
    lines = board.stdout.strip().splitlines()
    assert lines[0].startswith("| trial | state | val_acc | test_acc") and len(lines) == 4
    best = max(swept.study_trials(), key=lambda t: t.value)
    assert lines[2].startswith(f"| {best.number} | COMPLETE | {best.value:.4f}")
    out = swept.root / "exported.yaml"
    export = swept.sweep_py("export", "test", "--trial", "1", "--out", str(out))
    assert export.returncode == 0, export.stderr
    trial = swept.study_trials()[1]
    values = yaml.safe_load(out.read_text())
    assert values["model"]["num_layers"] == trial.params["model.num_layers"]
    missing = swept.sweep_py("leaderboard", "nope")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"error: no study 'nope' in {swept.storage}; studies there: test"
    )


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="fail")
    sweep.run(4, "optimizer=sgd", "optimizer.schedule=none", "optimizer.lr=choice(0.01,1e30)",
             )  # fmt: skip
    states = {t.params["optimizer.lr"]: t.state.name for t in sweep.study_trials()}
    assert states == {0.01: "COMPLETE", 1e30: "FAIL"}
    children = sweep.runs("child")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert failed and all("non-finite" in c.data.tags["failure_reason"] for c in failed)
    assert sweep.best.exists()  # written from the trials that completed


def test_unknown_search_key_stops_before_any_trial(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="typo")
    done = run_train(*sweep.args(2, "model.layerz=choice(1,2)"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.params.model.layerz")
    assert not (tmp_path / "mlruns").exists() or not sweep.runs("child")


def test_trials_left_running_by_an_interruption_are_failed(tmp_path: Path) -> None:
    from mlp.sweeps import fail_stale_trials, sweep_owner

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="cut", storage=storage, direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    study.ask()  # a trial whose process was killed: RUNNING forever
    alive = study.ask()  # a trial of another sweep, still running, sharing the study
    alive.set_user_attr("sweep_owner", sweep_owner())
    ended = subprocess.Popen(["true"])
    ended.wait()
    study.ask().set_user_attr("sweep_owner", f"{socket.gethostname()}:{ended.pid}")  # its sweep was killed
    assert fail_stale_trials(storage, "cut") == 2
    states = [t.state.name for t in optuna.load_study(study_name="cut", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL", "RUNNING", "FAIL"]
    assert study.trials[1].user_attrs["failure_reason"] == "left RUNNING by an interrupted sweep"
    assert fail_stale_trials(storage, "new") == 0  # an unknown study is new, not an error


def test_a_sweep_where_no_trial_completes_ends_with_one_clear_line(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="none-complete")
    done = run_train(*sweep.args(1, "optimizer=sgd", "optimizer.schedule=none", "optimizer.lr=1e30"), cwd=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of study 'none-complete' completed (1 failed, 0 pruned)"), done.stderr
    assert "Traceback" not in done.stderr
    assert [t.state.name for t in sweep.study_trials()] == ["FAIL"]
    (parent,) = sweep.runs("parent")
    assert parent.info.status == "FAILED"
    assert not sweep.best.exists()
