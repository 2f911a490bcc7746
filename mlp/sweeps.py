"""Reporting on a study: leaderboard, Optuna's plots, the winner file (``model=best``).

Trials are joined to their MLflow runs by the run id the sweeper stores on each Optuna trial
(user attribute ``mlflow_run_id``), never by study name and trial number.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp import tracking
from mlp.errors import ConfigError, UserError, first_line

log = logging.getLogger(__name__)

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}  # leaderboard order; then FAIL
SAVE = {"bbox_inches": "tight"}  # Optuna's figures: grow the canvas to hold every label
WINNER_LINE = re.compile(r"^# winner: study=(?P<study>\S+) trial=(?P<trial>\d+) value=(?P<value>\S+)", re.M)
# A study name is also a file name (best_<study>.yaml), a Hydra override value and an MLflow tag:
# letters, digits, '_' and '-' only, so that distinct names never share a winner file.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
STUDY_NAME_RULE = "1 to 64 letters, digits, '_' or '-', starting with a letter or digit (e.g. mnist-mlp)"
RUN_ID_CHUNK = 100  # run ids per MLflow search: a filter string of bounded length


def check_study_name(name: Any, key: str = "hydra.sweeper.study_name") -> str:
    """The study name, or ConfigError naming ``key`` and the rule."""
    if not isinstance(name, str) or STUDY_NAME.fullmatch(name) is None:
        raise ConfigError(key, name, STUDY_NAME_RULE)
    return name


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
        t.user_attrs["mlflow_run_id"]: t.number
        for t in study.get_trials(deepcopy=False)
        if "mlflow_run_id" in t.user_attrs
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
    import warnings

    import optuna.visualization.matplotlib as ov

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
            mark_pruned(first, study)
        if name == "parallel_coordinate":
            spread_axes(fig, study)
        figures[f"optuna/{name}.png"] = fig
    return figures


def mark_pruned(ax: Any, study: optuna.Study) -> None:
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
    import math
    import warnings

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    import matplotlib.pyplot as plt

    rows = leaderboard(study, trial_runs(client, study))
    client.log_text(parent_id, tracking.csv_text(rows), "leaderboard.csv")
    client.log_text(parent_id, markdown_table(rows), "leaderboard.md")
    counts = state_counts(study)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        client.log_metric(parent_id, f"trials_{state.lower()}", counts.get(state, 0))
    if (best := best_trial(study)) is not None:
        client.log_metric(parent_id, "best/val_acc", best.value)
        client.set_tag(parent_id, "best.trial", str(best.number))
        for key, value in best.params.items():
            client.set_tag(parent_id, f"best.{key}", str(value))
    for path, fig in optuna_figures(study).items():
        client.log_figure(parent_id, fig, path, save_kwargs=SAVE)
        plt.close(fig)


def trial_config(client: MlflowClient, run: Any | None, trial: optuna.trial.FrozenTrial) -> DictConfig:
    """The config a trial ran with: its MLflow run's config.yaml."""
    if run is None:
        raise UserError(f"trial {trial.number} has no MLflow run with its config.yaml to export from")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return OmegaConf.load(client.download_artifacts(run.info.run_id, "config.yaml", tmp))
        except Exception as e:  # noqa: BLE001 - an old or remote run without the file
            raise UserError(f"trial {trial.number}: cannot read config.yaml of MLflow run {run.info.run_id}") from e


