"""Several sweep workers on one study, as on a cluster: three `train.py -m` processes started at
the same moment on a new study, one killed with SIGKILL in the middle of a trial. Once the
others have finished, the study and MLflow must hold every trial exactly once: the killed one
FAIL (its run KILLED) and retried by a surviving worker, no repeated configuration, no RUNNING
trial or run, one parent run, and the winner file equal to the study's best trial. (The same
logic in process, each case on its own: tests/test_worker.py.)

Run on the default path (SQLite study, SQLite MLflow store) and on the cluster path (a real
PostgreSQL server for the study and a real `mlflow server` on PostgreSQL, over HTTP)."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mlp.sweep.storage import open_storage
from tests import forked
from tests.helpers import ROOT, subprocess_env, winner_of

pytestmark = pytest.mark.slow

TRIALS_PER_WORKER = 2


def worker(root: Path, storage: str, index: int, env: dict[str, str]) -> forked.Forked:
    args = [
        "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none", "data=synthetic", "trainer.epochs=1",
        "trainer.threads=1", f"hydra.sweeper.n_trials={TRIALS_PER_WORKER}", "hydra.sweeper.study_name=workers",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.best_config={root}/best_workers.yaml", "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3", f"tracking.dir={root}/mlruns", f"hydra.sweep.dir={root}/multirun/{index}",
    ]  # fmt: skip
    return forked.start(ROOT / "train.py", args, cwd=root, env=env, log=root / f"worker{index}.log")


def kill_mid_trial(victim: forked.Forked, storage: str, timeout: float = 120) -> int:
    """SIGKILL ``victim`` while one of its trials runs; that trial's number."""
    deadline = time.monotonic() + timeout
    rdb = open_storage(storage)  # one pool for the whole wait; never creates a new SQLite file's tables at once
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="workers", storage=rdb).get_trials(deepcopy=False)
        except KeyError:  # not created yet
            trials = []
        for t in trials:
            mine = t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
            if mine and t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                return t.number
        assert victim.poll() is None, "the worker to kill ended before it ran a trial"
        time.sleep(0.1)  # a trial runs for about a second: each look is a query, 5-10 ms of CPU
    raise AssertionError("the worker to kill never ran a trial")


def check_study_and_runs(root: Path, storage: str, client: MlflowClient, killed: int, survivors: int) -> None:
    study = optuna.load_study(study_name="workers", storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = {t.number: t.state.name for t in trials}
    assert "RUNNING" not in states.values() and "WAITING" not in states.values(), states
    assert states[killed] == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert [r.system_attrs["failed_trial"] for r in retries] == [killed]  # retried once, by another worker
    (retry,) = retries
    assert retry.state.name == "COMPLETE" and retry.params == study.trials[killed].params
    # Every trial but the killed one completed: the survivors' own and the retry, which one of
    # them took (as one of its trials, or after them).
    assert sorted(n for n, s in states.items() if s != "COMPLETE") == [killed]
    assert len(trials) >= survivors * TRIALS_PER_WORKER + 1
    # No configuration asked twice (the retry repeats the killed trial's on purpose).
    configs = [tuple(sorted(t.params.items())) for t in trials if t.number != retry.number]
    assert len(set(configs)) == len(configs)

    experiment = client.get_experiment_by_name("mnist-mlp")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`sweep.study` = 'workers'")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == len(runs) - 1 and not [r for r in runs if r.info.status == "RUNNING"]
    by_trial = {t.number: children[t.user_attrs["mlflow_run_id"]] for t in trials}
    assert len({r.info.run_id for r in by_trial.values()}) == len(trials)  # one run per trial
    assert by_trial[killed].info.status == "KILLED"
    for number, run in by_trial.items():
        if states[number] == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.runName"].startswith(f"trial-{number:03d} mlp-")
            assert run.data.metrics["val/acc"] == pytest.approx(study.trials[number].value)
            assert {"confusion_matrix.png", "confusion_matrix.csv"} <= {
                a.path for a in client.list_artifacts(run.info.run_id)
            }
    assert len(children) == len(trials)
    assert winner_of(root / "best_workers.yaml") == ("workers", study.best_trial.number)


def run_three_workers(root: Path, storage: str, env: dict[str, str], client: MlflowClient) -> None:
    workers = [worker(root, storage, i, env) for i in range(3)]
    killed = kill_mid_trial(workers[0], storage)
    for w in workers[1:]:
        assert w.wait(timeout=240) == 0, (root / f"worker{workers.index(w)}.log").read_text()[-3000:]
    check_study_and_runs(root, storage, client, killed, survivors=2)


def test_three_workers_on_sqlite_one_killed(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    run_three_workers(tmp_path, storage, subprocess_env(), MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db"))


def test_three_workers_on_postgresql_and_an_mlflow_server(tmp_path: Path, services: dict) -> None:
    env = subprocess_env(MLFLOW_TRACKING_URI=services["tracking_uri"])
    run_three_workers(tmp_path, services["storage_url"], env, MlflowClient(services["tracking_uri"]))


def _open(url: str, results: multiprocessing.Queue) -> None:
    try:
        open_storage(url, heartbeat_interval=10, grace_period=30)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}"[:200])


def test_workers_creating_a_new_postgresql_storage_at_once_all_open_it(services: dict) -> None:
    """Four processes open each new database at the same moment: its tables are created once
    and every process opens it (without the retry, about two in three failed here)."""
    base, port = services["storage_url"].rsplit("/", 1)[0], str(services["pg_port"])
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    for n in range(3):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-c", f"CREATE DATABASE fresh{n}"],
                       check=True, capture_output=True)  # fmt: skip
        workers = [ctx.Process(target=_open, args=(f"{base}/fresh{n}", results)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert [results.get() for _ in range(12)] == ["ok"] * 12
