"""A study's objectives and, when it has several, its Pareto front and the picks made from it.

A study's objectives are Optuna's metric names (``hydra.sweeper.objectives``, recorded when the
study was made; a study without them has the one, validation accuracy). With several, validation
accuracy is one of them, maximised, and the rule for choosing is:

- the **winner file** holds the most accurate trial (by validation accuracy; the lower trial
  number on a tie), which is always on the front;
- the **compact pick** is, among the front's trials whose validation accuracy is within
  ``compact_within`` of that best, the cheapest by the first objective after validation accuracy
  (the more accurate, then the lower number, on a tie). It may be the most accurate trial itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import optuna

from mlp.errors import first_line
from mlp.sweep import protocol

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

COMPLETE = optuna.trial.TrialState.COMPLETE
COUNT = "params"  # the objective that counts (weights): shown as a whole number


def names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [protocol.OBJECTIVE])


def several(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def accuracy(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> float | None:
    """The trial's validation accuracy (its value in a single-objective study); None before it completed."""
    if trial.values is None:
        return None
    found = names(study)
    return trial.values[found.index(protocol.OBJECTIVE) if protocol.OBJECTIVE in found else 0]


def values(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The trial's objectives by name (empty before it completed); a count as an int."""
    return {n: round(v) if n == COUNT else v for n, v in zip(names(study), trial.values or [], strict=False)}


def most_accurate(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best trial: its best value with one objective, else its most accurate trial;
    None when no trial has completed."""
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    if not complete:
        return None
    if not several(study):
        return study.best_trial
    return max(complete, key=lambda t: (accuracy(study, t), -t.number))


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front (with one objective: the best trial), most accurate first."""
    if not several(study):
        best = most_accurate(study)
        return [] if best is None else [best]
    return sorted(study.best_trials, key=lambda t: (-accuracy(study, t), t.number))


def cost_name(study: optuna.Study) -> str | None:
    """The first objective after validation accuracy: what the compact pick is cheapest by."""
    return next((n for n in names(study) if n != protocol.OBJECTIVE), None)


def cost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> float:
    """The trial's cost by ``cost_name``, smaller is cheaper (a maximised one is negated)."""
    name = cost_name(study)
    value = values(study, trial)[name]
    return -value if study.directions[names(study).index(name)] == optuna.study.StudyDirection.MAXIMIZE else value


def eligible(study: optuna.Study, within: float) -> list[optuna.trial.FrozenTrial]:
    """The front's trials within ``within`` of the most accurate trial's validation accuracy."""
    trials = front(study)
    if not trials or not several(study):
        return []
    top = accuracy(study, trials[0])
    return [t for t in trials if accuracy(study, t) >= top - within - 1e-12]


def compact_pick(study: optuna.Study, within: float) -> optuna.trial.FrozenTrial | None:
    """The compact pick (module docstring); None for a single-objective study or no front."""
    trials = eligible(study, within)
    return min(trials, key=lambda t: (cost(study, t), -accuracy(study, t), t.number)) if trials else None


def why_not_compact(study: optuna.Study, trial: optuna.trial.FrozenTrial, within: float) -> str | None:
    """Why ``trial`` may not be the compact model (None: it may)."""
    if not several(study):
        return f"study {study.study_name!r} has one objective: it has no front to pick a compact model from"
    numbers = [t.number for t in front(study)]
    if trial.number not in numbers:
        return f"trial {trial.number} is not on the study's Pareto front (trials {', '.join(map(str, numbers))})"
    top = accuracy(study, front(study)[0])
    if trial.number not in [t.number for t in eligible(study, within)]:
        return (
            f"trial {trial.number}'s validation accuracy {accuracy(study, trial):.4f} is more than {within} "
            f"below the front's best, {top:.4f}"
        )
    return None


def measured(client: MlflowClient, run_id: str, wanted: list[str], val_acc: float) -> list[float] | str:
    """The objectives ``wanted`` of a trial, in order, from its run's metrics (validation accuracy
    from the job's return value); or why they cannot be had."""
    if not math.isfinite(val_acc):
        return f"objective {val_acc}"
    if wanted == [protocol.OBJECTIVE]:
        return [val_acc]
    try:
        metrics = client.get_run(run_id).data.metrics
    except Exception as e:  # noqa: BLE001 - the tracking store went away: this trial cannot be scored
        return f"its MLflow run could not be read: {first_line(e)}"
    found = []
    for name in wanted:
        value = val_acc if name == protocol.OBJECTIVE else metrics.get(protocol.OBJECTIVE_METRICS[name])
        if value is None or not math.isfinite(value):
            return f"its run logged no finite {protocol.OBJECTIVE_METRICS[name]} (objective {name})"
        found.append(float(value))
    return found


def shown_value(name: str, value: float) -> str:
    """An objective as a person reads it: accuracy to 4 places, a count whole, others to 4 digits."""
    return f"{value:.4f}" if name == protocol.OBJECTIVE else str(round(value)) if name == COUNT else f"{value:.4g}"


def shown(wanted: list[str], found: list[float]) -> str:
    """Objectives as a log line reads them: val_acc=0.9812 latency_ms=0.0412."""
    return " ".join(f"{n}={shown_value(n, v)}" for n, v in zip(wanted, found, strict=True))
