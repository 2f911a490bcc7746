"""A worker joins its study: checks the tracking store and the study storage, then creates the
study (recording its fixed config, opening its one MLflow parent run and enqueueing the
reference trials) or joins it (same direction, same fixed config, the parent run found).

Also the study's side of a trial that the worker asks for: its MLflow run under the parent
(``open_trial_run``), an earlier trial with the same parameters (``same_params``), and what
ends a dead worker's trial (``EndRunAndRetry``, the storage's stale-trial callback)."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp.errors import ConfigError, UserError, first_line
from mlp.run import tracking
from mlp.run.winner_files import winner_record
from mlp.sqlite_files import sqlite_file
from mlp.sweep import protocol, slurm
from mlp.sweep.settings import Plan, fixed_config, shipped_defaults
from mlp.sweep.storage import STORAGE_CHOICES, check_storage, open_storage

log = logging.getLogger(__name__)
# Heartbeats, their stale-trial callback and fail_stale_trials and metric names are "experimental" in Optuna 5
# (since 2.8); they are what Optuna offers for dead workers, and this project pins Optuna.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
RUNNING = optuna.trial.TrialState.RUNNING
JOIN_WAIT = 60  # seconds a joining worker waits for the study's creator to record its parent run


@dataclass(frozen=True)
class Joined:
    """A study as one worker sees it: Optuna's study and storage, the MLflow side, its parent run."""

    study: optuna.Study
    storage: Any  # optuna.storages.BaseStorage
    rdb: optuna.storages.RDBStorage | None  # the same storage when it is a database (heartbeats), else None
    study_id: int
    client: MlflowClient
    tracking_uri: str
    experiment_id: str
    parent_id: str
    created: bool  # by this worker

    def trial_id(self, number: int) -> int:
        """The storage's id of the study's trial ``number`` (what the storage's own methods take)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def end_run(client: MlflowClient, run_id: str | None, status: str, reason: str | None = None) -> None:
    """End an MLflow run that is still RUNNING (a job that ended it itself keeps its status)."""
    if not run_id:
        return
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            if reason:
                client.set_tag(run_id, protocol.FAILURE, reason[:5000])
            client.set_terminated(run_id, status)


class EndRunAndRetry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """For a trial whose worker died: end its MLflow run KILLED, cancel its SLURM job (nobody would
    read its result), then enqueue it again once."""

    def __init__(self, client: MlflowClient, experiment_id: str, study_name: str, max_retry: int):
        super().__init__(max_retry=max_retry)
        self.client, self.experiment_id, self.study_name = client, experiment_id, study_name

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = "its worker died (no heartbeat for the grace period: killed, or its machine died)"
        log.warning("trial %d: %s; marked FAIL", trial.number, reason)
        for run_id in self.runs_of(trial):
            end_run(self.client, run_id, "KILLED", reason)
        slurm.cancel(trial.user_attrs.get(protocol.ATTR_SLURM_JOB))
        super().__call__(study, trial)

    def runs_of(self, trial: optuna.trial.FrozenTrial) -> set[str]:
        """The trial's run by the id stored on it, and any RUNNING run tagged with its number: a
        worker killed between opening the run and storing its id leaves such a one."""
        ids = {trial.user_attrs.get(protocol.ATTR_RUN_ID)} - {None}
        tagged = (
            f"tags.`{protocol.TAG_STUDY}` = {protocol.quoted(self.study_name)} "
            f"AND tags.`{protocol.TAG_TRIAL}` = '{trial.number}' AND attributes.status = 'RUNNING'"
        )
        with contextlib.suppress(Exception):  # the tracking store is gone: the stored id is all there is
            ids |= {r.info.run_id for r in self.client.search_runs([self.experiment_id], filter_string=tagged)}
        return ids


def join(plan: Plan, config: DictConfig) -> Joined:
    """Check the tracking store and the storage, then create or join the study."""
    if plan.storage is not None:
        check_storage(plan.storage)  # another application's database is left as it is, and no tracking store made
    uri, experiment_id = tracking.use_experiment(config.tracking)
    client = MlflowClient(uri)
    storage = _storage(plan, EndRunAndRetry(client, experiment_id, plan.study_name, plan.max_retry))
    searched = set(plan.space.distributions)
    fixed = fixed_config(config, searched, plan.space.fixed)  # as the trials run: recorded, compared
    forms = (fixed, fixed_config(config, searched), shipped_defaults(config))  # + the older form, the defaults
    try:
        study = optuna.create_study(
            study_name=plan.study_name, storage=storage, sampler=plan.sampler, directions=plan.directions
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=plan.study_name, storage=storage, sampler=plan.sampler)
        parent_id, created = _check_joined(study, plan, client, uri, forms), False
    else:
        try:
            parent_id, created = _create_parent(study, plan, config, client, (uri, experiment_id), fixed), True
        except BaseException:
            # Set up in part: the study goes too (where the storage still takes a write), so that the
            # same command starts it afresh rather than waiting for a parent run never recorded.
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=plan.study_name, storage=storage)
            raise
    client.update_run(parent_id, status="RUNNING")
    rdb = storage if isinstance(storage, optuna.storages.RDBStorage) else None
    study_id = storage.get_study_id_from_name(plan.study_name)
    return Joined(study, storage, rdb, study_id, client, uri, experiment_id, parent_id, created)


def _storage(plan: Plan, on_dead_trial: EndRunAndRetry) -> Any:
    """The study storage: in memory, or the database with Optuna's heartbeat settings."""
    if plan.storage is None:
        return optuna.storages.InMemoryStorage()
    if (path := sqlite_file(plan.storage)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return open_storage(
            plan.storage,
            heartbeat_interval=max(1, int(plan.heartbeat_interval)),
            grace_period=max(2, int(plan.grace)),
            heartbeat_stale_trial_callback=on_dead_trial,
        )
    except Exception as e:  # a bad URL, a missing driver, a server that does not answer
        raise ConfigError("hydra.sweeper.storage", plan.storage, f"{STORAGE_CHOICES} ({first_line(e)})") from e


def _create_parent(
    study: optuna.Study, plan: Plan, config: DictConfig, client: MlflowClient, where: tuple[str, str], fixed: dict
) -> str:
    """The study's creator: its parent run (in the experiment at ``where``: tracking URI,
    experiment id), its fixed config, its reference trials."""
    uri, experiment_id = where
    parent = client.create_run(
        experiment_id,
        run_name=f"study {plan.study_name}",
        tags={
            protocol.TAG_STUDY: plan.study_name,
            protocol.TAG_ROLE: "parent",
            protocol.TAG_STORAGE: str(plan.storage),
        },
    )
    try:
        study.set_metric_names(plan.objectives)  # optuna-dashboard and Optuna's plots name them
        study.set_user_attr(protocol.STUDY_FIXED_CONFIG, fixed)
        study.set_user_attr(protocol.STUDY_TRACKING_URI, uri)
        study.set_user_attr(protocol.STUDY_PARENT_RUN, parent.info.run_id)
        client.log_dict(parent.info.run_id, fixed, "study_fixed_config.json")
        for name, params in reference_points(plan, config):
            study.enqueue_trial(params, user_attrs={protocol.ATTR_REFERENCE: name})
    except BaseException as e:  # set up in part (a full disk, Ctrl-C): the parent run must not stay RUNNING
        end_run(client, parent.info.run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", first_line(e))
        raise
    return parent.info.run_id


def reference_points(plan: Plan, config: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    """Known-good configurations a new study starts from: the base config, those the sweep's
    ``enqueue_trials`` list, and the searched values of the study's winner file from an earlier
    study (with the base config's values where one has none), each if it lies in the search space."""
    base = {key: OmegaConf.select(config, key) for key in plan.space.distributions}
    points = [("base config", base)]
    for i, given in enumerate(plan.enqueue_trials):
        points.append((f"hydra.sweeper.enqueue_trials[{i}]", base | {k: given[k] for k in given if k in base}))
    path = plan.winner_file
    if path is not None and winner_record(path) is not None:
        try:
            winner = OmegaConf.load(path)
            found = {key: OmegaConf.select(winner, key, default=base[key]) for key in base}
            found = OmegaConf.to_container(OmegaConf.create(found), enum_to_str=True)
            points.append((f"winner file {path.name}", found))
        except Exception as e:  # noqa: BLE001 - a damaged winner file: start without it
            log.warning("%s: not read (%s); the study starts without it", path, first_line(e))
    kept = []
    for name, params in points:
        if not plan.space.contains(params):
            outside = [k for k in plan.space.distributions if not plan.space.contains_value(k, params.get(k))]
            log.info("the %s is outside the search space (%s): not a reference trial", name, ", ".join(outside))
        elif all(params != other for _, other in kept):
            kept.append((name, params))
    return kept


def differing(recorded: dict[str, Any], fixed: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """The keys whose values differ between a study's recorded fixed config and a joining
    worker's; a key the record lacks (added to the code after the study was made) differs only
    where the worker's value is not its shipped default (``defaults``: the study ran without it)."""
    keys = recorded.keys() | fixed.keys()
    return sorted(
        k
        for k in keys
        if recorded.get(k, "-") != fixed.get(k, "-")
        and not (k not in recorded and k in defaults and fixed[k] == defaults[k])
    )


def _check_joined(study: optuna.Study, plan: Plan, client: MlflowClient, uri: str, forms: tuple[dict, ...]) -> str:
    """A worker joining a study: same objectives and directions, same fixed config; wait for the creator to
    finish setting the study up (it is a few database writes behind). Returns the parent run.

    ``forms``: the worker's fixed config as trials run with it, the same without the search
    space's fixed values (what studies made before those were applied recorded), and the
    shipped defaults. The worker joins when the study's record matches either form, keys the
    record lacks taking their defaults; a refusal names the keys that differ from the first."""
    name = plan.study_name
    if study.directions != plan.directions:  # set when the study was made: no wait needed
        made, asked = (", ".join(d.name.lower() for d in found) for found in (study.directions, plan.directions))
        raise UserError(
            f"study {name!r} maximises/minimises differently: it was created with direction {made}, this sweep "
            f"asks {asked} (use another hydra.sweeper.study_name)"
        )
    attrs = _recorded_attrs(study, name)
    if (made := study.metric_names or [protocol.OBJECTIVE]) != plan.objectives:  # recorded with the parent run
        raise UserError(
            f"study {name!r} has other objectives: it was created with {', '.join(made)}, this sweep asks "
            f"{', '.join(plan.objectives)} (use another hydra.sweeper.study_name)"
        )
    recorded = attrs.get(protocol.STUDY_FIXED_CONFIG, {})
    (fixed, older, defaults), differ = forms, differing(recorded, forms[0], forms[2])
    if differ and differing(recorded, older, defaults):
        shown = ", ".join(f"{k}: study {recorded.get(k, '-')!r}, now {fixed.get(k, '-')!r}" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UserError(
            f"study {name!r} was created with another fixed config ({shown}{more}): "
            "its trials would not be comparable; use another hydra.sweeper.study_name"
        )
    parent_id = attrs[protocol.STUDY_PARENT_RUN]
    try:
        client.get_run(parent_id)
    except Exception as e:
        raise UserError(
            f"study {name!r} logs to MLflow run {parent_id} at {attrs.get(protocol.STUDY_TRACKING_URI)}, "
            f"which {uri} does not have: point MLFLOW_TRACKING_URI there, or use another study_name"
        ) from e
    return parent_id


def _recorded_attrs(study: optuna.Study, name: str) -> dict[str, Any]:
    """The study's attributes once its creator has recorded its parent run."""
    deadline = time.monotonic() + JOIN_WAIT
    while protocol.STUDY_PARENT_RUN not in (attrs := study.user_attrs):
        if time.monotonic() > deadline:
            raise UserError(
                f"study {name!r} has no MLflow parent run recorded: it was made by an older "
                "version or its creator died while setting it up (use another hydra.sweeper.study_name)"
            )
        time.sleep(0.5)
    return attrs


def tried(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that ran or run, not the skipped repeats (the worker's ``ask``)."""
    trials = study.get_trials(deepcopy=False, states=(COMPLETE, PRUNED, FAIL, RUNNING))
    return [t for t in trials if not t.user_attrs.get(protocol.ATTR_FAILURE, "").startswith(protocol.DUPLICATE)]


def same_params(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of an earlier trial with the same parameters that ran or runs, if any."""
    for other in tried(study):
        if other.number != trial.number and other.params == trial.params:
            return other.number
    return None


def space_exhausted(study: optuna.Study, plan: Plan) -> bool:
    """Every configuration of a finite search space has run: a new trial could only repeat one
    (with a custom_search_space, which may add keys, it never is)."""
    return plan.extend is None and plan.space.exhausted([t.params for t in tried(study)])


def open_trial_run(joined: Joined, plan: Plan, trial: optuna.trial.Trial, retry_of: int | None) -> str:
    """The trial's MLflow run under the study's parent, its id stored on the trial with what its job
    needs (the pruner); the run's id."""
    tags = {
        protocol.PARENT_RUN: joined.parent_id,
        protocol.TAG_STUDY: plan.study_name,
        protocol.TAG_TRIAL: str(trial.number),
        protocol.TAG_DIR: plan.sweep_dir,
    }
    if retry_of is not None:
        tags[protocol.TAG_RETRY_OF] = str(retry_of)
    run = joined.client.create_run(joined.experiment_id, run_name=f"trial-{trial.number:03d}", tags=tags)
    trial.set_user_attr(protocol.ATTR_RUN_ID, run.info.run_id)
    if plan.pruner_spec is not None:
        trial.set_user_attr(protocol.ATTR_PRUNER, plan.pruner_spec)  # the job reads it from the storage
    return run.info.run_id


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs each tell at INFO; the worker logs its own line per trial."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
