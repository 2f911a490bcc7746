"""The sweep worker: asks Optuna for trials, launches them through Hydra's launcher, tells
Optuna how they ended. One worker is one `python train.py -m hydra/sweeper=optuna`; any number
of them, on one machine or many, join one study through its storage URL.

What a worker does, in order:
1. checks everything it was given (search space, pruner, storage, tracking server, the study's
   direction and fixed config) before it writes anything;
2. creates the study, or joins it: whichever worker creates it records the study's fixed config
   (everything not searched), opens the study's one MLflow parent run, and enqueues the base
   config and the winner file's configuration (an earlier study's best) as the first trials;
3. runs ``n_trials`` trials, ``n_jobs`` at a time. The sampler is built afresh for every trial
   with a seed derived from the study's seed and the trial number, so workers never ask the
   same point twice and a study is reproducible trial by trial. While trials run the worker
   records Optuna's heartbeat for them; before each ask it fails the trials whose worker
   stopped sending one (any machine), ends their MLflow runs KILLED, and Optuna's
   ``RetryHeartbeatStaleTrialCallback`` enqueues their configuration once more;
4. before it ends, it runs retries that are still waiting and waits (at most one grace period)
   for trials of workers that may have died; then it logs the leaderboard and Optuna's plots to
   the parent run, updates the study's winner file if the best trial changed, and ends the
   parent run when no trial of the study is running any more.

A trial's MLflow run is created here, nested under the parent, and its id stored on the Optuna
trial (user attribute ``mlflow_run_id``); the job resumes that run. Everything Optuna- or
MLflow-specific goes through public APIs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp import sweeps, tracking
from mlp.config import GROUPS
from mlp.errors import ConfigError, UserError, first_line
from mlp.filelock import sqlite_file
from mlp.search_space import SearchSpace
from mlp.sweeps import check_study_name
from mlp.trial import STORAGE_CHOICES, check_storage, make_pruner, open_storage

log = logging.getLogger(__name__)
# Heartbeats, their stale-trial callback and fail_stale_trials are "experimental" in Optuna 5
# (since 2.8); they are what Optuna offers for dead workers, and this project pins Optuna.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# Keys that say where or how fast a trial runs, not what it trains: workers may differ in them.
RUNTIME_KEYS = ("trainer.device", "trainer.threads", "trainer.progress", "data.root")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
MAX_DUPLICATE_ASKS = 20  # proposals of configurations the study already has, before it counts as exhausted


def trial_seed(study_seed: int, number: int) -> int:
    """A trial's sampler seed: a function of the study's seed and the trial number only."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


class PerTrialSampler(optuna.samplers.BaseSampler):
    """The configured sampler, made anew for each trial with ``trial_seed(seed, number)``.

    Optuna samplers keep what they learn in the study storage, so a fresh one sees every
    worker's trials; only its random state is per trial. With one fixed seed per process,
    two workers (or a resumed sweep) would propose the same points."""

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None):
        self.make, self.seed = make, seed
        self.current = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.current = self.make(None if self.seed is None else trial_seed(self.seed, trial.number))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201 - Optuna's signature
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):  # noqa: ANN001, ANN201
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def sampler_factory(spec: DictConfig, space: SearchSpace) -> Callable[[int | None], optuna.samplers.BaseSampler]:
    """Build the sampler of ``hydra.sweeper.sampler`` (the official configs) with a given seed."""
    from hydra.utils import instantiate

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        sampler = instantiate(
            spec, seed=seed, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        )
        return sampler(space.grid()) if callable(sampler) else sampler  # the grid sampler is a partial

    try:
        make(0)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"hydra.sweeper.sampler: cannot make {spec.get('_target_')} ({first_line(e)})") from e
    return make


def fixed_config(config: DictConfig, searched: set[str]) -> dict[str, Any]:
    """What defines the experiment apart from the searched keys: the task config, flattened."""
    task = OmegaConf.to_container(OmegaConf.masked_copy(config, list(GROUPS)), resolve=True, enum_to_str=True)
    flat = tracking.flatten(task)
    return {k: v for k, v in sorted(flat.items()) if k not in searched and k not in RUNTIME_KEYS}


