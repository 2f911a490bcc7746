"""Reporting on a study: its trials by state, the leaderboard and Optuna's plots, logged to its
MLflow parent run (``report``) and shown by ``sweep.py``.

Trials are joined to their MLflow runs by the run id the sweeper stores on each Optuna trial
(``protocol.ATTR_RUN_ID``), never by study name and trial number.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
import warnings
from typing import TYPE_CHECKING, Any

import optuna

from mlp.sweep import front, protocol

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's writers (and mlp.run.tracking: MLflow, torch) are imported by the functions that write to a parent run:
# sweep.py's listings (trials by state, the leaderboard of a study) start without them.

log = logging.getLogger(__name__)

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}  # leaderboard order; then FAIL
STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
SAVE = {"bbox_inches": "tight"}  # Optuna's figures: grow the canvas to hold every label
RUN_ID_CHUNK = 100  # run ids per MLflow search: a filter string of bounded length
NOTE = "mlflow.note.content"  # a run's description: Markdown the MLflow UI shows on the run's page
NOTE_LIMIT = 8000  # characters MLflow takes in a tag's value
SAVED_VIEW = "mlflow.sharedViewState."  # experiment tags holding the runs table's saved views (MLflow 3.17)
PARAMS_OF = "best.params_of"  # on the parent: whose params it holds when they are no longer the best's
SUMMARY_ROWS = 5  # trials in the summary a sweep ends with


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
    """One row per finished or failed trial, best validation accuracy first (with several
    objectives: the others, and on_front)."""
    rows, several = [], front.several(study)
    on_front = {t.number for t in front.front(study)} if several else set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        run = runs.get(trial.number)
        metrics = run.data.metrics if run else {}
        acc = front.accuracy(study, trial)
        row = {
            "trial": trial.number,
            "state": trial.state.name,
            "val_acc": acc if acc is not None else "",
            "test_acc": metrics.get("test/acc", ""),
            "epochs": trial.params.get("trainer.epochs", run.data.params.get("trainer.epochs", "") if run else ""),
            "epochs_run": int(metrics["epochs_run"]) if "epochs_run" in metrics else "",
            "train_seconds": round(metrics["train_seconds"], 1) if "train_seconds" in metrics else "",
            "wall_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1)
            if run and run.info.end_time
            else "",
            "run_id": run.info.run_id if run else "",
        }
        if several:  # the other objectives, and whether the trial is on the front
            row.update({k: v for k, v in front.values(study, trial).items() if k != protocol.OBJECTIVE})
            row["on_front"] = "yes" if trial.number in on_front else ""
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
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        return {}  # nothing to draw (every trial failed: e.g. sbatch refused them); Optuna would warn on each plot
    import optuna.visualization.matplotlib as ov  # loads matplotlib's pyplot: only when plots are drawn

    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" notes
    figures, several = {}, front.several(study)
    # With several objectives Optuna's plots need a target: validation accuracy; and the front is drawn.
    on_accuracy = {"target": lambda t: front.accuracy(study, t), "target_name": protocol.OBJECTIVE} if several else {}
    for name, plot in (
        ("pareto_front", functools.partial(ov.plot_pareto_front, target_names=front.names(study)) if several else None),
        ("optimization_history", functools.partial(ov.plot_optimization_history, **on_accuracy)),
        ("param_importances", functools.partial(ov.plot_param_importances, **on_accuracy)),
        ("parallel_coordinate", functools.partial(ov.plot_parallel_coordinate, **on_accuracy)),
        ("slice", functools.partial(ov.plot_slice, **on_accuracy)),
        ("intermediate_values", ov.plot_intermediate_values),
    ):
        if plot is None:
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            continue  # a sweep without a pruner reports none
        if name == "param_importances" and (why := too_few_for_importances(study)):
            log.info("skipping Optuna plot %s: %s", name, why)
            continue
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
        if name == "pareto_front":
            number_the_front(first, study)
        figures[f"optuna/{name}.png"] = fig
    return figures


def too_few_for_importances(study: optuna.Study) -> str:
    """Why the study cannot give parameter importances yet, or "": Optuna's fANOVA fits a random
    forest of the objective over the parameters, which from no more trials than parameters says
    nothing (and loading scikit-learn for it costs a smoke sweep's report 1.5-3 s)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = {key for t in complete for key in t.params}
    if len(complete) > len(params):
        return ""
    return f"{len(complete)} complete trials, {len(params)} parameters: importances need more trials than parameters"


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


def number_the_front(ax: Any, study: optuna.Study) -> None:
    """Write each front trial's number beside its point: the figure then reads with the front table."""
    if len(front.names(study)) != 2:
        return  # three objectives: a 3-D plot, left as Optuna draws it
    for t in front.front(study):
        ax.annotate(f"#{t.number}", tuple(t.values), textcoords="offset points", xytext=(5, 5), fontsize=9)


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
    """Leaderboard (CSV, Markdown, the parent's description), counts, the best trial (metrics,
    params, tags), Optuna's plots on the parent run; the study's view of its trials in the MLflow
    UI, and the log lines a sweep ends with: a ranked summary and the link to that view."""
    import matplotlib.pyplot as plt  # only when plots are drawn: sweep.py's listings start without it

    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    runs = trial_runs(client, study)
    rows = leaderboard(study, runs)
    client.log_text(parent_id, tracking.csv_text(rows), "leaderboard.csv")
    client.log_text(parent_id, markdown_table(rows), "leaderboard.md")
    counts = state_counts(study)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        client.log_metric(parent_id, f"trials_{state.lower()}", counts.get(state, 0))
    experiment_id = client.get_run(parent_id).info.experiment_id
    client.set_tag(parent_id, NOTE, description(study, rows, runs, experiment_id))
    if (best := front.most_accurate(study)) is not None:
        record_best(client, parent_id, best, front.accuracy(study, best), runs.get(best.number))
    if front.several(study):
        report_front(study, client, parent_id, runs)
    view = save_view(client, experiment_id, study, parent_id)
    for path, fig in optuna_figures(study).items():
        client.log_figure(parent_id, fig, path, save_kwargs=SAVE)
        plt.close(fig)
    for line in summary(study, rows, tracking.ui_base(client.tracking_uri)[0], view):
        log.info("%s", line)


def record_best(client: MlflowClient, parent_id: str, best: optuna.trial.FrozenTrial, acc: float, run: Any) -> None:
    """The best trial on the parent: its validation and test accuracy under the children's metric
    names (a runs table sorted by val/acc puts the study beside its best trial), best/val_acc,
    best.* tags, and its parameters as the parent's params. MLflow never changes a param: when a
    later report finds another best trial, the params stay those of the first (param best.trial
    names it) and tag best.params_of says so; the tags and metrics follow the best."""
    from mlflow.entities import Param  # MLflow: only where a parent run is written

    client.log_metric(parent_id, "best/val_acc", acc)
    client.log_metric(parent_id, "val/acc", acc)
    if run is not None and "test/acc" in run.data.metrics:
        client.log_metric(parent_id, "test/acc", run.data.metrics["test/acc"])
    client.set_tag(parent_id, f"{protocol.PARENT_BEST}trial", str(best.number))
    for key, value in best.params.items():
        client.set_tag(parent_id, f"{protocol.PARENT_BEST}{key}", shown(value))
    ran = run.data.params if run is not None else {}  # the values as the trial's run logged them (0.0, not 0)
    wanted = {k: ran.get(k, str(v)) for k, v in best.params.items()}
    wanted[f"{protocol.PARENT_BEST}trial"] = str(best.number)
    logged = client.get_run(parent_id).data.params
    if not logged.keys() & wanted.keys():
        client.log_batch(parent_id, params=[Param(k, v) for k, v in wanted.items()])
    elif {k: logged.get(k) for k in wanted} != wanted:
        first = logged.get(f"{protocol.PARENT_BEST}trial", "?")
        note = f"trial {first}, the best when the first report was written; the best now is trial {best.number}"
        client.set_tag(parent_id, PARAMS_OF, note)
        log.warning("the study's parent run keeps the params of %s (MLflow params never change)", note)


def front_rows(study: optuna.Study, runs: dict[int, Any]) -> list[dict[str, Any]]:
    """The Pareto front, most accurate first: trial, objectives, test accuracy, parameters, run."""
    rows = []
    for t in front.front(study):
        run = runs.get(t.number)
        test = run.data.metrics.get("test/acc", "") if run else ""
        rows.append({"trial": t.number, **front.values(study, t), "test_acc": test, **t.params,
                     "run_id": run.info.run_id if run else ""})  # fmt: skip
    return rows


def report_front(study: optuna.Study, client: MlflowClient, parent_id: str, runs: dict[int, Any]) -> None:
    """A multi-objective study's front on its parent run (front.csv, front.md), and each complete
    trial's run tagged on the front or not (only where that changed)."""
    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    rows = front_rows(study, runs)
    client.log_text(parent_id, tracking.csv_text(rows), "front.csv")
    client.log_text(parent_id, markdown_table(rows), "front.md")
    on_front = {row["trial"] for row in rows}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run = runs.get(t.number)
        flag = str(t.number in on_front).lower()
        if run is not None and run.data.tags.get(protocol.TAG_ON_FRONT) != flag:
            client.set_tag(run.info.run_id, protocol.TAG_ON_FRONT, flag)


def short_name(key: str) -> str:
    """A column's name where space is short: data.max_rotation -> rotation, model.num_layers -> num_layers."""
    return key.rsplit(".", 1)[-1].removeprefix("max_")


def description(study: optuna.Study, rows: list[dict[str, Any]], runs: dict[int, Any], experiment_id: str) -> str:
    """The parent run's description (Markdown, shown whole on its page in the MLflow UI): the
    leaderboard with each trial's run name linking to its run, as many rows as MLflow's tag
    limit holds (the rest: leaderboard.md and .csv)."""
    counts = state_counts(study)
    done = ", ".join(f"{counts.get(s, 0)} {word}" for s, word in STATE_WORDS.items())
    head = f"**Study {study.study_name}**: {len(rows)} trials ({done}), best validation accuracy first.\n\n"
    if front.several(study):
        head = front_note(study, runs, experiment_id) + head
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    keys = list(dict.fromkeys(k for p in params.values() for k in p))
    lines = [
        "| # | run | state | val acc | test acc | " + " | ".join(map(short_name, keys)) + " |",
        "|" + "---|" * (5 + len(keys)),
    ]
    for rank, row in enumerate(rows, 1):
        run = runs.get(row["trial"])
        name = run_link(run, experiment_id, row["trial"])
        cells = [rank, name, row["state"].lower(), _acc(row["val_acc"]), _acc(row["test_acc"])]
        line = "| " + " | ".join(str(c) for c in cells + [shown(params[row["trial"]].get(k, "")) for k in keys]) + " |"
        tail = f"\n\n{len(rows) - rank + 1} more rows in the artifacts leaderboard.md and leaderboard.csv."
        if len(head) + sum(len(x) + 1 for x in lines) + len(line) + len(tail) > NOTE_LIMIT:
            return head + "\n".join(lines) + tail
        lines.append(line)
    return head + "\n".join(lines) + "\n"


def front_note(study: optuna.Study, runs: dict[int, Any], experiment_id: str) -> str:
    """The front as the parent's description starts: trials (linked), objectives, test accuracy."""
    names = front.names(study)
    lines = [f"**Pareto front** of {', '.join(names)}: {len(front.front(study))} trials, most accurate first.", "",
             "| run | " + " | ".join(names) + " | test acc |", "|---|" + "---|" * (len(names) + 1)]  # fmt: skip
    for t in front.front(study):
        run = runs.get(t.number)
        shown_values = [
            f"{v:.4f}" if n == protocol.OBJECTIVE else f"{v:.4g}" for n, v in front.values(study, t).items()
        ]
        test = run.data.metrics.get("test/acc", "") if run else ""
        lines.append(f"| {run_link(run, experiment_id, t.number)} | " + " | ".join(shown_values) + f" | {_acc(test)} |")
    return "\n".join(lines) + "\n\n"


def run_link(run: Any, experiment_id: str, trial: int) -> str:
    """A trial's run as a Markdown link the parent's page in the MLflow UI follows; the trial's
    number when it has no run."""
    return f"[{run.info.run_name}](#/experiments/{experiment_id}/runs/{run.info.run_id})" if run else str(trial)


def _acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def view_state(study: optuna.Study, parent_id: str) -> dict[str, Any]:
    """What the study's view of the runs table shows: its trials (the parent's children), best
    validation accuracy first, with validation and test accuracy and the searched parameters as
    columns, each wide enough for its name (the UI's keys: ``metrics.`val/acc```, ``params.`...```)."""
    keys = list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))
    columns = ["metrics.`val/acc`", "metrics.`test/acc`"] + [f"params.`{k}`" for k in keys]
    widths = {"attributes.`Run Name`": 230} | {c: 80 for c in columns[:2]}
    widths |= {f"params.`{k}`": max(80, round(6.5 * len(k)) + 28) for k in keys}  # 13 px type: 6.2 px a letter
    return {
        "searchFilter": f"tags.`{protocol.PARENT_RUN}` = '{parent_id}'",
        "orderByKey": "metrics.`val/acc`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns],
        "columnWidths": widths,
    }


