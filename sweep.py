"""Study tools for the Optuna sweeps that `python train.py -m hydra/sweeper=optuna` runs.

    python sweep.py list                              # studies in the default storage: trials done/failed/running, best
    python sweep.py leaderboard                       # top 10 trials of the default study (mnist-mlp)
    python sweep.py leaderboard --all                 # ...with seconds, epochs run and MLflow run ids
    python sweep.py leaderboard wide --top 25         # another study
    python sweep.py export                            # best trial of mnist-mlp -> conf/model/best.yaml, if better
    python sweep.py export --trial 7 --out /tmp/t7.yaml   # a chosen trial, elsewhere
    python sweep.py export --trial 7 --replace        # ...into the winner file even if the one there scored better
    python sweep.py plots --out plots/                # Optuna's plots as PNG files
    python sweep.py plots --mlflow                    # ...logged to the study's MLflow parent run
    python sweep.py link                              # each study's trials in the MLflow UI: the link to open
    python sweep.py front                             # a multi-objective study's Pareto front (mnist-pareto)
    python sweep.py compact --trial 12                # register a front trial's model as mnist-mlp@compact
    python sweep.py list --storage postgresql://user@host/optuna   # any Optuna storage URL

Defaults (study name, storage) come from conf/hydra/sweeper/optuna.yaml, as the sweep's do.
Trial metrics beyond validation accuracy (test accuracy, seconds, run ids) come from MLflow:
MLFLOW_TRACKING_URI, else the SQLite store under mlruns/. These commands only read: they never
create a storage, a table or an MLflow store. export replaces a winner file only with a better
trial (or with --replace), and keeps the version it replaces in the study's MLflow parent run
(artifacts, previous/), as a sweep does.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from urllib.parse import urlencode

import optuna
from omegaconf import OmegaConf

from mlp import PROJECT_ROOT
from mlp.cli import closed_pipe_quietly
from mlp.errors import UserError, check_writable_folder, first_line
from mlp.run.winner_files import STUDY_NAME, STUDY_NAME_RULE, winner_file
from mlp.sqlite_files import sqlite_file
from mlp.sweep import front, protocol
from mlp.sweep.report import (
    SAVE,
    SAVED_VIEW,
    front_rows,
    leaderboard,
    markdown_table,
    optuna_figures,
    short_name,
    state_counts,
    trial_runs,
    view_state,
)
from mlp.sweep.storage import check_storage, engine_kwargs

# MLflow and torch (seconds to load) are imported by the commands that read or write the tracking store, and
# the sweep's defaults are composed only when a command needs one: `list --storage URL` answers at once.


@functools.cache
def defaults(preset: str = "optuna") -> tuple[str, str, str, float]:
    """(study, storage URL, winner file, compact_within) as `train.py -m hydra/sweeper=<preset>` sets them."""
    from hydra import compose, initialize_config_dir  # only when a default is needed (see from_preset)

    import mlp.run.config  # noqa: F401 - puts the config schemas in Hydra's ConfigStore

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf")):
        sweeper = compose("config", [f"hydra/sweeper={preset}"], return_hydra_config=True).hydra.sweeper
    return sweeper.study_name, sweeper.storage, sweeper.best_config, float(sweeper.compact_within)


def existing_storage(url: str) -> optuna.storages.RDBStorage:
    """The study storage at ``url``, opened to read: a database that is missing, empty or another
    application's is one line, and nothing is created in it."""
    if not check_storage(url, key="--storage"):
        raise UserError(f"no study storage at {url}: run a sweep first (python train.py -m hydra/sweeper=optuna)")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=True)
    except Exception as e:  # any storage failure is the user's URL or server
        raise UserError(f"cannot open study storage {url}: {first_line(e)}") from e