def check_search_space(config: DictConfig, keys: list[str]) -> None:
    """An unknown key would fail every trial: stop before the first."""
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    for key in keys:
        if key.startswith(("hydra.", "hydra/", "+", "~")) or "/" in key or key in GROUPS:
            continue  # Hydra's own keys, additions, deletions and group choices are checked by Hydra
        if OmegaConf.select(task, key, default=_MISSING) is _MISSING:
            raise ConfigError(
                f"hydra.sweeper.params.{key}", "", "a key of the training config (see python train.py --cfg job)"
            )


_MISSING = object()

# Launchers that run trials on this machine: more trials at a time than cores would only queue
# (joblib with hundreds of workers hangs); a cluster's launcher (SLURM) is not bound by them.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


def trials_at_a_time(value: Any, key: str, local: bool) -> int:
    """n_jobs as a count of trials (joblib's convention: -1 every core, -2 all but one, ...)."""
    cores = os.cpu_count() or 1
    count = (value if value > 0 else cores + 1 + value) if isinstance(value, int) and value != 0 else 0
    if count < 1 or (local and count > cores):
        limit = f"1 to {cores} (this machine's cores)" if local else "an integer >= 1"
        raise ConfigError(key, value, f"{limit}, or -1 to -{cores} (-1: one trial per core, -2: all but one, ...)")
    return count


def check_settings(config: DictConfig) -> int:
    """Every sweeper setting in range, before anything is written; returns the trials at a time."""
    s = config.hydra.sweeper

    def check(name: str, ok: bool, accepted: str) -> None:
        if not ok:
            raise ConfigError(f"hydra.sweeper.{name}", s[name], accepted)

    check_study_name(s.study_name)
    check("n_trials", s.n_trials >= 1, "an integer >= 1: how many trials this worker runs")
    check("timeout", s.timeout is None or s.timeout > 0, "seconds > 0, or null (no time limit: n_trials decides)")
    finite = math.isfinite(s.heartbeat_interval) and math.isfinite(s.grace_period)
    check("heartbeat_interval", finite and s.heartbeat_interval > 0, "a number of seconds > 0")
    check(
        "grace_period",
        s.grace_period > s.heartbeat_interval,
        f"a number of seconds > heartbeat_interval ({s.heartbeat_interval}): a trial is dead after missing beats",
    )
    check("max_failure_rate", 0 <= s.max_failure_rate <= 1, "a fraction from 0 (stop at the first failure) to 1")
    check("max_retry", s.max_retry >= 0, "an integer >= 0: how often a dead worker's trial runs again")
    if s.best_config is not None and (problem := sweeps.winner_path_problem(Path(s.best_config))) is not None:
        check("best_config", False, f"a file path in a writable folder, or null for no winner file ({problem})")
    launcher = config.hydra.get("launcher") or {}
    local = str(launcher.get("_target_", "")).rsplit(".", 1)[-1] in LOCAL_LAUNCHERS
    if "n_jobs" in launcher:
        trials_at_a_time(launcher.n_jobs, "hydra.launcher.n_jobs", local)
    return trials_at_a_time(s.n_jobs, "hydra.sweeper.n_jobs", local)