def best_values(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """What model=best sets: the group options the trial used (``defaults: - override
    /optimizer: sgd``, ``- override /data: synthetic``, so a winner found with any optimizer or
    data reproduces), and the values of the model, optimizer, schedule, trainer and data
    sections (data.root, where the files lie, excepted)."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    chosen = {g: (choices or {}).get(f"hydra.choice.{g}") for g in ("optimizer", "schedule", "data")}
    values: dict[str, Any] = {"defaults": [{f"override /{g}": c} for g, c in chosen.items() if c]}
    values.update({g: {k: v for k, v in resolved[g].items() if k != "_target_"} for g in ("optimizer", "schedule")})
    trainer = {k: v for k, v in resolved["trainer"].items() if k != "val_every"}  # the sweep's speed-up, not the recipe
    values.update(model=resolved["model"], trainer=trainer)
    values["data"] = {k: v for k, v in resolved["data"].items() if k != "root"}
    if not values["defaults"]:
        del values["defaults"]
    return values


def winner_yaml(
    study_name: str, trial: optuna.trial.FrozenTrial, values: dict[str, Any], run_id: str, path: Path
) -> str:
    option = path.stem if path.parent.name == "model" else None
    rerun = (
        f"python train.py model={option}"
        if option
        else f"copy it into conf/model/ and run python train.py model={path.stem}"
    )
    header = (
        "# @package _global_\n"
        f"# winner: study={study_name} trial={trial.number} value={trial.value!r} run={run_id or 'unknown'}\n"
        f"# The best trial of Optuna study '{study_name}' ({datetime.date.today().isoformat()}): trial {trial.number}, "
        f"validation accuracy {trial.value:.4f}, MLflow run {run_id or 'unknown'}.\n"
        f"# Reproduce it with:  {rerun}\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(values))


def recorded_winner(path: Path) -> tuple[str, int] | None:
    """(study, trial) that a winner file says it holds, or None."""
    recorded = winner_record(path)
    return None if recorded is None else recorded[:2]


def winner_record(path: Path) -> tuple[str, int, float] | None:
    """(study, trial, value) from a winner file's ``# winner:`` line, or None."""
    with contextlib.suppress(OSError, ValueError):
        if match := WINNER_LINE.search(path.read_text()):
            return match["study"], int(match["trial"]), float(match["value"])
    return None


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old or the new whole file, never a part; a
    unique temporary name, since several workers may write at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a crash leaves the old file, not an empty one
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class WinnerKept(UserError):
    """A winner file that records a better trial than the one offered: kept as it is."""

    def __init__(
        self, path: Path, recorded: tuple[str, int, float], trial: optuna.trial.FrozenTrial, study: str, flag: str
    ):
        self.path, (self.study, self.number, self.value) = path, recorded
        super().__init__(
            f"{path} is kept: it holds trial {self.number} of study {self.study}, which scored {self.value:.4f}; "
            f"trial {trial.number} of study {study} scored {trial.value:.4f}, no better ({flag} replaces it)"
        )

    @property
    def tag(self) -> str:
        return f"{self.path.name}: {self.value:.4f} (study {self.study}, trial {self.number})"


def winner_path_problem(path: Path) -> str | None:
    """Why a winner file cannot be written at ``path`` (a folder, under a file, an unwritable
    folder), or None."""
    if path.is_dir():
        return "it is a folder"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def update_winner(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    client: MlflowClient,
    parent_id: str | None,
    path: str | Path,
    replace: bool = False,
    flag: str = "hydra.sweeper.replace_winner=true",
) -> bool:
    """Write ``trial`` of ``study`` to the winner file at ``path``, the rule of a sweep and of
    ``sweep.py export`` alike: False when the file already holds that trial; WinnerKept when it
    records a trial that scored at least as well (for the study's direction), unless ``replace``
    (``flag`` says how to ask for that); the file it replaces goes to the parent run's artifacts
    (``previous/``) first, and the new one is written atomically."""
    path = Path(path)
    if (problem := winner_path_problem(path)) is not None:
        raise UserError(f"cannot write {path}: {problem} (a winner file needs a file path in a writable folder)")
    recorded = winner_record(path)
    if recorded is not None and recorded[:2] == (study.study_name, trial.number):
        return False
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if recorded is not None and not replace and (recorded[2] >= trial.value if higher else recorded[2] <= trial.value):
        raise WinnerKept(path, recorded, trial, study.study_name, flag)
    runs = trial_runs(client, study)
    run = runs.get(trial.number)
    values = best_values(trial_config(client, run, trial), run.data.tags if run else None)
    if path.exists():
        if parent_id is None:
            raise UserError(
                f"{path} is not replaced: study {study.study_name!r} has no MLflow parent run to keep its "
                "current version in (move the file away first, or write elsewhere)"
            )
        try:
            client.log_artifact(parent_id, str(path), artifact_path="previous")
        except Exception as e:  # noqa: BLE001 - a parent run deleted or out of reach: keep the file rather than lose it
            raise UserError(
                f"{path} is not replaced: its current version could not be kept in MLflow run {parent_id} "
                f"({first_line(e)})"
            ) from e
    try:
        write_atomic(path, winner_yaml(study.study_name, trial, values, run.info.run_id, path))
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {e.strerror or e} (a winner file needs a file path in a writable folder)"
        ) from e
    log.info("wrote %s: trial %d, validation accuracy %.4f", path, trial.number, trial.value)
    return True


def winner_file(conf_dir: str, study_name: str, default_study: str = "mnist-mlp") -> str:
    """A study's winner file: conf/model/best.yaml for the default study, else best_<study>.yaml,
    the name as it is, so distinct studies never share a file. (Names are checked where they come
    in, with check_study_name: the sweeper's settings, sweep.py export.)"""
    if study_name == default_study:
        return str(Path(conf_dir) / "model" / "best.yaml")
    return str(Path(conf_dir) / "model" / f"best_{study_name}.yaml")