def load_study(name: str, url: str) -> optuna.Study:
    storage = existing_storage(url)
    names = optuna.get_all_study_names(storage=storage)
    if name not in names:
        raise UserError(f"no study {name!r} in {url}; studies there: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def default_tracking_uri() -> str:
    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    tracking_cfg = OmegaConf.create({"uri": None, "dir": str(PROJECT_ROOT / "mlruns"), "experiment": "mnist-mlp"})
    return tracking.tracking_uri(tracking_cfg)


def mlflow_client(need: str | None = None):
    """The MLflow client of the tracking store, checked first (a server that does not answer, a
    file of something else); None when the store does not exist (it is not created), or a
    UserError when ``need`` (what it is needed for) says it must be there."""
    from mlflow.tracking import MlflowClient  # MLflow, torch: only for the commands that read the store

    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    uri = default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        tracking.check_server(uri)
    elif (path := sqlite_file(uri)) is not None and not path.is_file():
        if need:
            raise UserError(f"no MLflow tracking store at {uri}: {need} (set MLFLOW_TRACKING_URI to the sweep's store)")
        return None
    tracking.check_sqlite_store(uri)
    return MlflowClient(uri)


def cmd_list(args: argparse.Namespace) -> None:
    storage = existing_storage(args.storage)
    summaries = optuna.get_all_study_summaries(storage=storage)
    if not summaries:
        print(f"no studies in {args.storage}")
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts, top = state_counts(study), front.most_accurate(study)
        best = f"{front.accuracy(study, top):.4f} (trial {top.number})" if top else "-"
        if front.several(study):
            best += f"; Pareto front of {', '.join(front.names(study))}: {len(front.front(study))} trial(s)"
        print(
            f"{summary.study_name}: {counts.get('COMPLETE', 0)} complete, {counts.get('FAIL', 0)} failed, "
            f"{counts.get('PRUNED', 0)} pruned, {counts.get('RUNNING', 0)} running; best val acc {best}"
        )


WIDE_COLUMNS = ("epochs_run", "train_seconds", "wall_seconds", "run_id")  # shown with --all


def cmd_link(args: argparse.Namespace) -> None:
    """Where each study's trials are in the MLflow UI: its saved view (best first, accuracies and
    searched parameters as columns) once a sweep of it has ended, else its runs filtered and sorted."""
    from mlp.run import tracking  # MLflow, torch: only where the tracking store is used

    storage = existing_storage(args.storage)
    names = [args.study] if args.study else sorted(optuna.get_all_study_names(storage=storage))
    client = mlflow_client(need="the studies' runs are there")
    command, base = tracking.ui_base(client.tracking_uri)
    print(f"start the MLflow UI ({command}, or make ui), then open:")
    if not names:
        print(f"  (no studies in {args.storage} yet)")
    for name in names:
        parent = load_study(name, args.storage).user_attrs.get(protocol.STUDY_PARENT_RUN)
        run = client.get_run(parent) if parent else None
        if run is None:
            print(f"  {name}: no MLflow parent run recorded")
            continue
        experiment = client.get_experiment(run.info.experiment_id)
        if f"{SAVED_VIEW}{parent}" in experiment.tags:
            link = tracking.ui_view_link(client.tracking_uri, experiment.experiment_id, parent)
        else:
            query = urlencode({"searchFilter": view_state(load_study(name, args.storage), parent)["searchFilter"],
                               "orderByKey": "metrics.`val/acc`", "orderByAsc": "false"})  # fmt: skip
            link = f"{base}/#/experiments/{experiment.experiment_id}/runs?{query}&{tracking.MODEL_TRAINING}"
        print(f"  {name}: {link}")


def cmd_leaderboard(args: argparse.Namespace) -> None:
    study = load_study(args.study, args.storage)
    client = mlflow_client()
    if client is None:
        print(f"(no MLflow tracking store at {default_tracking_uri()}: validation accuracy only)", file=sys.stderr)
    rows = leaderboard(study, trial_runs(client, study) if client else {})[: args.top]
    if not args.all:  # what fits a terminal: the scores and the searched values, under their short names
        rows = [{short_name(k): v for k, v in row.items() if k not in WIDE_COLUMNS} for row in rows]
    print(markdown_table(rows), end="")


def cmd_export(args: argparse.Namespace) -> None:
    from mlp.sweep.export import update_winner  # MLflow: only for the commands that write

    if args.out is None and STUDY_NAME.fullmatch(args.study) is None:
        raise UserError(f"study {args.study!r} has no winner file of its own (a name is {STUDY_NAME_RULE}): give --out")
    study = load_study(args.study, args.storage)
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    if not complete:
        raise UserError(f"study {args.study!r} has no complete trial to export")
    numbers = {t.number for t in study.get_trials(deepcopy=False)}
    if args.trial is None:
        trial = front.most_accurate(study)
    elif args.trial in complete:
        trial = complete[args.trial]
    elif args.trial not in numbers:
        raise UserError(f"study {args.study!r} has no trial {args.trial} (trials 0 to {max(numbers)})")
    else:
        raise UserError(f"trial {args.trial} of {args.study!r} is not complete; complete trials: {sorted(complete)}")
    out = Path(args.out or winner_file(str(PROJECT_ROOT / "conf"), args.study))
    client = mlflow_client(need=f"trial {trial.number}'s config.yaml is in its MLflow run")
    parent = study.user_attrs.get(protocol.STUDY_PARENT_RUN)
    existed = out.exists()
    if not update_winner(study, trial, client, parent, out, replace=args.replace, flag="--replace"):
        print(f"{out} already holds trial {trial.number} of study {args.study}")
        return
    kept = f"; the version it replaced is artifact previous/{out.name} of MLflow run {parent}" if existed else ""
    print(f"wrote {out}: trial {trial.number}, validation accuracy {front.accuracy(study, trial):.4f}{kept}")


def cmd_front(args: argparse.Namespace) -> None:
    study = load_study(args.study, args.storage)
    if not front.several(study):
        raise UserError(f"study {args.study!r} has one objective ({front.names(study)[0]}): it has no Pareto front")
    client = mlflow_client()
    rows = front_rows(study, trial_runs(client, study) if client else {})
    if not args.all:
        rows = [{short_name(k): v for k, v in row.items() if k != "run_id"} for row in rows]
    pick = front.compact_pick(study, args.within)
    print(f"study {args.study}: Pareto front of {', '.join(front.names(study))}, most accurate first")
    print(markdown_table(rows), end="")
    print(f"compact pick (within {args.within} of the best validation accuracy): trial {pick.number}" if pick else "")


def cmd_compact(args: argparse.Namespace) -> None:
    from mlp.sweep.export import register_compact  # MLflow: only for the commands that write

    study = load_study(args.study, args.storage)
    trial = front.compact_pick(study, args.within) if args.trial is None else None
    if args.trial is not None:
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == args.trial), None)
        if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
            raise UserError(f"study {args.study!r} has no complete trial {args.trial}")
    if trial is None:
        raise UserError(f"study {args.study!r} has no Pareto front to pick from (several objectives, a complete trial)")
    client = mlflow_client(need=f"trial {trial.number}'s model is in its MLflow run")
    done = register_compact(study, trial, client, args.within, args.name)
    print(f"trial {trial.number}: {done.summary()}")


