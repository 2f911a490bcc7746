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

from mlp import experiment
from mlp.errors import UserError
from mlp.sweeps import TrialReporter, make_pruner, progress_step
from tests.conftest import CONF
from tests.test_sweeps import Sweep

THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01}  # prunes at every step: acc < 1.01
# Any Optuna pruner, from the command line: a new _target_ and its arguments (new keys: +).
ALWAYS_PRUNE = ("hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=1.01")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
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


def extra_space(cfg: object, trial: optuna.trial.Trial) -> None:
    """A custom_search_space extender (the official sweeper's setting), named by import path below."""
    trial.suggest_float("extra", 0.0, 1.0)


# The official sweeper instantiates custom_search_space without a whitelist; Hydra 1.4 warns.
@pytest.mark.filterwarnings("ignore:hydra.utils.instantiate.. resolved _target_='tests.test_pruning.extra_space'")
def test_every_setting_of_the_official_sweeper_keeps_working() -> None:
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

    from hydra_plugins.mlp_sweeper.tracked_optuna import TrackedOptunaSweeper, TrackedOptunaSweeperConf

    official = {f.name: f.type for f in dataclasses.fields(OptunaSweeperConf)}
    ours = {f.name: f.type for f in dataclasses.fields(TrackedOptunaSweeperConf)}
    assert official.items() <= ours.items()
    overrides = [
        "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=7",
        "hydra.sweeper.direction=minimize", "hydra.sweeper.storage=null", "hydra.sweeper.study_name=other",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=4", "hydra.sweeper.max_failure_rate=0.25",
        "hydra.sweeper.custom_search_space=tests.test_pruning.extra_space",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", overrides, return_hydra_config=True)
    sweeper = Plugins.instance()._instantiate(cfg.hydra.sweeper)  # as Hydra makes its sweeper
    impl = sweeper.sweeper  # the official implementation, configured by the official settings
    assert isinstance(sweeper, TrackedOptunaSweeper)
    assert isinstance(impl.sampler, optuna.samplers.RandomSampler) and impl.sampler._rng.rng.randint(10**9) == (
        optuna.samplers.RandomSampler(seed=7)._rng.rng.randint(10**9)
    )
    assert (impl.direction, impl.storage, impl.study_name) == ("minimize", None, "other")
    assert (impl.n_trials, impl.n_jobs, impl.max_failure_rate) == (3, 4, 0.25)
    trial = optuna.create_study().ask()
    impl.custom_search_space_extender(cfg, trial)
    assert 0.0 <= trial.params["extra"] <= 1.0
    assert impl.params["model.num_layers"] == "range(2, 6)" and len(impl.params) == 8  # conf's search space


@pytest.mark.parametrize(
    "spec",
    ["hyperband", {"_target_": "optuna.pruners.NoSuchPruner"}, {"_target_": "optuna.pruners.MedianPruner", "x": 1}],
)
def test_a_bad_pruner_is_one_clear_error(spec: object) -> None:
    with pytest.raises(UserError, match=r"hydra\.sweeper\.pruner.*hydra/sweeper/pruner=none\|median"):
        make_pruner(spec)


def test_a_pruner_that_is_not_one_is_refused() -> None:
    with pytest.raises(UserError, match=r"hydra\.sweeper\.pruner.*hydra/sweeper/pruner=none\|median"):
        make_pruner({"_target_": "optuna.samplers.RandomSampler"})  # only optuna.pruners.* are made


def test_steps_are_the_percentage_of_epochs_done() -> None:
    assert [progress_step(e, 20) for e in (1, 5, 20)] == [5, 25, 100]
    assert [progress_step(e, 3) for e in (1, 2, 3)] == [33, 67, 100]


def _trial(storage: str, pruner: dict | None) -> tuple[optuna.Study, int]:
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
    trial = study.ask()
    if pruner is not None:
        trial.set_user_attr("pruner", pruner)
    return study, trial._trial_id


def as_trial(storage: str, trial_id: int) -> list[str]:
    """The overrides the sweeper gives a trial's job."""
    return [f"sweep.storage={storage}", "sweep.study=s", "sweep.trial=0", f"sweep.trial_id={trial_id}"]


def test_only_trials_of_a_pruned_sweep_get_a_reporter(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert TrialReporter.for_trial(None, None, None) is None  # a single run
    assert TrialReporter.for_trial(storage, "s", _trial(storage, None)[1]) is None  # a sweep without a pruner
    assert TrialReporter.for_trial(storage, "s", _trial(storage, {"_target_": "optuna.pruners.NopPruner"})[1]) is None
    assert TrialReporter.for_trial(storage, "s", _trial(storage, THRESHOLD)[1]) is not None


def test_a_pruned_trial_stops_is_recorded_pruned_and_logged(tiny_cfg, mlruns: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study, trial_id = _trial(storage, THRESHOLD)
    result = experiment.run(tiny_cfg("trainer.epochs=3", *as_trial(storage, trial_id)))

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values == {33: pytest.approx(result.val_acc)}  # stopped after epoch 1 of 3
    assert trial.value == pytest.approx(result.val_acc)
    run = MlflowClient(f"sqlite:///{mlruns}/mlflow.db").get_run(result.run_id)
    assert run.data.tags["sweep.state"] == "PRUNED" and run.data.tags["sweep.pruned_at_epoch"] == "1"
    assert run.data.metrics["epochs_run"] == 1 and "test/acc" in run.data.metrics
    history = MlflowClient(f"sqlite:///{mlruns}/mlflow.db").get_metric_history(result.run_id, "val/acc")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{mlruns}/mlflow.db").list_artifacts(result.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "learning_curves.png"} <= artifacts


def test_a_trial_is_never_pruned_at_its_last_epoch(tiny_cfg, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study, trial_id = _trial(storage, THRESHOLD)
    experiment.run(tiny_cfg("trainer.epochs=1", *as_trial(storage, trial_id)))
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # the sweeper tells COMPLETE
    assert study.trials[0].intermediate_values.keys() == {100}


@pytest.mark.slow
def test_pruned_sweep_in_parallel_then_resumed(tmp_path: Path) -> None:
    """Trials of 3 epochs are pruned after their first, trials of 1 complete: 4 trials with
    joblib (in parallel processes), then 2 more in the same study in-process."""
    sweep = Sweep(tmp_path, study="pruned")
    args = (*ALWAYS_PRUNE, "trainer.epochs=choice(1,3)", "hydra/launcher=joblib")
    sweep.run(4, *args)
    sweep.run(2, *args[:-1])  # continued by the default launcher: trials in-process

    trials = sweep.study_trials()
    assert len(trials) == 6
    states = {t.number: t.state.name for t in trials}
    expected = {t.number: "PRUNED" if t.params["trainer.epochs"] == 3 else "COMPLETE" for t in trials}
    assert states == expected and {"PRUNED", "COMPLETE"} <= set(states.values())

    children = {int(c.data.tags["sweep.trial"]): c for c in sweep.runs("child")}
    assert sorted(children) == list(range(6)) and len(sweep.runs("parent")) == 2
    # joblib: a trial per core at a time, each given 1 thread (recorded in its config)
    assert {children[n].data.params["trainer.threads"] for n in range(4)} == {"1"}
    for number, child in children.items():
        pruned = states[number] == "PRUNED"
        assert child.data.tags.get("sweep.state") == ("PRUNED" if pruned else None)
        assert child.data.metrics["epochs_run"] == 1
    best = optuna.load_study(study_name="pruned", storage=sweep.storage).best_trial
    assert best.params["trainer.epochs"] == 1  # best.yaml comes from a completed trial
    assert "epochs: 1" in sweep.best.read_text() and f"trial {best.number}," in sweep.best.read_text()
