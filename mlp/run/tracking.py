"""MLflow: where runs go, and what each run records (params, tags, metrics, artifacts)."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import mlflow.store.tracking.sqlalchemy_store  # the default store: load it with the other imports
import numpy as np
import requests
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from mlp import PROJECT_ROOT
from mlp.errors import (
    ConfigError,
    UserError,
    check_writable_folder,
    first_line,
    interrupted,
    no_space_line,
    out_of_space,
)
from mlp.sqlite_files import read_only, sqlite_creation_lock, sqlite_file, table_names
from mlp.sweep import protocol

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf", "optuna", "hydra-optuna-sweeper")


def tracking_uri(tracking: DictConfig) -> str:
    """``tracking.uri``, else $MLFLOW_TRACKING_URI, else SQLite in ``tracking.dir``."""
    if tracking.uri:
        return _store_url(tracking.uri, "tracking.uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return _store_url(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(tracking.dir).resolve() / 'mlflow.db'}"


def _store_url(uri: str, key: str) -> str:
    """A tracking URI names a database or a server: anything else (a folder, a typo) MLflow takes
    for its file store, which it refuses with a page about migrating."""
    if "://" not in uri or uri.startswith("file:"):
        raise ConfigError(key, uri, f"a database URL ({TRACKING_URIS}) or a tracking server (http://host:port)")
    return uri


TRACKING_URIS = "sqlite:////abs/path/mlflow.db, postgresql://user@host/db, ..."


def _default_store(tracking: DictConfig) -> bool:
    return not tracking.uri and not os.environ.get("MLFLOW_TRACKING_URI")


def check_tracking_dir(tracking: DictConfig) -> None:
    """``tracking.dir`` can be written where the default store lives in it (a probe: nothing is
    left); another store's URI names a database or a server."""
    if _default_store(tracking):
        check_writable_folder("tracking.dir", tracking.dir)
    tracking_uri(tracking)


def check_local_store(tracking: DictConfig) -> None:
    """Before a run opens its store: ``tracking.dir`` can be written (default store) and a SQLite
    store is MLflow's and whole. Reads only: a refused store is left as it was."""
    check_tracking_dir(tracking)
    check_sqlite_store(tracking_uri(tracking))


def use_experiment(tracking: DictConfig) -> tuple[str, str]:
    """Point MLflow at the configured store and experiment; return (uri, experiment id).

    With the default SQLite store the experiment's artifacts go to ``<dir>/artifacts``, an
    absolute path, so runs launched from any working directory land in one place.
    """
    uri = tracking_uri(tracking)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    default_store = _default_store(tracking)
    check_local_store(tracking)
    if default_store:
        Path(tracking.dir).mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations of a new DB
    # MLflow logs each failed database write with its traceback, then raises it: what we do
    # with the error (one line, or the traceback of a bug) is decided where it arrives.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    mlflow.set_tracking_uri(uri)
    location = (Path(tracking.dir).resolve() / "artifacts").as_uri() if default_store else None
    try:
        experiment = _experiment(uri, tracking.experiment, location)
    except Exception as e:  # MLflow's and SQLAlchemy's errors alike
        if (full := out_of_space(e)) is not None:
            raise UserError(no_space_line(full[0] or sqlite_file(uri), full[1])) from e
        raise UserError(
            f"MLflow tracking at {uri} is not usable: {first_line(e)} (set tracking.uri or MLFLOW_TRACKING_URI)"
        ) from e
    if isinstance(experiment, str):
        return uri, experiment
    if experiment.lifecycle_stage == "deleted":  # MLflow keeps a deleted experiment's name until `mlflow gc`
        raise UserError(
            f"tracking.experiment={tracking.experiment!r} is deleted in MLflow ({uri}): restore it with "
            f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or choose another name with tracking.experiment=..."
        )
    return uri, experiment.experiment_id


def _experiment(uri: str, name: str, location: str | None) -> Any:
    """The experiment ``name`` in the store at ``uri`` (its id when this call created it). A new
    SQLite store that its first access fails to create (a full disk) is removed, not left half made
    for the next run to trip over ("table ... already exists")."""
    path = sqlite_file(uri)
    with sqlite_creation_lock(uri):  # the first access creates (migrates) a new store
        new = path is not None and (not path.exists() or path.stat().st_size == 0)
        try:
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return mlflow.create_experiment(name, artifact_location=location)
                except mlflow.exceptions.MlflowException:  # another worker created it first (a server)
                    experiment = mlflow.get_experiment_by_name(name)
            return experiment
        except BaseException:
            if new:
                path.unlink(missing_ok=True)
            raise


