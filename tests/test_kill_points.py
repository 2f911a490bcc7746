"""A worker killed (SIGKILL, as a machine dies) at each named point of its life
(mlp.sweep.kill_points), then a later worker of the same study: nothing is left behind. No trial
RUNNING or WAITING, no MLflow run RUNNING, the parent run FINISHED, the killed trial's
configuration retried once (when a trial was in flight), the winner file whole.

Every point on the default path (SQLite study, SQLite MLflow store); on the cluster path (a real
PostgreSQL for the study and a real `mlflow server` on PostgreSQL, over HTTP) the points whose
clearing-up reads what those hold (STORAGE_POINTS)."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mlp.sweep import protocol
from mlp.sweep.kill_points import KILL_AT, POINTS
from tests import forked
from tests.helpers import ROOT, seed_store, subprocess_env, winner_of

pytestmark = pytest.mark.slow

IN_FLIGHT = ("ask", "sampler", "asked", "job", "tell")  # a trial was running when the worker died
# ask: an unclaimed trial found by the start time the storage keeps; asked: a run found only by its
# tags, searched through the server; job: a stale heartbeat in the storage, the run ended KILLED
# through the server and the retry enqueued. The others clear up the same way as one of these
# (sampler, tell: as job) or touch only local files (winner) or the parent run every point ends (report).
STORAGE_POINTS = ("ask", "asked", "job")


def worker_args(root: Path, storage: str, study: str, n_trials: int) -> list[str]:
    return [
        "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none", "data=synthetic", "trainer.epochs=1",
        "trainer.threads=1", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.best_config={root}/best.yaml",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", f"tracking.dir={root}/mlruns",
        f"hydra.sweep.dir={root}/multirun",
    ]  # fmt: skip


def killed_then_finished(root: Path, storage: str, study: str, point: str, env: dict[str, str], train_py) -> None:
    """The first worker, a process of its own, dies at ``point`` (its second trial is the first the
    sampler proposes: the first is the base config, enqueued); a later worker of one trial finishes
    the study (in this process: what it clears up is the point, not its start-up)."""
    first = forked.run(ROOT / "train.py", worker_args(root, storage, study, 2), cwd=root, env={**env, KILL_AT: point})
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    code, _, err = train_py(*worker_args(root, storage, study, 1))
    assert code == 0, err[-30:]


def check_nothing_left(root: Path, storage: str, study_name: str, point: str, client: MlflowClient) -> None:
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    if point in IN_FLIGHT:
        (dead,) = [t for t in trials if t.state.name == "FAIL"]
        assert [r.system_attrs["failed_trial"] for r in retries] == [dead.number]  # retried once
        assert retries[0].state.name == "COMPLETE" and dead.params.items() <= retries[0].params.items()
    else:  # died after its trials, while reporting: nothing to retry
        assert states == ["COMPLETE"] * 3 and not retries
    experiment = client.get_experiment_by_name("mnist-mlp")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{protocol.TAG_STUDY}` = '{study_name}'")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get(protocol.TAG_ROLE) == "parent"]
    assert parent.info.status == "FINISHED"
    assert winner_of(root / "best.yaml") == (study_name, study.best_trial.number)  # whole, and the best


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_killed_at_a_point_leaves_nothing_on_sqlite(
    tmp_path: Path, point: str, empty_store: Path, train_py
) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    seed_store(tmp_path / "mlruns", empty_store)  # what a kill leaves is the point, not how a store is made
    killed_then_finished(tmp_path, storage, "kill", point, subprocess_env(), train_py)
    check_nothing_left(tmp_path, storage, "kill", point, MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db"))


@pytest.mark.parametrize("point", STORAGE_POINTS)
def test_a_worker_killed_at_a_point_leaves_nothing_on_postgresql(
    tmp_path: Path, point: str, services: dict, train_py, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = f"kill-{point}"
    env = subprocess_env(MLFLOW_TRACKING_URI=services["tracking_uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services["tracking_uri"])  # for the later worker, in this process
    killed_then_finished(tmp_path, services["storage_url"], study, point, env, train_py)
    check_nothing_left(tmp_path, services["storage_url"], study, point, MlflowClient(services["tracking_uri"]))