def save_view(client: MlflowClient, experiment_id: str, study: optuna.Study, parent_id: str) -> str:
    """The study's saved view in MLflow 3.17's runs table (the experiment tag its "Save as new
    view" writes: a JSON envelope holding the state as a JSON string), keyed by the parent run's
    id; a link with ``viewStateShareKey=<key>`` opens it. Returns the link."""
    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    now = int(time.time() * 1000)
    envelope = {"name": f"study {study.study_name}: trials, best first", "createdAt": now, "updatedAt": now,
                "state": json.dumps(view_state(study, parent_id))}  # fmt: skip
    client.set_experiment_tag(experiment_id, f"{SAVED_VIEW}{parent_id}", json.dumps(envelope))
    return tracking.ui_view_link(client.tracking_uri, experiment_id, parent_id)


def summary(study: optuna.Study, rows: list[dict[str, Any]], command: str, link: str) -> list[str]:
    """The lines a sweep ends with: the study's best trials, ranked, and how to see them all."""
    lines = [f"study {study.study_name}: {len(rows)} trials, best validation accuracy first:"]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for rank, row in enumerate(rows[:SUMMARY_ROWS], 1):
        params = " ".join(f"{short_name(k)}={shown(v)}" for k, v in trials[row["trial"]].params.items())
        lines.append(
            f"  {rank:>2}. trial {row['trial']:<3} {row['state'].lower():<8} val {_acc(row['val_acc'])}  "
            f"test {_acc(row['test_acc'])}  {params}"
        )
    if len(rows) > SUMMARY_ROWS:
        lines.append(f"  ... {len(rows) - SUMMARY_ROWS} more: python sweep.py leaderboard {study.study_name} --top 50")
    lines += [f"browse them:  {command}", f"              then open {link}"]
    return lines
