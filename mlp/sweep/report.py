"""Reporting on a study: its trials by state, the leaderboard and Optuna's plots, logged to its
MLflow parent run (``report``) and shown by ``sweep.py``.

Trials are joined to their MLflow runs by the run id the sweeper stores on each Optuna trial
(``protocol.ATTR_RUN_ID``), never by study name and trial number.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from mlp.run import tracking
from mlp.sweep import protocol

log = logging.getLogger(__name__)

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}  # leaderboard order; then FAIL
SAVE = {"bbox_inches": "tight"}  # Optuna's figures: grow the canvas to hold every label
RUN_ID_CHUNK = 100  # run ids per MLflow search: a filter string of bounded length


def shown(value: object) -> str:
    """A parameter's value as a person reads it (tags, log lines): floats to 4 significant digits,
    0.003996 rather than 0.003996262389277941. The exact values stay in the trial, its run's
    config and the winner file."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name, e.g. {"COMPLETE": 12, "PRUNED": 3, "FAIL": 1}."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial, or None when none has completed."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    return study.best_trial


def trial_runs(client: MlflowClient, study: optuna.Study) -> dict[int, Any]:
    """The MLflow run of each trial, by trial number, through the run id stored on the trial."""
    wanted = {
        t.user_attrs[protocol.ATTR_RUN_ID]: t.number
        for t in study.get_trials(deepcopy=False)
        if protocol.ATTR_RUN_ID in t.user_attrs
    }
    runs: dict[int, Any] = {}
    experiments = [e.experiment_id for e in client.search_experiments()]
    ids = sorted(i for i in wanted if re.fullmatch(r"[0-9a-f]{32}", i))  # MLflow's run ids; nothing else is quoted
    for start in range(0, len(ids) if experiments else 0, RUN_ID_CHUNK):
        chunk = ", ".join(f"'{i}'" for i in ids[start : start + RUN_ID_CHUNK])
        for run in client.search_runs(experiments, filter_string=f"attributes.run_id IN ({chunk})", max_results=50_000):
            runs[wanted[run.info.run_id]] = run
    return runs


def leaderboard(study: optuna.Study, runs: dict[int, Any]) -> list[dict[str, Any]]:
    """One row per finished or failed trial, best validation accuracy first."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        run = runs.get(trial.number)
        metrics = run.data.metrics if run else {}
        row = {
            "trial": trial.number,
            "state": trial.state.name,
            "val_acc": trial.value if trial.value is not None else "",
            "test_acc": metrics.get("test/acc", ""),
            "epochs": trial.params.get("trainer.epochs", run.data.params.get("trainer.epochs", "") if run else ""),
            "epochs_run": int(metrics["epochs_run"]) if "epochs_run" in metrics else "",
            "train_seconds": round(metrics["train_seconds"], 1) if "train_seconds" in metrics else "",
            "wall_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1)
            if run and run.info.end_time
            else "",
            "run_id": run.info.run_id if run else "",
        }
        row.update({k: v for k, v in trial.params.items() if k != "trainer.epochs"})
        rows.append(row)
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r["state"], 2), -(r["val_acc"] or 0), r["trial"]))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    header = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(key: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if key.endswith("_acc") else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(k, row.get(k, "")) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def optuna_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's own plots (matplotlib), by file name; a plot the study cannot give yet is skipped."""
    import optuna.visualization.matplotlib as ov  # loads matplotlib's pyplot: only when plots are drawn

    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" notes
    figures = {}
    for name, plot in (
        ("optimization_history", ov.plot_optimization_history),
        ("param_importances", ov.plot_param_importances),
        ("parallel_coordinate", ov.plot_parallel_coordinate),
        ("slice", ov.plot_slice),
        ("intermediate_values", ov.plot_intermediate_values),
    ):
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            continue  # a sweep without a pruner reports none
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log.info("skipping Optuna plot %s: %s", name, e)
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 10), max(fig.get_size_inches()[1], 6))
        legible(fig)
        if name == "intermediate_values":
            show_pruned_ends(first, study)
        if name == "parallel_coordinate":
            spread_axes(fig, study)
        figures[f"optuna/{name}.png"] = fig
    return figures