def check_sqlite_store(uri: str) -> None:
    """A SQLite file that is not MLflow's (MLflow would silently add its tables to it), or is
    damaged, is one line before MLflow touches it."""
    path = sqlite_file(uri)
    if path is not None and path.is_dir():
        raise UserError(f"MLflow tracking at {uri} is not usable: {path} is a folder, not a SQLite file")
    if path is None or not path.exists() or path.stat().st_size == 0:
        return
    try:
        with read_only(path) as db:
            tables = table_names(db)
            # SQLite's own check of every page (without matching indexes to rows: milliseconds on
            # a store of hundreds of runs); MLflow would write into a damaged file and spread the damage.
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as e:
        tables, problems = set(), [str(e)]
    if problems != ["ok"]:
        raise UserError(
            f"MLflow tracking at {uri} is not usable: {path} fails SQLite's integrity check ({problems[0]}); "
            "move it away (or repair it with sqlite3's .recover) and point tracking.dir elsewhere meanwhile"
        )
    if tables and "experiments" not in tables:
        raise UserError(
            f"MLflow tracking at {uri} is not usable: {path} is a SQLite database of something else "
            f"(tables {', '.join(sorted(tables)[:5])}); point tracking.dir or MLFLOW_TRACKING_URI elsewhere"
        )


def check_server(uri: str) -> None:
    """A tracking server that does not answer its health check is one line, not minutes of retries."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
    except requests.RequestException as e:
        raise UserError(
            f"MLflow tracking at {uri} is not usable: its /health does not answer ({type(e).__name__}); "
            "start the server (see scripts/services.py) or set tracking.uri / MLFLOW_TRACKING_URI"
        ) from e


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"num_layers": 4}} -> {"model.num_layers": 4}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _git_commit() -> tuple[str, bool] | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip(), bool(status.stdout.strip())


def run_tags(overrides: list[str], device: str, seed: int) -> dict[str, str]:
    """What it takes to rebuild a run: overrides, code version, package versions, device, seed."""
    tags = {
        "hydra.overrides": " ".join(overrides),
        "device": device,
        "seed": str(seed),
        "versions.python": platform.python_version(),
    }
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            tags[f"versions.{name}"] = importlib.metadata.version(name)
    if (git := _git_commit()) is not None:
        tags["mlflow.source.git.commit"], dirty = git
        tags["git.dirty"] = str(dirty).lower()
    return tags


@contextlib.contextmanager
def start_run(cfg: DictConfig, run_name: str, tags: dict[str, str], run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run holding the resolved config (as params and as config.yaml); ``run_id``
    resumes a run opened elsewhere (a sweep trial's, opened by the sweeper).

    A run that raises ends FAILED with the reason in its ``failure_reason`` tag (protocol.FAILURE); interrupted (Ctrl-C,
    SIGTERM), it ends KILLED.
    """
    _, experiment_id = use_experiment(cfg.tracking)
    started: list[str] = []
    try:
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            started.append(run.info.run_id)
            try:  # from here: interrupted while the params are logged too, the run ends KILLED (not FAILED)
                if run_id is not None:
                    mlflow.set_tags(tags)
                resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
                # A single run's sweep.* keys are all null: not params worth a column.
                params = {k: v for k, v in flatten(resolved).items() if not (k.startswith("sweep.") and v is None)}
                mlflow.log_params(params)
                mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
                yield run
            except (KeyboardInterrupt, Exception) as e:
                if interrupted(e):  # Ctrl-C or SIGTERM, or an error a library made of one (torch.export's)
                    mlflow.set_tag(protocol.FAILURE, "interrupted (Ctrl-C or SIGTERM)")
                    mlflow.end_run("KILLED")
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    raise KeyboardInterrupt from e
                _remove_half_written(e, cfg.tracking)
                with contextlib.suppress(Exception):  # a full disk may refuse the tag; the run still ends FAILED
                    mlflow.set_tag(protocol.FAILURE, f"{type(e).__name__}: {e}"[:5000])
                raise
    except Exception as e:
        if (full := out_of_space(e)) is None:
            raise
        path, why = full
        raise UserError(
            f"{no_space_line(path or sqlite_file(tracking_uri(cfg.tracking)), why)}; {_end_failed(started)}"
        ) from e