def cmd_plots(args: argparse.Namespace) -> None:
    import matplotlib.pyplot as plt  # only for this command: the others start without pyplot

    study = load_study(args.study, args.storage)
    if not args.out and not args.mlflow:
        raise UserError("plots: give --out DIR, --mlflow, or both")
    if args.out:
        check_writable_folder("--out", args.out)  # before any figure is drawn
    client = mlflow_client(need="the study's parent run is there") if args.mlflow else None
    parent = study.user_attrs.get(protocol.STUDY_PARENT_RUN) if client is not None else None
    if client is not None and parent is None:
        raise UserError(f"study {args.study!r} has no MLflow parent run recorded")
    for path, fig in optuna_figures(study).items():
        if args.out:
            target = Path(args.out) / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(target, **SAVE)
            print(f"wrote {target}")
        if parent is not None:
            client.log_figure(parent, fig, path, save_kwargs=SAVE)
            print(f"logged {path} to MLflow run {parent}")
        plt.close(fig)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a validation accuracy distance from 0 to 1, got {text!r}")
    return value


PRESET = object()  # an argument's default: the value the sweep preset sets (see from_preset)
PRESET_KEYS = {"study": 0, "storage": 1, "within": 3}  # their place in defaults()


def from_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Each argument left at PRESET takes the value that `train.py -m hydra/sweeper=<args.preset>` sets:
    the config is composed (seconds: the schema loads torch) only for a command that needs one."""
    for key, value in vars(args).items():
        if value is PRESET:
            setattr(args, key, defaults(args.preset)[PRESET_KEYS[key]])
    return args


def command_line() -> argparse.ArgumentParser:
    sweep, pareto = "the sweep's (hydra/sweeper=optuna)", "the Pareto sweep's (hydra/sweeper=optuna_pareto)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", default=PRESET, help="Optuna storage (default: the preset's, mlruns/optuna.db)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, preset: str = "optuna") -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, parents=[common])
        command.set_defaults(preset=preset)
        return command

    add("list", "studies with trial counts and best value").set_defaults(func=cmd_list)
    board = add("leaderboard", "a study's best trials")
    board.add_argument("study", nargs="?", default=PRESET, help=f"study name (default: {sweep}, mnist-mlp)")
    board.add_argument("--all", action="store_true", help="every column: seconds, epochs run, MLflow run id")
    board.add_argument("--top", type=positive, default=10, help="how many trials to show (default: 10)")
    board.set_defaults(func=cmd_leaderboard)
    export = add("export", "write a trial's config as best.yaml")
    export.add_argument("study", nargs="?", default=PRESET, help=f"study name (default: {sweep}, mnist-mlp)")
    export.add_argument("--trial", type=int, help="trial number (default: the best)")
    export.add_argument("--out", help="file to write (default: the study's winner file, conf/model/best.yaml for "
                        "mnist-mlp)")  # fmt: skip
    export.add_argument(
        "--replace", action="store_true", help="replace a winner file even if the trial it holds scored better"
    )
    export.set_defaults(func=cmd_export)
    plots = add("plots", "Optuna's plots, to files and/or to MLflow")
    plots.add_argument("study", nargs="?", default=PRESET, help=f"study name (default: {sweep}, mnist-mlp)")
    plots.add_argument("--out", help="folder for PNG files")
    plots.add_argument("--mlflow", action="store_true", help="log to the study's latest sweep parent run")
    plots.set_defaults(func=cmd_plots)
    link = add("link", "where a study's trials are in the MLflow UI: best first, with their scores and parameters")
    link.add_argument("study", nargs="?", help="study name (default: every study in the storage)")
    link.set_defaults(func=cmd_link)
    pareto_board = add("front", "a multi-objective study's Pareto front and its compact pick", "optuna_pareto")
    pareto_board.add_argument("study", nargs="?", default=PRESET, help=f"study name (default: {pareto}, mnist-pareto)")
    pareto_board.add_argument("--all", action="store_true", help="with the MLflow run ids")
    pareto_board.add_argument("--within", type=fraction, default=PRESET,
                              help=f"the compact rule's distance (default: {pareto} compact_within)")  # fmt: skip
    pareto_board.set_defaults(func=cmd_front)
    compact = add("compact", "register a front trial's model as models:/<name>@compact", "optuna_pareto")
    compact.add_argument("study", nargs="?", default=PRESET, help=f"study name (default: {pareto}, mnist-pareto)")
    compact.add_argument("--trial", type=int, help="trial number (default: the compact pick)")
    compact.add_argument("--within", type=fraction, default=PRESET,
                         help=f"the rule's distance (default: {pareto} compact_within)")  # fmt: skip
    compact.add_argument("--name", default="mnist-mlp", help="registered model name (default: mnist-mlp)")
    compact.set_defaults(func=cmd_compact)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = command_line().parse_args(argv)
    try:
        with closed_pipe_quietly():
            args.func(from_preset(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
