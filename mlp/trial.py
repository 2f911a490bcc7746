"""The job's side of a sweep trial: report each epoch to its Optuna trial, stop when told.

The sweeper tells a job which trial it is (``sweep.study``, ``sweep.trial``, ``sweep.storage``);
the job opens that trial in the study storage and, after every epoch, reports its validation
accuracy and asks the pruner, as Optuna's ``report`` / ``should_prune`` do, through public
methods of the storage and the pruner. A job told to stop records the epoch on
its trial (``pruned_at_epoch``), logs what it has and returns; the sweeper then tells Optuna
PRUNED. (Raising ``TrialPruned`` out of the job would work too, but Hydra's launchers report
every exception from a job as an error with its traceback.) Nothing here imports the sweeper.
"""

from __future__ import annotations

import functools
import random
import time
from typing import Any

import optuna
import sqlalchemy

from mlp.errors import ConfigError, UserError, first_line
from mlp.filelock import read_only, sqlite_creation_lock, sqlite_file, table_names


def progress_step(epoch: int, epochs: int) -> int:
    """The step a trial reports at: the percentage of its epochs done. Trials of 5 and of 20
    epochs are then compared at the same point of their learning-rate schedules."""
    return round(100 * epoch / epochs)


CONNECT_TIMEOUT = 10  # seconds a database server may take to answer before it counts as unreachable


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments for a storage URL: SQLite waits for a lock (several processes
    share the file); a PostgreSQL server that does not answer fails within seconds, not minutes."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return {}


def storage_tables(url: str) -> set[str] | None:
    """The tables of the database at ``url``, read without creating or changing anything; None
    when there is no database yet (a SQLite file that does not exist or is empty)."""
    if (path := sqlite_file(url)) is not None:
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            return None
        with read_only(path) as db:
            return table_names(db)
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


STORAGE_CHOICES = "an Optuna RDB storage URL, e.g. sqlite:////abs/path/optuna.db or postgresql://user@host:5432/db"
OPTUNA_TABLES = {"studies", "version_info"}  # what every Optuna RDB storage has


def check_storage(url: str, key: str = "hydra.sweeper.storage") -> bool:
    """Refuse a database that holds another application's tables (Optuna would add its own to
    it) or that cannot be read, before Optuna opens it. True when it is an Optuna storage,
    False when there is no database or no table yet."""
    try:
        tables = storage_tables(url)
    except Exception as e:  # noqa: BLE001 - a bad URL, a damaged file, a server that does not answer, a missing driver
        raise ConfigError(key, url, f"{STORAGE_CHOICES} ({first_line(e)})") from e
    if tables and not OPTUNA_TABLES <= tables:
        raise UserError(
            f"{key}: {url} holds another application's tables ({', '.join(sorted(tables)[:5])}), not an Optuna "
            "study storage: it is left as it is; point the storage at a new or an Optuna database"
        )
    return bool(tables)


def open_storage(url: str, **heartbeat: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``. A new database is created by one process at a time. On a
    server, workers that start together may create the same new tables at once: the losers open
    it again."""
    kwargs = {"engine_kwargs": engine_kwargs(url)}
    for attempt in range(CREATION_ATTEMPTS):
        try:
            with sqlite_creation_lock(url):
                return optuna.storages.RDBStorage(url, **kwargs, **heartbeat)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == CREATION_ATTEMPTS - 1 or not any(s in str(e) for s in ("already exists", "duplicate key")):
                raise
            time.sleep(0.1 + random.random())  # another worker is creating the tables: look again
    raise AssertionError("unreachable")


CREATION_ATTEMPTS = 5


@functools.cache
def job_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for all the trials a process runs: a sweep's
    in-process trials would otherwise each open a pool of their own."""
    return open_storage(url)


PRUNER_CHOICES = (
    "hydra/sweeper/pruner=percentile|median|successive_halving|hyperband|none, "
    "or a mapping with _target_: optuna.pruners.<Class> and its arguments"
)


def make_pruner(spec: Any) -> optuna.pruners.BasePruner | None:
    """The Optuna pruner a ``hydra.sweeper.pruner`` config asks for; None for no pruning."""
    if not spec:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    from hydra.utils import instantiate

    try:
        pruner = instantiate(spec, _execution_whitelist_="optuna.pruners.*")
    except Exception as e:
        reason = f"cannot make {spec['_target_']} ({first_line(e)})"
        raise UserError(f"hydra.sweeper.pruner: {reason}; expected {PRUNER_CHOICES}") from e
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    return None if isinstance(pruner, optuna.pruners.NopPruner) else pruner


class TrialLink:
    """One running trial of a pruned sweep, opened from its storage by study name and number.
    It reports and asks the pruner through the storage's and the pruner's public methods (what
    ``Trial.report`` and ``Trial.should_prune`` do), since a job cannot be handed the sweeper's
    ``Trial`` object."""

    def __init__(
        self, study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int, pruner: optuna.pruners.BasePruner
    ):
        self.study, self.storage, self.trial_id, self.pruner = study, storage, trial_id, pruner

    @classmethod
    def open(cls, storage: str | None, study_name: str | None, number: int | None) -> TrialLink | None:
        """The link when the trial belongs to a pruned sweep, else None (nothing to report)."""
        if storage is None or study_name is None or number is None:
            return None
        rdb = job_storage(storage)
        trial_id = rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study_name), number)
        pruner = make_pruner(rdb.get_trial(trial_id).user_attrs.get("pruner"))
        if pruner is None:
            return None
        return cls(optuna.load_study(study_name=study_name, storage=rdb, pruner=pruner), rdb, trial_id, pruner)

    def should_stop(self, epoch: int, epochs: int, val_acc: float) -> bool:
        """Report this epoch; True when the pruner stops the trial (never after its last epoch)."""
        self.storage.set_trial_intermediate_value(self.trial_id, progress_step(epoch, epochs), val_acc)
        if epoch < epochs and self.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            self.storage.set_trial_user_attr(self.trial_id, "pruned_at_epoch", epoch)  # the sweeper tells PRUNED
            return True
        return False