def _remove_half_written(ex: BaseException, tracking: DictConfig) -> None:
    """An artifact of this run that a full disk cut short is removed: no half-written file stays
    behind, and the space it took lets MLflow record that the run FAILED."""
    full = out_of_space(ex)
    if full is None or full[0] is None:
        return
    path = Path(full[0]).resolve()
    if path.is_relative_to(Path(tracking.dir).resolve() / "artifacts") and path.is_file():
        path.unlink()


def _end_failed(started: list[str]) -> str:
    """End the run FAILED where MLflow's own attempt failed (a full disk); say how it ended."""
    if not started:
        return "no MLflow run was started"
    client = mlflow.MlflowClient()
    with contextlib.suppress(Exception):
        if client.get_run(started[0]).info.status == "RUNNING":
            client.set_terminated(started[0], "FAILED")
        return f"the MLflow run {started[0]} ended {client.get_run(started[0]).info.status}"
    return f"the MLflow run {started[0]} could not be marked FAILED (it shows RUNNING)"


def tag_pruned(epochs_run: int) -> None:
    """Tag the active run as a sweep trial that its pruner stopped early."""
    mlflow.set_tags({protocol.TAG_STATE: "PRUNED", protocol.TAG_PRUNED_AT: str(epochs_run)})


def log_epoch(metrics: dict[str, float]) -> None:
    mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))


def log_figure(fig: Figure, path: str) -> None:
    import matplotlib.pyplot as plt  # pyplot takes a second to load: sweep.py's listings never need it

    mlflow.log_figure(fig, path)
    plt.close(fig)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV from a list of dicts; the header is the union of their keys, in order of appearance."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(header)] + [",".join(str(row.get(k, "")) for k in header) for row in rows]
    return "\n".join(lines) + "\n"


def log_table(rows: list[dict[str, Any]], path: str) -> None:
    mlflow.log_text(csv_text(rows), path)


def log_model(model: Any, example: np.ndarray) -> str:
    """The model in MLflow's PyTorch flavour, saved as a torch.export graph (pt2): loading it
    runs no pickled code. The graph takes inputs of ``example``'s dtype and shape (any batch
    size), which the signature, inferred from the example, records. Requirements are given, not
    inferred (inference takes seconds). Returns the model's URI (``models:/m-...``).

    The graph is exported on the CPU, so it runs anywhere; MLflow's pyfunc loader would put it
    on CUDA where a GPU is present (and refuse: an exported graph cannot change device), so its
    check of the input example runs with MLFLOW_DEFAULT_PREDICTION_DEVICE=cpu."""
    on_cpu = copy.deepcopy(model).cpu().eval()
    with scoped_env(MLFLOW_DEFAULT_PREDICTION_DEVICE=os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE") or "cpu"):
        info = mlflow.pytorch.log_model(
            on_cpu,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={importlib.metadata.version('torch')}"],
        )
    return info.model_uri


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Environment variables set for the block, then restored."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# MLflow 3.17's UI opens an experiment in its GenAI mode unless the link says otherwise (its
# experiment tag mlflow.experimentKind is not read while the mode switch is shown).
MODEL_TRAINING = "workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str, run_id: str) -> tuple[str, str]:
    """(command that starts the MLflow UI on this store, link to the run in it)."""
    command, base = ui_base(uri)
    return command, f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def ui_base(uri: str) -> tuple[str, str]:
    """(command that starts the MLflow UI on this store, the UI's address once it runs)."""
    if uri.startswith("http"):
        return "mlflow ui", uri.rstrip("/")
    return f"mlflow ui --backend-store-uri {uri} --workers 1", "http://127.0.0.1:5000"


def ui_view_link(uri: str, experiment_id: str, view: str) -> str:
    """A link to the experiment's runs table as its saved view ``view`` shows it (the key of
    experiment tag ``mlflow.sharedViewState.<view>``: filter, order and columns)."""
    return f"{ui_base(uri)[1]}/#/experiments/{experiment_id}/runs?viewStateShareKey={view}&{MODEL_TRAINING}"
