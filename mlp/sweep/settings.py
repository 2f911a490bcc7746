"""A sweep's settings checked before anything is written: the study name, the sweeper's numbers
and launcher, the searched keys; and the study's fixed config (what joining workers must share)."""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_method  # Hydra's own locator, as its Optuna sweeper uses it
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import CategoricalDistribution

from mlp import PROJECT_ROOT
from mlp.errors import ConfigError, UserError, first_line
from mlp.run.config import GROUPS, joblib_count, validate
from mlp.run.tracking import flatten
from mlp.run.winner_files import check_study_name
from mlp.sweep import kill_points, protocol
from mlp.sweep.export import WINNER_PATHS, winner_path_problem
from mlp.sweep.job import make_pruner
from mlp.sweep.sampler import PerTrialSampler, sampler_factory
from mlp.sweep.space import SearchSpace

# Keys that say where or how fast a trial runs, not what it trains: workers may differ in them.
RUNTIME_KEYS = ("trainer.device", "trainer.threads", "trainer.progress", "data.root")


def fixed_config(config: DictConfig, searched: set[str], fixed: list[str] | None = None) -> dict[str, Any]:
    """What defines the experiment apart from the searched keys: the task config, flattened, as
    every trial runs with it: with the search space's ``fixed`` values applied (trainer.val_every: 5
    in hydra.sweeper.params). A fixed group choice that the config does not hold already
    (``schedule: constant`` in params) is recorded as the choice, under the group's name, in place
    of the keys of the group the config holds. ``fixed=None`` gives the form studies recorded
    before fixed values were applied (still compared: ``study.py``)."""
    task = OmegaConf.masked_copy(config, list(GROUPS))
    choices: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(fixed or [])):
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.split(".")[0].split("/")[0] not in GROUPS:
            continue  # hydra.*, tracking.* (a run's bookkeeping), +additions and ~deletions
        if "." in key and "/" not in key:
            OmegaConf.update(task, key, override.value(), merge=False)
        elif OmegaConf.select(config, f"hydra.runtime.choices.{key}") != override.value():
            choices[key] = override.value()
    flat = flatten(OmegaConf.to_container(task, resolve=True, enum_to_str=True))
    flat = {k: v for k, v in flat.items() if not any(k.startswith(f"{g}.") for g in choices)} | choices
    return {k: v for k, v in sorted(flat.items()) if k not in searched and k not in RUNTIME_KEYS}


def shipped_defaults(config: DictConfig) -> dict[str, Any]:
    """The values of the group files the config chose, as shipped (conf/data/mnist.yaml's
    elastic_alpha: 0.0 is data.elastic_alpha's), flattened: what a key that a study created
    before the key existed ran with. A group file outside conf/ gives none."""
    found: dict[str, Any] = {}
    for group in GROUPS:
        path = PROJECT_ROOT / "conf" / group / f"{OmegaConf.select(config, f'hydra.runtime.choices.{group}')}.yaml"
        if path.is_file():
            values = OmegaConf.to_container(OmegaConf.load(path), enum_to_str=True)
            found |= {f"{group}.{k}": v for k, v in flatten(values).items() if k != "defaults"}
    return found


def check_search_space(config: DictConfig, space: SearchSpace) -> None:
    """An unknown key, or a value that its key's type, range or group refuses (``choice(relu, nosuch)``
    for the activation, ``interval(0, 1.5)`` for dropout; each choice, and each end of a range, beside
    the base config's other values), would fail trials or stop the sweep after its first: stop before."""
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    for key in [*space.distributions, *(f.split("=", 1)[0] for f in space.fixed)]:
        if key.startswith(("hydra.", "hydra/", "+", "~")) or "/" in key or key in GROUPS:
            continue  # Hydra's own keys, additions, deletions and group choices are checked by Hydra
        if OmegaConf.select(task, key, default=_MISSING) is _MISSING:
            raise ConfigError(
                f"hydra.sweeper.params.{key}", "", "a key of the training config (see python train.py --cfg job)"
            )
    folders = [Path(s.path) for s in config.hydra.runtime.config_sources if s.schema == "file"]
    for key, dist in space.distributions.items():
        for value in dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high):
            if key in GROUPS and not any((f / key / f"{value}.yaml").is_file() for f in folders):
                options = sorted({p.stem for f in folders for p in (f / key).glob("*.yaml")})
                raise UserError(f"search space: {key}={value}: no such option; expected one of {', '.join(options)}")
            if key not in GROUPS and not key.startswith(("hydra.", "+", "~")):
                trial = copy.deepcopy(task)
                try:
                    OmegaConf.update(trial, key, value, merge=False)
                    validate(trial)  # in range: a dropout of 1.5 fails here, not in every trial that draws it
                except UserError as e:
                    raise UserError(f"search space: {e}") from e
                except OmegaConfBaseException as e:
                    raise UserError(f"search space: {key}={value}: {first_line(e.msg or e)}") from e


