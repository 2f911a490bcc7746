"""docs/many_machines.md's SLURM sweep, as the docs write it, on a real SLURM cluster
(scripts/cluster.py) with a real PostgreSQL server and `mlflow server` (scripts/services.py): two
workers submit to the cluster at once, each keeping n_jobs=2 trials in flight as SLURM jobs. Every
trial a SLURM job that completed, one parent run, every trial a child run with its confusion
matrix, nothing RUNNING, and no line about sacct in the workers' logs (the cluster has no
accounting). Synthetic data and 1 epoch instead of the docs' MNIST and 2 epochs: seconds a trial."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mlp.sweep import protocol
from tests import forked
from tests.helpers import ROOT
from tests.test_slurm import env_of, job_state

pytestmark = pytest.mark.slow


def documented_command() -> list[str]:
    """docs/many_machines.md's `train.py -m ... hydra/launcher=slurm_cpu` line, its words after train.py."""
    (line,) = [line for line in (ROOT / "docs" / "many_machines.md").read_text().splitlines()
               if "train.py -m" in line and "hydra/launcher=slurm_cpu" in line]  # fmt: skip
    words = shlex.split(line)
    return words[words.index("-m") :]


def test_the_documented_slurm_sweep_with_two_workers(tmp_path: Path, slurm_cluster: dict, services: dict) -> None:
    env = env_of(slurm_cluster, MLFLOW_TRACKING_URI=services["tracking_uri"])
    documented = documented_command()
    assert "hydra.sweeper.storage=$OPTUNA_STORAGE" in documented  # as scripts/services.py start exports it
    study, workers = "slurm-e2e", []
    for i in range(2):
        test_only = [
            f"hydra.sweeper.storage={services['storage_url']}", f"hydra.sweeper.study_name={study}", "data=synthetic",
            "trainer.epochs=1", "hydra.sweeper.n_trials=2", "hydra.launcher.poll_s=1",
            f"hydra.sweeper.best_config={tmp_path}/best.yaml", f"hydra.sweep.dir={tmp_path}/multirun{i}",
        ]  # fmt: skip
        replaced = {o.split("=")[0] for o in test_only}
        args = [w for w in documented if w.split("=")[0] not in replaced] + test_only
        workers.append(forked.start(ROOT / "train.py", args, cwd=tmp_path, env=env, log=tmp_path / f"worker{i}.log"))
    for i, worker in enumerate(workers):
        log = (tmp_path / f"worker{i}.log").read_text()
        assert worker.wait(timeout=300) == 0, log[-3000:]
        assert "sacct" not in log

    trials = optuna.load_study(study_name=study, storage=services["storage_url"]).trials
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    jobs = {t.user_attrs[protocol.ATTR_SLURM_JOB] for t in trials}
    assert len(jobs) == 4 and {job_state(slurm_cluster, j) for j in jobs} == {"COMPLETED"}
    for worker in {t.user_attrs[protocol.ATTR_WORKER] for t in trials}:  # each worker's two trials ran together
        first, second = sorted((t for t in trials if t.user_attrs[protocol.ATTR_WORKER] == worker),
                               key=lambda t: t.datetime_start)  # fmt: skip
        assert second.datetime_start < first.datetime_complete

    client = MlflowClient(services["tracking_uri"])
    experiment = client.get_experiment_by_name("mnist-mlp")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{protocol.TAG_STUDY}` = '{study}'")
    (parent,) = [r for r in runs if r.data.tags.get(protocol.TAG_ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(protocol.PARENT_RUN) == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == len(runs) - 1 == 4
    assert {r.info.run_id for r in children} == {t.user_attrs[protocol.ATTR_RUN_ID] for t in trials}
    for run in children:
        assert run.info.status == "FINISHED"
        assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
