"""A trial's configuration exported as a winner file (conf/model/best*.yaml), by a sweep as it
ends and by ``sweep.py export``: written atomically, never over a file that is not a winner file,
and over a winner file only when it holds a worse trial scored on the same data and split (the
file it replaces kept in the study's MLflow parent run)."""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp.errors import UserError, first_line
from mlp.files import write_atomic
from mlp.run import registry
from mlp.run.winner_files import TrainedOn, WinnerRecord, winner_record
from mlp.sweep import front
from mlp.sweep.kill_points import reach
from mlp.sweep.report import trial_runs

log = logging.getLogger(__name__)


def trial_config(client: MlflowClient, run: Any | None, trial: optuna.trial.FrozenTrial) -> DictConfig:
    """The config a trial ran with: its MLflow run's config.yaml."""
    if run is None:
        raise UserError(f"trial {trial.number} has no MLflow run with its config.yaml to export from")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return OmegaConf.load(client.download_artifacts(run.info.run_id, "config.yaml", tmp))
        except Exception as e:  # an old or remote run without the file
            raise UserError(f"trial {trial.number}: cannot read config.yaml of MLflow run {run.info.run_id}") from e


def best_values(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """What model=best sets: the group options the trial used (``defaults: - override
    /optimizer: sgd``, ``- override /data: synthetic``, so a winner found with any optimizer or
    data reproduces), and the values of the model, optimizer, schedule, trainer and data
    sections (data.root, where the files lie, excepted)."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    chosen = {g: (choices or {}).get(f"hydra.choice.{g}") for g in ("optimizer", "schedule", "data")}
    values: dict[str, Any] = {"defaults": [{f"override /{g}": c} for g, c in chosen.items() if c]}
    values.update({g: {k: v for k, v in resolved[g].items() if k != "_target_"} for g in ("optimizer", "schedule")})
    values.update(model=resolved["model"], trainer=resolved["trainer"])
    values["data"] = {k: v for k, v in resolved["data"].items() if k != "root"}
    if not values["defaults"]:
        del values["defaults"]
    return values


def winner_yaml(study_name: str, record: WinnerRecord, values: dict[str, Any], run_id: str, path: Path) -> str:
    option = path.stem if path.parent.name == "model" else None
    rerun = (
        f"python train.py model={option}"
        if option
        else f"copy it into conf/model/ and run python train.py model={path.stem}"
    )
    header = (
        "# @package _global_\n"
        f"{record.line(run_id)}\n"
        f"# The best trial of Optuna study '{study_name}' ({datetime.date.today().isoformat()}): trial {record.trial}, "
        f"validation accuracy {record.value:.4f} on {record.trained_on}, MLflow run {run_id or 'unknown'}.\n"
        f"# Reproduce it with:  {rerun}\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(values))


class WinnerKept(UserError):
    """A winner file kept as it is: it records a better trial, or one scored on other data."""

    def __init__(self, path: Path, recorded: WinnerRecord, offered: WinnerRecord, flag: str):
        self.path, self.recorded = path, recorded
        held = f"{path} is kept: it holds trial {recorded.trial} of study {recorded.study}"
        held += f", which scored {recorded.value:.4f}"
        offer = f"trial {offered.trial} of study {offered.study}"
        if recorded.trained_on != offered.trained_on:
            why = (f"{held} on {recorded.trained_on or 'unrecorded data'}; {offer} was scored on {offered.trained_on}: "
                   "only scores on the same data and split are compared")  # fmt: skip
        else:
            why = f"{held}; {offer} scored {offered.value:.4f}, no better"
        super().__init__(f"{why} ({flag} replaces it)")

    @property
    def tag(self) -> str:
        r = self.recorded
        return f"{self.path.name}: {r.value:.4f} (study {r.study}, trial {r.trial})"


def winner_path_problem(path: Path) -> str | None:
    """Why a winner file cannot be written at ``path`` (a folder, under a file, an unwritable
    folder, a file that is not a winner file), or None."""
    if path.is_dir():
        return "it is a folder"
    if path.exists() and winner_record(path) is None:
        return "it is a file of something else, not a winner file (no '# winner:' line): it is left as it is"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


WINNER_PATHS = "a new file or a winner file, in a writable folder"


def update_winner(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    client: MlflowClient,
    parent_id: str | None,
    path: str | Path,
    replace: bool = False,
    flag: str = "hydra.sweeper.replace_winner=true",
) -> bool:
    """Write ``trial`` of ``study`` to the winner file at ``path``, the rule of a sweep and of
    ``sweep.py export`` alike: never over a file that is not a winner file; False when the file
    already holds that trial; WinnerKept when it records a trial that scored at least as well or
    was scored on other data or another split, unless ``replace``
    (``flag`` says how to ask for that); the file it replaces goes to the parent run's artifacts
    (``previous/``) first, and the new one is written atomically."""
    path = Path(path)
    if (problem := winner_path_problem(path)) is not None:
        raise UserError(f"cannot write {path}: {problem} (a winner file goes to {WINNER_PATHS})")
    recorded = winner_record(path)
    if recorded is not None and (recorded.study, recorded.trial) == (study.study_name, trial.number):
        return False
    run = trial_runs(client, study).get(trial.number)
    config = trial_config(client, run, trial)
    # Validation accuracy decides, maximized in every study (mlp.sweep.settings.objectives).
    offered = WinnerRecord(study.study_name, trial.number, front.accuracy(study, trial), TrainedOn.of(config.data))
    if recorded is not None and not replace:
        if recorded.value >= offered.value or recorded.trained_on != offered.trained_on:
            raise WinnerKept(path, recorded, offered, flag)
    values = best_values(config, run.data.tags)
    if path.exists():
        keep_previous(path, client, parent_id, study.study_name)
    try:
        write_atomic(
            path, winner_yaml(study.study_name, offered, values, run.info.run_id, path), lambda _: reach("winner")
        )
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e} (a winner file goes to {WINNER_PATHS})") from e
    log.info("wrote %s: trial %d, validation accuracy %.4f", path, trial.number, offered.value)
    return True


def keep_previous(path: Path, client: MlflowClient, parent_id: str | None, study_name: str) -> None:
    """The winner file about to be replaced, kept in the study's parent run (``previous/``)."""
    if parent_id is None:
        raise UserError(
            f"{path} is not replaced: study {study_name!r} has no MLflow parent run to keep its "
            "current version in (move the file away first, or write elsewhere)"
        )
    try:
        client.log_artifact(parent_id, str(path), artifact_path="previous")
    except Exception as e:  # a parent run deleted or out of reach: keep the file rather than lose it
        raise UserError(
            f"{path} is not replaced: its current version could not be kept in MLflow run {parent_id} ({first_line(e)})"
        ) from e


def register_compact(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, client: MlflowClient, within: float, name: str
) -> registry.Registered:
    """Register ``trial``'s logged model under ``name`` with the alias ``compact``, beside the
    champion, only when the trial may be the compact model: on the study's front and within
    ``within`` of its best validation accuracy (mlp.sweep.front); else one line saying why."""
    if (reason := front.why_not_compact(study, trial, within)) is not None:
        raise UserError(f"trial {trial.number} does not become {name}@{registry.COMPACT}: {reason}")
    run = trial_runs(client, study).get(trial.number)
    if run is None:
        raise UserError(f"trial {trial.number} has no MLflow run to take its model from")
    trained_on = registry.TrainedOn.of(run.data.params) if "data.name" in run.data.params else None
    if trained_on is None or not trained_on.canonical:
        raise UserError(
            f"trial {trial.number} was trained on {trained_on or 'unrecorded data'}: only models trained on "
            f"{registry.canonical_split()} take an alias"
        )
    found = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'", max_results=1)
    if not found:
        raise UserError(
            f"trial {trial.number}'s run logged no model: the trials must log theirs (tracking.log_model=true, "
            "as hydra/sweeper=optuna_pareto sets)"
        )
    mlflow.set_tracking_uri(client.tracking_uri)  # mlflow.register_model's store: the study's
    tags = {"study": study.study_name, "trial": str(trial.number), "role": registry.COMPACT}
    if "test/acc" in run.data.metrics:
        tags["test_acc"] = repr(run.data.metrics["test/acc"])
    acc = front.accuracy(study, trial)
    return registry.register_as(found[0].model_uri, name, registry.COMPACT, run.info.run_id, acc, tags, trained_on)