class Heartbeat:
    """Records Optuna's heartbeat for the trials this worker has in flight, every ``interval`` s."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: list[int], interval: float):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="optuna-heartbeat", daemon=True)

    def beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a blip of the database: the next beat retries
                    log.warning("heartbeat of trial id %d not recorded: %s", trial_id, first_line(e))
            if self.stopped.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


class EndRunAndRetry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """For a trial whose worker died: end its MLflow run KILLED, then enqueue it again once."""

    def __init__(self, client: MlflowClient, max_retry: int):
        super().__init__(max_retry=max_retry)
        self.client = client

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = "its worker stopped sending heartbeats (killed, or its machine died)"
        log.warning("trial %d: %s; marked FAIL", trial.number, reason)
        end_run(self.client, trial.user_attrs.get("mlflow_run_id"), "KILLED", reason)
        super().__call__(study, trial)


def end_run(client: MlflowClient, run_id: str | None, status: str, reason: str | None = None) -> None:
    """End an MLflow run that is still RUNNING (a job that ended it itself keeps its status)."""
    if not run_id:
        return
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            if reason:
                client.set_tag(run_id, "failure_reason", reason[:5000])
            client.set_terminated(run_id, status)


def quoted(value: str) -> str:
    """A string as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StudySweep:
    """One worker's part of a study (see the module docstring)."""

    def __init__(self, config: DictConfig, launcher: Any, arguments: list[str]):
        s = config.hydra.sweeper
        self.config, self.launcher, self.settings = config, launcher, s
        self.n_jobs = check_settings(config)
        self.study_name: str = s.study_name
        self.n_trials = int(s.n_trials)
        params = [f"{k}={v}" for k, v in (s.params or {}).items()]
        self.space = SearchSpace.parse(params + list(arguments))
        check_search_space(config, list(self.space.distributions) + [f.split("=", 1)[0] for f in self.space.fixed])
        spec = s.get("pruner")
        self.pruner_spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
        self.pruning = make_pruner(self.pruner_spec) is not None
        if self.pruning and s.storage is None:
            raise ConfigError("hydra.sweeper.storage", None, "a storage URL when pruning (trials open it)")
        directions = list(s.direction) if OmegaConf.is_list(s.direction) else [s.direction]
        directions = [getattr(d, "name", d) for d in directions]
        if len(directions) != 1:
            raise ConfigError("hydra.sweeper.direction", directions, "one direction: train.py returns one value")
        self.direction = optuna.study.StudyDirection[str(directions[0]).upper()]
        self.extend = None
        if s.custom_search_space:
            from hydra.utils import get_method

            self.extend = get_method(s.custom_search_space)
        seed = s.sampler.get("seed")
        self.sampler = PerTrialSampler(sampler_factory(s.sampler, self.space), seed)
        self.heartbeat_interval, self.grace = float(s.heartbeat_interval), float(s.grace_period)
        self.job_idx = 0
        self.mine: list[int] = []  # numbers of the trials this worker ran
        self.failures = 0  # of those, how many failed

    # -- joining -------------------------------------------------------------------------

    def open(self) -> None:
        """Check the tracking store and the storage, then create or join the study."""
        cfg = self.config
        url = self.settings.storage
        if url is not None:
            check_storage(str(url))  # another application's database is left as it is, and no tracking store made
        self.uri, self.experiment_id = tracking.use_experiment(cfg.tracking)
        self.client = MlflowClient(self.uri)
        if url is None:
            self.storage: Any = optuna.storages.InMemoryStorage()
            self.rdb = None
        else:
            url = str(url)
            if (path := sqlite_file(url)) is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.rdb = open_storage(
                    url,
                    heartbeat_interval=max(1, int(self.heartbeat_interval)),
                    grace_period=max(2, int(self.grace)),
                    heartbeat_stale_trial_callback=EndRunAndRetry(self.client, int(self.settings.max_retry)),
                )
            except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a server that does not answer
                raise ConfigError("hydra.sweeper.storage", url, f"{STORAGE_CHOICES} ({first_line(e)})") from e
            self.storage = self.rdb
        fixed = fixed_config(cfg, set(self.space.distributions))
        try:
            study = optuna.create_study(
                study_name=self.study_name, storage=self.storage, sampler=self.sampler, direction=self.direction
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
            created = False
        self.study = study
        if created:
            self.parent_id = self.create_parent(fixed)
        else:
            self.check_joined(fixed)
        self.study_id = self.storage.get_study_id_from_name(self.study_name)
        self.client.update_run(self.parent_id, status="RUNNING")
        log.info(
            "study %s (%s): %s; this worker runs %d trial(s), %d at a time; MLflow parent run %s",
            self.study_name,
            url or "in memory",
            "created" if created else f"joined ({len(study.trials)} trials so far)",
            self.n_trials,
            self.n_jobs,
            self.parent_id,
        )

    def create_parent(self, fixed: dict[str, Any]) -> str:
        """The study's creator: its parent run, its fixed config, its reference trial."""
        study = self.study
        parent = self.client.create_run(
            self.experiment_id,
            run_name=f"study {self.study_name}",
            tags={"sweep.study": self.study_name, "sweep.role": "parent", "sweep.storage": str(self.settings.storage)},
        )
        study.set_user_attr("fixed_config", fixed)
        study.set_user_attr("mlflow_tracking_uri", self.uri)
        study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        self.client.log_dict(parent.info.run_id, fixed, "study_fixed_config.json")
        for name, params in self.reference_points():
            study.enqueue_trial(params, user_attrs={"reference": name})
        return parent.info.run_id

    def reference_points(self) -> list[tuple[str, dict[str, Any]]]:
        """Known-good configurations a new study starts from: the base config, and the searched
        values of the study's winner file from an earlier study (with the base config's values
        where it has none), each if it lies in the search space."""
        base = {key: OmegaConf.select(self.config, key) for key in self.space.distributions}
        points = [("base config", base)]
        path = self.settings.get("best_config")
        if path and sweeps.winner_record(Path(path)) is not None:
            try:
                winner = OmegaConf.load(path)
                found = {key: OmegaConf.select(winner, key, default=base[key]) for key in base}
                points.append(
                    (
                        f"winner file {Path(path).name}",
                        OmegaConf.to_container(OmegaConf.create(found), enum_to_str=True),
                    )
                )
            except Exception as e:  # noqa: BLE001 - a damaged winner file: start without it
                log.warning("%s: not read (%s); the study starts without it", path, first_line(e))
        kept = []
        for name, params in points:
            if not self.space.contains(params):
                log.info("the %s is outside the search space: not a reference trial", name)
            elif all(params != other for _, other in kept):
                kept.append((name, params))
        return kept

    def check_joined(self, fixed: dict[str, Any]) -> None:
        """A worker joining a study: same direction, same fixed config; wait for the creator to
        finish setting the study up (it is a few database writes behind)."""
        study = self.study
        if study.direction != self.direction:
            raise UserError(
                f"study {self.study_name!r} maximises/minimises differently: it was created with direction "
                f"{study.direction.name.lower()}, this sweep asks {self.direction.name.lower()} "
                "(use another hydra.sweeper.study_name)"
            )
        deadline = time.monotonic() + 60
        while "mlflow_parent_run_id" not in (attrs := study.user_attrs):
            if time.monotonic() > deadline:
                raise UserError(
                    f"study {self.study_name!r} has no MLflow parent run recorded: it was made by an older "
                    "version or its creator died while setting it up (use another hydra.sweeper.study_name)"
                )
            time.sleep(0.5)
        recorded = attrs.get("fixed_config", {})
        differing = sorted(k for k in recorded.keys() | fixed.keys() if recorded.get(k, "-") != fixed.get(k, "-"))
        if differing:
            shown = ", ".join(f"{k}: study {recorded.get(k, '-')!r}, now {fixed.get(k, '-')!r}" for k in differing[:4])
            more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
            raise UserError(
                f"study {self.study_name!r} was created with another fixed config ({shown}{more}): "
                "its trials would not be comparable; use another hydra.sweeper.study_name"
            )
        self.parent_id = attrs["mlflow_parent_run_id"]
        try:
            self.client.get_run(self.parent_id)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"study {self.study_name!r} logs to MLflow run {self.parent_id} at {attrs.get('mlflow_tracking_uri')}, "
                f"which {self.uri} does not have: point MLFLOW_TRACKING_URI there, or use another study_name"
            ) from e

    # -- trials --------------------------------------------------------------------------

    def ask(self, slot: int) -> tuple[optuna.trial.Trial, list[str]]:
        """A new trial (or a waiting one: the reference config, a retry), its MLflow run, its overrides."""
        for attempt in range(MAX_DUPLICATE_ASKS):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we record it
                trial = self.study.ask()
            trial_id = self.trial_id(trial)
            if self.rdb is not None:
                self.rdb.record_heartbeat(trial_id)  # at once: a trial with no heartbeat is never found dead
            overrides = self.space.suggest(trial)
            if self.extend is not None:
                self.extend(self.config, trial)
                overrides = self.space.overrides(trial.params)
            frozen = self.storage.get_trial(trial_id)
            retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
            twin = None if retry_of is not None else self.same_config(frozen)
            if twin is None:
                break
            # The sampler proposed a configuration the study already has: skip it and ask again,
            # unless the search space looks exhausted (then the repeat runs).
            if attempt < MAX_DUPLICATE_ASKS - 1:
                trial.set_user_attr("failure_reason", f"duplicate of trial {twin}: not run")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            log.warning("trial %d repeats trial %d: the search space looks exhausted", trial.number, twin)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.number:03d}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "sweep.study": self.study_name,
                "sweep.trial": str(trial.number),
                "sweep.dir": str(self.config.hydra.sweep.dir),
                **({"sweep.retry_of": str(retry_of)} if retry_of is not None else {}),
            },
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        if self.pruning:
            trial.set_user_attr("pruner", self.pruner_spec)  # the job reads it from the storage
        extra = [
            f"sweep.study={quoted(self.study_name)}",
            f"sweep.trial={trial.number}",
            f"sweep.run_id={run.info.run_id}",
        ]
        if self.rdb is not None:
            extra.append(f"sweep.storage={quoted(str(self.settings.storage))}")
        if self.n_jobs > 1:
            extra.append(f"sweep.slot={slot}")
            if self.config.trainer.threads == 0:
                # Parallel trials share the cores; recorded in the trial's config so that
                # model=best reruns the winner with the same arithmetic.
                extra.append(f"trainer.threads={max(1, (os.cpu_count() or 1) // self.n_jobs)}")
        return trial, [*overrides, *extra]

    def same_config(self, trial: optuna.trial.FrozenTrial) -> int | None:
        """The number of an earlier trial with the same parameters that ran or runs, if any."""
        done = (*FINISHED, optuna.trial.TrialState.RUNNING)
        for other in self.study.get_trials(deepcopy=False, states=done):
            skipped = other.user_attrs.get("failure_reason", "").startswith("duplicate of")
            if other.number != trial.number and other.params == trial.params and not skipped:
                return other.number
        return None

    def trial_id(self, trial: optuna.trial.Trial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)

    def run_batch(self, size: int) -> None:
        asked = [self.ask(slot) for slot in range(size)]
        trials = [t for t, _ in asked]
        self.mine += [t.number for t in trials]
        beat = Heartbeat(self.rdb, [self.trial_id(t) for t in trials], self.heartbeat_interval) if self.rdb else None
        with beat or contextlib.nullcontext():
            try:
                returns = self.launcher.launch([o for _, o in asked], initial_job_idx=self.job_idx)
            except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or the launcher broke
                interrupted = isinstance(e, KeyboardInterrupt)
                for trial in trials:
                    self.end_trial(
                        trial, "interrupted" if interrupted else f"launcher failed: {first_line(e)}", killed=interrupted
                    )
                raise
        self.job_idx += len(returns)
        for trial, ret in zip(trials, returns, strict=True):
            self.tell(trial, ret)

    def tell(self, trial: optuna.trial.Trial, ret: Any) -> None:
        try:
            value = float(ret.return_value)
        except Exception as e:  # noqa: BLE001 - whatever the job raised fails this trial only
            self.end_trial(trial, f"{type(e).__name__}: {e}")
            log.warning("trial %d failed: %s", trial.number, first_line(e))
            return
        if not math.isfinite(value):
            self.end_trial(trial, f"objective {value}")
            return
        pruned_at = self.storage.get_trial(self.trial_id(trial)).user_attrs.get("pruned_at_epoch")
        if pruned_at is not None:  # its job stopped when the pruner said so: value = last report
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d: pruned after epoch %d (val acc %.4f)", trial.number, pruned_at, value)
            return
        self.study.tell(trial, value, skip_if_finished=True)
        log.info(
            "trial %d: %s %.4f  %s",
            trial.number,
            "val acc",
            value,
            " ".join(f"{k}={v}" for k, v in trial.params.items()),
        )

    def end_trial(self, trial: optuna.trial.Trial, reason: str, killed: bool = False) -> None:
        """FAIL in Optuna, FAILED (or KILLED) in MLflow, with the reason in both."""
        self.failures += 1
        with contextlib.suppress(Exception):
            trial.set_user_attr("failure_reason", reason[:1000])
        with contextlib.suppress(Exception):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        end_run(self.client, trial.user_attrs.get("mlflow_run_id"), "KILLED" if killed else "FAILED", reason)

    def fail_stale(self) -> None:
        if self.rdb is not None:
            optuna.storages.fail_stale_trials(self.study)

    def count(self, *states: optuna.trial.TrialState, others: bool = False) -> int:
        trials = self.study.get_trials(deepcopy=False, states=states)
        return sum(1 for t in trials if not others or t.number not in self.mine)

    # -- the worker's life ---------------------------------------------------------------

    def end_parent(self, status: str) -> None:
        """End the study's parent run with ``status`` unless a trial of the study still runs or
        waits (another worker's: that worker ends it)."""
        try:
            busy = self.count(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        except Exception as e:  # noqa: BLE001 - the storage is gone: the parent must not stay RUNNING
            log.warning("the study's trials could not be counted (%s): its parent run ends %s", first_line(e), status)
            busy = 0
        if not busy:
            try:
                self.client.set_terminated(self.parent_id, status)
            except Exception as e:  # noqa: BLE001 - the tracking store is gone: say so, keep the error under way
                log.warning("MLflow parent run %s not ended %s: %s", self.parent_id, status, first_line(e))

    def run(self) -> None:
        self.open()
        status = "FAILED"
        try:
            done = 0
            deadline = time.monotonic() + float(self.settings.timeout or math.inf)
            while done < self.n_trials:
                if time.monotonic() > deadline:
                    log.info(
                        "timeout of %s s reached after %d trial(s): no new trial started", self.settings.timeout, done
                    )
                    break
                self.fail_stale()
                size = min(self.n_jobs, self.n_trials - done)
                self.run_batch(size)
                done += size
                if self.failures / done > float(self.settings.max_failure_rate):
                    raise UserError(
                        f"{self.failures} of this worker's {done} trials failed, more than max_failure_rate "
                        f"{self.settings.max_failure_rate}: stopping (see each trial's failure_reason in MLflow)"
                    )
            self.settle()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.finish(status)

    def settle(self) -> None:
        """Leave nothing behind: run retries still waiting, and give trials of other workers
        that may have died one grace period to be failed (and retried here)."""
        if self.rdb is None:
            return
        waiting, running = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
        deadline = time.monotonic() + self.grace + 2 * self.heartbeat_interval
        said = False
        while True:
            self.fail_stale()
            if self.count(waiting):
                self.run_batch(min(self.n_jobs, self.count(waiting)))
                deadline = time.monotonic() + self.grace + 2 * self.heartbeat_interval
                continue
            others = self.count(running, others=True)
            if not others or time.monotonic() > deadline:
                return
            if not said:
                log.info("waiting up to %.0f s for %d trial(s) of other workers (a dead worker's are retried here)",
                         deadline - time.monotonic(), others)  # fmt: skip
                said = True
            time.sleep(min(self.heartbeat_interval, 2.0))

    def finish(self, status: str) -> None:
        """Report to the parent run, update the winner file, end the parent if the study is idle:
        KILLED when interrupted (here too), FAILED when the sweep or this step failed."""
        study, client = self.study, self.client
        try:
            try:
                sweeps.report(study, client, self.parent_id)
            except Exception as e:  # noqa: BLE001 - a report that cannot be drawn must not lose the winner below
                log.warning("the study's report (leaderboard, plots) was not logged: %s", first_line(e))
            best = sweeps.best_trial(study)
            if best is not None and self.settings.best_config:
                replace = bool(self.settings.replace_winner)
                try:
                    sweeps.update_winner(study, best, client, self.parent_id, self.settings.best_config, replace)
                except sweeps.WinnerKept as kept:
                    log.warning("%s", kept)
                    client.set_tag(self.parent_id, "winner.kept", kept.tag)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED" if status == "FINISHED" else status
            raise
        finally:
            self.end_parent(status)
        if status == "FINISHED" and best is None:
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            raise UserError(
                f"no trial of study {self.study_name!r} completed ({states.count('FAIL')} failed, "
                f"{states.count('PRUNED')} pruned): there is no best trial; see each trial's failure_reason "
                "in MLflow, then run more trials (hydra.sweeper.n_trials) or a gentler pruner"
            )


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs each tell at INFO; the worker logs its own line per trial."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