_MISSING = object()

# Launchers that run trials on this machine: more trials at a time than cores would only queue
# (joblib with hundreds of workers hangs); a cluster's launcher (SLURM) is not bound by them.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")
PARALLEL_LAUNCHERS = (
    "for trials at once choose hydra/launcher=joblib (this machine), submitit_local or slurm (hydra-submitit-launcher)"
)


def trials_at_a_time(value: Any, key: str, local: bool) -> int:
    """n_jobs as a count of trials (joblib's convention: -1 every core, -2 all but one, ...)."""
    cores = os.cpu_count() or 1
    count = joblib_count(value) if isinstance(value, int) and value != 0 else 0
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
    check("compact_within", 0 <= s.compact_within <= 1, "a validation accuracy distance from 0 to 1")
    if s.best_config is not None and (problem := winner_path_problem(Path(s.best_config))) is not None:
        check("best_config", False, f"{WINNER_PATHS}, or null for no winner file ({problem})")
    launcher = config.hydra.get("launcher") or {}
    kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    pool = 0  # joblib's processes, when it is the launcher
    if "n_jobs" in launcher:
        pool = trials_at_a_time(launcher.n_jobs, "hydra.launcher.n_jobs", kind in LOCAL_LAUNCHERS)
    n_jobs = trials_at_a_time(s.n_jobs, "hydra.sweeper.n_jobs", kind in LOCAL_LAUNCHERS)
    if 0 < pool < n_jobs:  # joblib's pool of processes: each trial in flight takes one
        raise ConfigError("hydra.launcher.n_jobs", launcher.n_jobs, f"at least hydra.sweeper.n_jobs ({n_jobs}), or -1: "
                          "each trial in flight takes one of joblib's processes")  # fmt: skip
    if n_jobs > 1 and kind == "BasicLauncher":  # it runs a batch one job after the other: the others would wait
        check("n_jobs", False, f"1 with Hydra's basic launcher (it runs one trial at a time); {PARALLEL_LAUNCHERS}")
    return n_jobs


def check_enqueued(points: Any, space: SearchSpace) -> None:
    """hydra.sweeper.enqueue_trials: each a mapping of searched keys to values in their range. A
    key fixed on the command line or in the params is not searched: an entry may repeat its value
    (a preset's entry beside ``model.num_layers=4``), never differ from it."""
    fixed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(space.fixed)}
    for i, point in enumerate(points):
        key = f"hydra.sweeper.enqueue_trials[{i}]"
        if not OmegaConf.is_dict(point):
            raise ConfigError(key, point, "a mapping of searched keys to values, e.g. {model.layer_size: 1024}")
        for name, value in point.items():
            if name in fixed:
                if fixed[name] != value:
                    why = f"it is fixed at {fixed[name]!r} on the command line or in hydra.sweeper.params"
                    raise ConfigError(f"{key}.{name}", value, f"no entry for {name}, which is not searched: {why}")
                continue
            if name not in space.distributions:
                raise ConfigError(f"{key}.{name}", value, f"a searched key: {', '.join(space.distributions)}")
            if not space.contains_value(name, value):
                raise ConfigError(f"{key}.{name}", value, space.describe(name))


def objectives(settings: DictConfig, pruner: Any) -> tuple[list[str], list[optuna.study.StudyDirection]]:
    """The study's objectives by name and their directions, as many of one as of the other. With
    several, validation accuracy is one of them, maximised (the winner file is the most accurate
    trial), and nothing prunes (Optuna prunes single-objective studies only)."""
    value = settings.direction
    directions = [str(getattr(d, "name", d)) for d in (value if OmegaConf.is_list(value) else [value])]
    names = list(settings.get("objectives") or [protocol.OBJECTIVE])
    known = ", ".join(protocol.OBJECTIVE_METRICS)
    for i, name in enumerate(names):
        if name not in protocol.OBJECTIVE_METRICS or names.index(name) != i:
            raise ConfigError("hydra.sweeper.objectives", names, f"distinct names among {known}")
    if any(d.lower() not in ("maximize", "minimize") for d in directions):
        raise ConfigError("hydra.sweeper.direction", directions, "maximize or minimize, or a list of them")
    if len(directions) != len(names):
        raise ConfigError(
            "hydra.sweeper.direction", directions,
            f"one direction per objective: hydra.sweeper.objectives names {len(names)} ({', '.join(names)})",
        )  # fmt: skip
    found = [optuna.study.StudyDirection[d.upper()] for d in directions]
    if dict(zip(names, directions, strict=True)).get(protocol.OBJECTIVE, "").lower() != "maximize":
        # Minimized, validation accuracy would make the least accurate trial the study's best and its winner.
        if names == [protocol.OBJECTIVE]:
            why = f"the objective is validation accuracy ({protocol.OBJECTIVE}); a study's winner is its most accurate"
            raise ConfigError("hydra.sweeper.direction", directions[0], f"maximize: {why} trial")
        raise ConfigError("hydra.sweeper.objectives", names, f"{protocol.OBJECTIVE} among them, maximized "
                          "(a study's winner file is its most accurate trial)")  # fmt: skip
    if len(names) > 1:
        if pruner is not None:
            raise ConfigError("hydra.sweeper.pruner", pruner["_target_"], "none with several objectives: Optuna "
                              "prunes single-objective studies only (hydra/sweeper/pruner=none)")  # fmt: skip
    return names, found


