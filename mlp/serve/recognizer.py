"""The recognizer: the champion (or any logged model) loaded back from the Model Registry,
taking 0-255 pixels and returning the ten digits' probabilities; and what a model URI names now."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlp import PROJECT_ROOT
from mlp.errors import UserError, first_line
from mlp.run import tracking
from mlp.run.registry import COMPACT, DEFAULT_MODEL, DEFAULT_URI
from mlp.sqlite_files import sqlite_file

DEFAULT_DIR = PROJECT_ROOT / "mlruns"  # conf/config.yaml's tracking.dir
DEFAULT_TRACKING = f"sqlite:///{DEFAULT_DIR / 'mlflow.db'}"
HOW_TO_MAKE_ONE = "train and register one with:  python train.py model=best   (or any run with tracking.register=true)"
HOW_TO_MAKE_COMPACT = (
    "the alias compact comes from a Pareto sweep (python train.py -m hydra/sweeper=optuna_pareto) or from "
    "python sweep.py compact --trial N"
)


def use_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri``, else $MLFLOW_TRACKING_URI, else the project's own store
    (mlruns/mlflow.db, where train.py logs by default); return the URI."""
    uri = tracking.tracking_uri(OmegaConf.create({"uri": uri, "dir": str(DEFAULT_DIR)}))  # as train.py resolves it
    mlflow.set_tracking_uri(uri)
    return uri


MODEL_URIS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a logged model's folder, or an alias"


def model_uri(text: str) -> str:
    """A model URI as given (models:/..., runs:/..., a path), or an alias of the project's
    registered model: ``compact`` is models:/mnist-mlp@compact. A web address is refused: MLflow
    reads models from its tracking store (MLFLOW_TRACKING_URI names a server), not from a URL."""
    if re.match(r"[a-z][a-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise UserError(
            f"--model {text!r} is not a model URI: expected {MODEL_URIS} (champion, compact); a tracking server "
            "is named by MLFLOW_TRACKING_URI"
        )
    return text if ":" in text or "/" in text else f"models:/{DEFAULT_MODEL}@{text}"


class NoModel(UserError):
    """The model URI names nothing that can be loaded (no registered model yet, a typo)."""


class Recognizer:
    """The logged model loaded once: ``predict`` takes uint8 pixels [N, 28, 28] (light digit on
    dark, 0-255) and returns probabilities [N, 10] as float32."""

    def __init__(self, uri: str = DEFAULT_URI, tracking_uri: str | None = None):
        self.tracking_uri = use_tracking(tracking_uri)
        self.uri = uri
        try:
            self.version = resolve(uri, self.tracking_uri)
            self.model = mlflow.pytorch.load_model(uri)
        except NoModel:
            raise
        except Exception as e:  # MLflow's, SQLAlchemy's, torch's and OS errors alike
            raise NoModel(f"cannot load the model {uri} from {self.tracking_uri}: {first_line(e)}") from e
        try:  # a model logged before models took pixels (or another model altogether) fails here, not on a user's image
            probs = self.predict(np.zeros((1, 28, 28), np.uint8))
            if probs.shape != (1, 10) or abs(float(probs.sum()) - 1) > 1e-3:
                raise ValueError(f"it returned {probs.shape[1:]} values summing to {float(probs.sum()):.3g}")
        except Exception as e:  # whatever the foreign model raises
            raise NoModel(
                f"the model {uri} does not take 0-255 pixels [N, 28, 28] and return 10 probabilities "
                f"({first_line(e)}); models logged since the recognizer was added do: {HOW_TO_MAKE_ONE}"
            ) from e

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))).numpy()


def resolve(uri: str, tracking_uri: str) -> str:
    """What ``uri`` names now in the store MLflow points at (``tracking_uri``): ``mnist-mlp version 3``
    for a models:/NAME@ALIAS or models:/NAME/VERSION URI, any other URI as it is (its load says
    whether it exists); a cheap query. NoModel when it names nothing (yet, or any more)."""
    store = sqlite_file(tracking_uri)
    if store is not None and not store.exists():  # MLflow would create an empty one
        raise NoModel(f"no tracking store at {store} yet: {HOW_TO_MAKE_ONE}")
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        return uri
    client = MlflowClient()
    try:
        if match[2]:
            return f"{match[1]} version {client.get_model_version_by_alias(match[1], match[2]).version}"
        return f"{match[1]} version {client.get_model_version(match[1], match[3]).version}"
    except MlflowException as e:
        # No such model or version: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE.
        # Anything else (a locked or damaged store) is no proof that the model is gone.
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    how = HOW_TO_MAKE_COMPACT if match[2] == COMPACT else HOW_TO_MAKE_ONE
    raise NoModel(f"no model at {uri} in {tracking_uri}: {how}")
