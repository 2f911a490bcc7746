"""The Model Registry: a run's model registered under a name, the alias ``champion`` on the
best version, and the recognizer loaded back from ``models:/<name>@champion`` (or any URI).

The alias moves to a new version only if its validation accuracy is at least the current
champion's, so ``models:/mnist-mlp@champion`` is always the best model registered so far.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlp import tracking
from mlp.config import PROJECT_ROOT
from mlp.errors import UserError, first_line
from mlp.filelock import sqlite_file

log = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_MODEL = "mnist-mlp"
DEFAULT_URI = f"models:/{DEFAULT_MODEL}@{CHAMPION}"
DEFAULT_DIR = PROJECT_ROOT / "mlruns"  # conf/config.yaml's tracking.dir
DEFAULT_TRACKING = f"sqlite:///{DEFAULT_DIR / 'mlflow.db'}"
HOW_TO_MAKE_ONE = "train and register one with:  python train.py model=best   (or any run with tracking.register=true)"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    champion: bool  # whether the alias moved to this version
    champion_version: str  # the version the alias points at afterwards

    def summary(self) -> str:
        if self.champion:
            return f"registered as {self.name} version {self.version}, now models:/{self.name}@{CHAMPION}"
        return (
            f"registered as {self.name} version {self.version}; "
            f"{CHAMPION} stays version {self.champion_version} (higher validation accuracy)"
        )


def _val_acc(client: MlflowClient, version: Any) -> float:
    """A version's validation accuracy: its tag, else its run's metric, else -1 (never better)."""
    if "val_acc" in version.tags:
        return float(version.tags["val_acc"])
    with contextlib.suppress(MlflowException):
        return client.get_run(version.run_id).data.metrics.get("val/acc", -1.0)
    return -1.0


def register(model_uri: str, name: str, run_id: str, val_acc: float, tags: dict[str, str]) -> Registered:
    """Register ``model_uri`` as a new version of ``name`` with ``tags`` (run, study, trial,
    accuracies); move the alias ``champion`` to it if ``val_acc`` >= the champion's."""
    client = MlflowClient()
    version_tags = {"run_id": run_id, "val_acc": repr(val_acc), **tags}
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    number = str(version.version)
    if current is None or val_acc >= _val_acc(client, current):
        client.set_registered_model_alias(name, CHAMPION, number)
        return Registered(name, number, True, number)
    return Registered(name, number, False, str(current.version))


def use_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri``, else $MLFLOW_TRACKING_URI, else the project's own store
    (mlruns/mlflow.db, where train.py logs by default); return the URI."""
    uri = tracking.tracking_uri(OmegaConf.create({"uri": uri, "dir": str(DEFAULT_DIR)}))  # as train.py resolves it
    mlflow.set_tracking_uri(uri)
    return uri


class NoModel(UserError):
    """The model URI names nothing that can be loaded (no registered model yet, a typo)."""


class Recognizer:
    """The logged model loaded once: ``predict`` takes uint8 pixels [N, 28, 28] (light digit on
    dark, 0-255) and returns probabilities [N, 10] as float32."""

    def __init__(self, uri: str = DEFAULT_URI, tracking_uri: str | None = None):
        self.tracking_uri = use_tracking(tracking_uri)
        self.uri = uri
        store = sqlite_file(self.tracking_uri)
        if store is not None and not store.exists():  # MLflow would create an empty one
            raise NoModel(f"no tracking store at {store} yet: {HOW_TO_MAKE_ONE}")
        try:
            self.version = _registered_version(uri)
            if self.version is None:
                raise NoModel(f"no model at {uri} in {self.tracking_uri}: {HOW_TO_MAKE_ONE}")
            self.model = mlflow.pytorch.load_model(uri)
        except NoModel:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow's, SQLAlchemy's, torch's and OS errors alike
            raise NoModel(f"cannot load the model {uri} from {self.tracking_uri}: {first_line(e)}") from e
        try:  # a model logged before models took pixels (or another model altogether) fails here, not on a user's image
            probs = self.predict(np.zeros((1, 28, 28), np.uint8))
            if probs.shape != (1, 10) or abs(float(probs.sum()) - 1) > 1e-3:
                raise ValueError(f"it returned {probs.shape[1:]} values summing to {float(probs.sum()):.3g}")
        except Exception as e:  # noqa: BLE001 - whatever the foreign model raises
            raise NoModel(
                f"the model {uri} does not take 0-255 pixels [N, 28, 28] and return 10 probabilities "
                f"({first_line(e)}); models logged since the recognizer was added do: {HOW_TO_MAKE_ONE}"
            ) from e

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))).numpy()


def _registered_version(uri: str) -> str | None:
    """``mnist-mlp version 3`` for a models:/NAME@ALIAS or models:/NAME/VERSION URI that resolves,
    None for one that does not; any other URI as it is (its load says whether it exists)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        return uri
    client = MlflowClient()
    try:
        if match[2]:
            return f"{match[1]} version {client.get_model_version_by_alias(match[1], match[2]).version}"
        return f"{match[1]} version {client.get_model_version(match[1], match[3]).version}"
    except MlflowException:
        return None


def winner_origin(choices: dict[str, str], sources: list[str]) -> dict[str, str] | None:
    """{"study", "trial"} when the run's model group is a winner file (model=best, model=best_<study>)
    with its ``# winner:`` line; ``sources`` are the config folders Hydra searched."""
    from mlp.sweeps import winner_record

    choice = choices.get("hydra.choice.model")
    for folder in sources if choice else []:
        if (record := winner_record(Path(folder) / "model" / f"{choice}.yaml")) is not None:
            return {"study": record[0], "trial": str(record[1])}
    return None
