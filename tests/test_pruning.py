"""Pruned sweeps: the pruner configs, the job's side (a trial reporting each epoch) in
process, and whole pruned sweeps through the real command line on tiny synthetic data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlp.errors import UserError
from mlp.run import experiment
from mlp.sweep.job import TrialLink, judge, make_pruner, progress_step
from tests.helpers import CONF, Sweep

THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01}  # prunes at every step: acc < 1.01
# Any Optuna pruner, from the command line: a new _target_ and its arguments (new keys: +).
ALWAYS_PRUNE = (
    "hydra/sweeper/pruner=none",  # NopPruner has no keys of its own; another pruner's would not fit ThresholdPruner
    "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
    "+hydra.sweeper.pruner.lower=1.01",
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("percentile", optuna.pruners.PercentilePruner),
        ("median", optuna.pruners.MedianPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", type(None)),
    ],
)
def test_each_pruner_config_makes_optunas_own_pruner(name: str, expected: type) -> None:
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", ["hydra/sweeper=optuna", f"hydra/sweeper/pruner={name}"], return_hydra_config=True)
    assert isinstance(make_pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner)), expected)


def test_the_percentile_pruner_stops_only_the_bottom_quarter() -> None:
    """Optuna's ``percentile`` is the share kept: ours (75) stops a trial below the 25th
    percentile of the completed trials at its step, and not one between it and the median."""
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", ["hydra/sweeper=optuna", "hydra/sweeper/pruner=percentile"], return_hydra_config=True)
    pruner = make_pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (0.90, 0.92, 0.94, 0.96, 0.98):  # completed trials, each 0.01 below its end at 50%
        study.add_trial(optuna.trial.create_trial(value=value + 0.01, intermediate_values={50: value}))

    def stopped(value: float) -> bool:
        trial = study.ask()
        trial.report(value, 50)
        return trial.should_prune()

    assert [stopped(v) for v in (0.915, 0.925, 0.935)] == [True, False, False]  # 25th percentile: 0.92; median 0.94


def batch_sizes(cfg: object, trial: optuna.trial.Trial) -> None:
    """A custom_search_space extender (the official sweeper's setting), named by import path below."""
    trial.suggest_categorical("trainer.batch_size", [128, 256])


def test_every_setting_of_the_official_sweeper_reaches_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

    from hydra_plugins.mlp_sweeper.sweeper import StudySweeperConf
    from mlp.sweep.sampler import PerTrialSampler
    from mlp.sweep.settings import Plan

    official = {f.name: f.type for f in dataclasses.fields(OptunaSweeperConf)}
    ours = {f.name: f.type for f in dataclasses.fields(StudySweeperConf)}
    assert official.items() <= ours.items()  # the official schema, extended
    overrides = [
        "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=7",
        "hydra.sweeper.direction=[maximize]", "hydra.sweeper.storage=null", "hydra.sweeper.study_name=other",
        "hydra.sweeper.n_trials=3", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=4",
        "hydra.sweeper.max_failure_rate=0.25",
        "hydra.sweeper.custom_search_space=tests.test_pruning.batch_sizes",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", overrides, return_hydra_config=True)
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # 4 trials at a time: at most one per core
    sweep = Plan.of(cfg, ["optimizer.lr=choice(1e-3,3e-3)"])
    assert isinstance(sweep.sampler, PerTrialSampler) and isinstance(
        sweep.sampler.current, optuna.samplers.RandomSampler
    )
    # A direction list of one (the official sweeper's form); minimize is refused (tests/test_refusals.py).
    assert (sweep.directions, sweep.study_name) == ([optuna.study.StudyDirection.MAXIMIZE], "other")
    assert (sweep.n_trials, sweep.n_jobs, sweep.max_failure_rate, sweep.storage) == (3, 4, 0.25, None)
    assert sweep.space.distributions["optimizer.lr"].choices == (1e-3, 3e-3)  # the command line joins params
    assert set(sweep.space.distributions) == {
        "model.num_layers", "model.layer_size", "model.activation", "model.dropout", "optimizer.lr",
        "optimizer.weight_decay", "trainer.epochs", "data.max_rotation", "data.max_scale",
    }  # fmt: skip
    trial = optuna.create_study(sampler=sweep.sampler).ask()
    sweep.space.suggest(trial)
    sweep.extend(trial)  # given the config, as the official sweeper's hook is
    assert trial.params["trainer.batch_size"] in (128, 256)  # the extender's key joins the trial's overrides
    assert any(o.startswith("trainer.batch_size=") for o in sweep.space.overrides(trial.params))


@pytest.mark.parametrize(
    "spec",
    ["hyperband", {"_target_": "optuna.pruners.NoSuchPruner"}, {"_target_": "optuna.pruners.MedianPruner", "x": 1}],
)
def test_a_bad_pruner_is_one_clear_error(spec: object) -> None:
    with pytest.raises(UserError, match=r"hydra\.sweeper\.pruner.*hydra/sweeper/pruner=percentile\|median"):
        make_pruner(spec)


def test_a_pruner_that_is_not_one_is_refused() -> None:
    with pytest.raises(UserError, match=r"hydra\.sweeper\.pruner.*hydra/sweeper/pruner=percentile\|median"):
        make_pruner({"_target_": "optuna.samplers.RandomSampler"})  # only optuna.pruners.* are made


def test_steps_are_the_percentage_of_epochs_done() -> None:
    assert [progress_step(e, 20) for e in (1, 5, 20)] == [5, 25, 100]
    assert [progress_step(e, 3) for e in (1, 2, 3)] == [33, 67, 100]


def _trial(storage: str, pruner: dict | None) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
    trial = study.ask()
    if pruner is not None:
        trial.set_user_attr("pruner", pruner)
    return study


def as_trial(storage: str, number: int = 0) -> list[str]:
    """The overrides the sweeper gives a trial's job."""
    return [f"sweep.storage={storage}", "sweep.study=s", f"sweep.trial={number}"]


def test_only_trials_of_a_pruned_sweep_get_a_link(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert TrialLink.open(None, None, None) is None  # a single run
    _trial(storage, None)
    assert TrialLink.open(storage, "s", 0) is None  # a sweep without a pruner
    _trial(storage, {"_target_": "optuna.pruners.NopPruner"})
    assert TrialLink.open(storage, "s", 1) is None
    _trial(storage, THRESHOLD)
    assert TrialLink.open(storage, "s", 2) is not None


def _run_trial(cfg):
    """What train.py does in a sweep trial."""
    return experiment.run(cfg, judge(cfg.sweep))


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_a_pruned_trial_stops_records_where_and_is_logged(tiny_cfg, mlruns: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = _trial(storage, THRESHOLD)
    result = _run_trial(tiny_cfg("trainer.epochs=3", *as_trial(storage)))

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING  # the worker tells Optuna PRUNED
    assert trial.user_attrs["pruned_at_epoch"] == 1
    assert trial.intermediate_values == {33: pytest.approx(result.val_acc)}  # stopped after epoch 1 of 3
    client = MlflowClient(f"sqlite:///{mlruns}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["sweep.state"] == "PRUNED" and run.data.tags["sweep.pruned_at_epoch"] == "1"
    assert run.data.metrics["epochs_run"] == 1 and "test/acc" in run.data.metrics
    assert run.data.metrics["val/acc"] == pytest.approx(trial.intermediate_values[33])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "learning_curves.png"} <= artifacts


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_a_trial_is_never_pruned_at_its_last_epoch(tiny_cfg, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = _trial(storage, THRESHOLD)
    _run_trial(tiny_cfg("trainer.epochs=1", *as_trial(storage)))
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # the worker tells COMPLETE
    assert study.trials[0].intermediate_values.keys() == {100}
    assert "pruned_at_epoch" not in study.trials[0].user_attrs


@pytest.mark.slow
def test_pruned_sweep_in_parallel_then_resumed(tmp_path: Path, empty_store: Path) -> None:
    """Trials of 3 epochs are pruned after their first, trials of 1 complete: 2 trials with
    joblib (at once, in 2 processes), then 1 more in the same study in-process."""
    sweep = Sweep(tmp_path, "pruned", empty_store)
    # seed 0: trial 0 has 3 epochs, trials 1 and 2 have 1 (the sampler is seeded per trial from it)
    args = (*ALWAYS_PRUNE, "trainer.epochs=choice(1,3)", "hydra.sweeper.sampler.seed=0", "hydra/launcher=joblib")
    sweep.run(2, *args)
    sweep.run(1, *args[:-1])  # continued by the default launcher: trials in-process

    trials = sweep.study_trials()
    assert len(trials) == 3
    states = {t.number: t.state.name for t in trials}
    expected = {t.number: "PRUNED" if t.params["trainer.epochs"] == 3 else "COMPLETE" for t in trials}
    assert states == expected and {states[0], states[1]} == {"PRUNED", "COMPLETE"}  # both kinds, in parallel

    children = {c.info.run_id: c for c in sweep.runs("child")}
    assert len(children) == 3 and len(sweep.runs("parent")) == 1  # one parent per study
    by_trial = {t.number: children[t.user_attrs["mlflow_run_id"]] for t in trials}
    # joblib: a trial per core at a time, each given 1 thread (recorded in its config)
    assert {by_trial[n].data.params["trainer.threads"] for n in range(2)} == {"1"}
    for number, child in by_trial.items():
        pruned = states[number] == "PRUNED"
        assert child.data.tags.get("sweep.state") == ("PRUNED" if pruned else None)
        assert child.data.metrics["epochs_run"] == 1
        assert child.info.status == "FINISHED"
    best = optuna.load_study(study_name="pruned", storage=sweep.storage).best_trial
    assert best.params["trainer.epochs"] == 1  # the winner comes from a completed trial
    assert "epochs: 1" in sweep.best.read_text() and f"trial={best.number} " in sweep.best.read_text()