def show_pruned_ends(ax: Any, study: optuna.Study) -> None:
    """A pruned trial ends where the pruner stopped it: show that end as a large cross, and
    say so in the legend (Optuna draws a trial stopped after one report as one small dot)."""
    pruned = {f"Trial{t.number}" for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))}
    for line in ax.get_lines():
        if line.get_label() in pruned:
            line.set(linestyle="--", marker="X", markersize=9, markevery=[-1], markeredgecolor="black")
            line.set_label(f"{line.get_label()} (pruned)")
    if pruned:
        ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0)


def spread_axes(fig: Any, study: optuna.Study) -> None:
    """Optuna's parallel-coordinate plot puts ten axes in 10 inches, cuts names over 19
    characters to "optimizer.weight_..." and lets the lines run through the tick labels:
    give each axis 1.5 inches, the names in full and the tick labels a white ground."""
    base, *twins = fig.axes
    fig.set_size_inches(max(10.0, 1.5 * len(base.get_xticks()) + 2), 6.5)
    names = sorted({key for t in study.get_trials(deepcopy=False) for key in t.params})

    def full(text: str) -> str:
        return next((n for n in names if text.endswith("...") and n.startswith(text[:-3])), text)

    texts = [full(label.get_text()) for label in base.get_xticklabels()]
    base.set_xticks(base.get_xticks(), texts, rotation=35, horizontalalignment="right")
    for ax in twins:
        if ax.get_label() == "<colorbar>":
            continue
        for label in ax.get_yticklabels():
            label.set_bbox({"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})


def legible(fig: Any) -> None:
    """Optuna's figures as they come clip long parameter names, overlap the names of
    categorical values and of a log axis's minor ticks, and draw the first trials white on
    grey: fix those."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # only when plots are drawn

    for ax in fig.axes:
        if ax.get_xscale() == "log":  # a slice panel of lr: "2x10^-3 3x10^-3 ..." would run together
            low, high = ax.get_xlim()
            subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 1.5 else (1.0,)
            ax.xaxis.set_major_locator(LogLocator(subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelrotation=35)
        for collection in ax.collections:
            if collection.get_array() is not None:
                collection.set_cmap("viridis")  # trial-number colours, none of them near white
        labels = [t.get_text() for t in ax.get_xticklabels()]
        if any(label.strip("'") and not label.replace("−", "-").lstrip("-$").replace(".", "")[:1].isdigit()
               for label in labels):  # fmt: skip
            ax.tick_params(axis="x", labelrotation=35)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
    if any(ax.get_label() == "<colorbar>" for ax in fig.axes):
        return  # re-laying it out would push the colour bar over a panel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()


def report(study: optuna.Study, client: MlflowClient, parent_id: str) -> None:
    """Leaderboard (CSV and Markdown), counts, best value and Optuna's plots on the parent run."""
    import matplotlib.pyplot as plt  # only when plots are drawn: sweep.py's listings start without it

    rows = leaderboard(study, trial_runs(client, study))
    client.log_text(parent_id, tracking.csv_text(rows), "leaderboard.csv")
    client.log_text(parent_id, markdown_table(rows), "leaderboard.md")
    counts = state_counts(study)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        client.log_metric(parent_id, f"trials_{state.lower()}", counts.get(state, 0))
    if (best := best_trial(study)) is not None:
        client.log_metric(parent_id, "best/val_acc", best.value)
        client.set_tag(parent_id, f"{protocol.PARENT_BEST}trial", str(best.number))
        for key, value in best.params.items():
            client.set_tag(parent_id, f"{protocol.PARENT_BEST}{key}", shown(value))
    for path, fig in optuna_figures(study).items():
        client.log_figure(parent_id, fig, path, save_kwargs=SAVE)
        plt.close(fig)