@dataclass(frozen=True)
class Plan:
    """What one worker was asked to do, every part checked (``Plan.of``) before anything is written:
    the worker's only settings (it reads nothing else of the config)."""

    study_name: str
    n_trials: int
    n_jobs: int  # trials at a time
    space: SearchSpace
    objectives: list[str]  # their names (protocol.OBJECTIVE_METRICS), as many as directions
    directions: list[optuna.study.StudyDirection]
    sampler: PerTrialSampler
    pruner_spec: Any  # the pruner's config (None: no pruning); each pruned trial's job builds it from its attribute
    extend: Callable[[optuna.trial.Trial], None] | None  # hydra.sweeper.custom_search_space, given the config
    storage: str | None  # the study storage's URL; None: in memory
    heartbeat_interval: float
    grace: float  # seconds without a heartbeat (or a claim) before a trial counts as dead
    max_retry: int  # times a dead worker's trial runs again
    timeout: float | None  # seconds after which no new trial starts; None: n_trials decides
    max_failure_rate: float
    enqueue_trials: list[dict[str, Any]]  # a new study's first trials, {searched key: value}
    winner_file: Path | None  # hydra.sweeper.best_config; None: none is written
    replace_winner: bool
    compact_within: float  # several objectives: the compact pick is within this of the best val_acc
    registered_model: str | None  # where the compact pick is registered; None: tracking.register=false
    sweep_dir: str  # Hydra's sweep folder (the trials' logs), tagged on each trial's run
    job_threads: int | None  # trainer.threads of each trial when several share the cores; None: the config's

    @classmethod
    def of(cls, config: DictConfig, arguments: list[str]) -> Plan:
        s = config.hydra.sweeper
        kill_points.check()
        n_jobs = check_settings(config)
        space = SearchSpace.parse([f"{k}={v}" for k, v in (s.params or {}).items()] + list(arguments))
        check_search_space(config, space)
        spec = s.get("pruner")
        pruner_spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
        if make_pruner(pruner_spec) is None:
            pruner_spec = None
        elif s.storage is None:
            raise ConfigError("hydra.sweeper.storage", None, "a storage URL when pruning (trials open it)")
        names, directions = objectives(s, pruner_spec)
        enqueued = s.get("enqueue_trials") or []
        check_enqueued(enqueued, space)
        extend = functools.partial(get_method(s.custom_search_space), config) if s.custom_search_space else None
        # Parallel trials share the cores, recorded in each trial's config so that model=best reruns the
        # winner with the same arithmetic.
        shared = n_jobs > 1 and config.trainer.threads == 0
        return cls(
            study_name=s.study_name, n_trials=int(s.n_trials), n_jobs=n_jobs, space=space,
            objectives=names, directions=directions,
            sampler=PerTrialSampler(sampler_factory(s.sampler, space), s.sampler.get("seed")),
            pruner_spec=pruner_spec, extend=extend, storage=None if s.storage is None else str(s.storage),
            heartbeat_interval=float(s.heartbeat_interval), grace=float(s.grace_period), max_retry=int(s.max_retry),
            timeout=None if s.timeout is None else float(s.timeout), max_failure_rate=float(s.max_failure_rate),
            enqueue_trials=[OmegaConf.to_container(p, enum_to_str=True) for p in enqueued],
            winner_file=Path(s.best_config) if s.best_config else None, replace_winner=bool(s.replace_winner),
            compact_within=float(s.compact_within),
            registered_model=None if config.tracking.register is False else config.tracking.registered_model,
            sweep_dir=str(config.hydra.sweep.dir),
            job_threads=max(1, (os.cpu_count() or 1) // n_jobs) if shared else None,
        )  # fmt: skip
