"""The Model Registry, as a run writes to it: the run's model registered under a name, and the
alias ``champion`` moved to the best version (mlp.serve.recognizer loads it back).

Only models trained on MNIST's canonical split (data=mnist with conf/data/mnist.yaml's
val_size and split_seed) are scored on the same validation and test images, so only they are
compared: the alias moves to such a model when its validation accuracy is strictly above the
champion's. Any other model can be registered, but never becomes champion.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlp.run.winner_files import TrainedOn, canonical_split

log = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_MODEL = "mnist-mlp"
DEFAULT_URI = f"models:/{DEFAULT_MODEL}@{CHAMPION}"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    champion: bool  # whether the alias moved to this version
    champion_version: str | None  # the version the alias points at afterwards (None: no champion)
    reason: str = ""  # why the alias stayed, or what it replaced
    alias: str = CHAMPION  # the alias this is about (champion_version: the version it points at)

    def summary(self) -> str:
        if self.champion:
            moved = f"registered as {self.name} version {self.version}, now models:/{self.name}@{self.alias}"
            return f"{moved} ({self.reason})" if self.reason else moved
        stays = f"{self.alias} stays version {self.champion_version}" if self.champion_version else f"no {self.alias}"
        return f"registered as {self.name} version {self.version}; {stays}: {self.reason}"


def _val_acc(client: MlflowClient, version: Any) -> float:
    """A version's validation accuracy: its tag, else (no tag, or one edited into something that
    is not a number) its run's metric, else -1 (never better)."""
    with contextlib.suppress(KeyError, ValueError):
        if math.isfinite(value := float(version.tags["val_acc"])):
            return value
    with contextlib.suppress(MlflowException):
        return client.get_run(version.run_id).data.metrics.get("val/acc", -1.0)
    return -1.0


def _trained_on(client: MlflowClient, version: Any) -> TrainedOn | None:
    """What a registered version was trained on: its tags, else (registered before they were
    written) its run's params; None when neither says."""
    with contextlib.suppress(KeyError, ValueError):
        return TrainedOn.of(version.tags)
    with contextlib.suppress(MlflowException, KeyError, ValueError):
        return TrainedOn.of(client.get_run(version.run_id or version.tags.get("run_id", "")).data.params)
    return None


def _verdict(client: MlflowClient, current: Any, val_acc: float, trained_on: TrainedOn) -> tuple[bool, str]:
    """(whether the alias moves from ``current`` to a model of ``val_acc`` trained on ``trained_on``, why)."""
    canonical = canonical_split()
    theirs = None if current is None else _trained_on(client, current)
    compared = "only such models are compared"
    if not trained_on.canonical:
        if theirs is not None and theirs.canonical:
            return False, f"this model was trained on {trained_on}, the champion on {canonical}; {compared}"
        return False, f"this model was trained on {trained_on}; only models trained on {canonical} become {CHAMPION}"
    if current is None:
        return True, ""
    if theirs is None or not theirs.canonical:  # a champion from before this rule: it was never comparable
        return True, f"version {current.version}, the champion until now, was trained on {theirs or 'unrecorded data'}"
    best = _val_acc(client, current)
    if val_acc > best:
        return True, f"validation accuracy {val_acc:.2%} > {best:.2%} of version {current.version}"
    return False, f"this model's validation accuracy {val_acc:.2%} is not above its {best:.2%} on the same split"


def register(
    model_uri: str, name: str, run_id: str, val_acc: float, tags: dict[str, str], trained_on: TrainedOn
) -> Registered:
    """Register ``model_uri`` as a new version of ``name`` with ``tags`` (run, study, trial, accuracies)
    and what it was ``trained_on``; move the alias ``champion`` to it if it was trained on MNIST's
    canonical split and ``val_acc`` is strictly above the champion's (see the module's docstring)."""
    client = MlflowClient()
    version_tags = {"run_id": run_id, "val_acc": repr(val_acc), **trained_on.tags(), **tags}
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    number = str(version.version)
    moves, reason = _verdict(client, current, val_acc, trained_on)
    if moves:
        client.set_registered_model_alias(name, CHAMPION, number)
        return Registered(name, number, True, number, reason)
    return Registered(name, number, False, None if current is None else str(current.version), reason)


COMPACT = "compact"  # the alias of the cheap model beside the champion (mlp.sweep.front's rule picks it)


def register_as(
    model_uri: str, name: str, alias: str, run_id: str, val_acc: float, tags: dict[str, str], trained_on: TrainedOn
) -> Registered:
    """Register ``model_uri`` under ``name`` and move ``alias`` to it, a model the caller has
    already judged fit for it (trained on MNIST's canonical split, as the champion). Registered
    again only when ``alias`` does not already hold a version of ``run_id``."""
    client = MlflowClient()
    with contextlib.suppress(MlflowException):
        current = client.get_model_version_by_alias(name, alias)
        if current.run_id == run_id or current.tags.get("run_id") == run_id:
            return Registered(name, str(current.version), True, str(current.version), "already", alias)
    version_tags = {"run_id": run_id, "val_acc": repr(val_acc), **trained_on.tags(), **tags}
    number = str(mlflow.register_model(model_uri, name, tags=version_tags).version)
    client.set_registered_model_alias(name, alias, number)
    return Registered(name, number, True, number, "", alias)
