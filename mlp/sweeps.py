"""Sweeps: what happens around the official Optuna sweeper, and reading studies afterwards.

``TrackedSweep.run`` is called by the project's sweeper plugin
(hydra_plugins/mlp_sweeper). Around the official sweep loop it
- checks that every searched key exists before any trial starts;
- marks trials that an interrupted sweep left RUNNING as FAIL;
- opens one MLflow parent run and tells each trial, through its overrides, the study,
  its trial number and id, the storage and that parent's id (``sweep.*`` in the config);
- with a pruner (``hydra/sweeper/pruner=...``), each trial reports its validation accuracy
  every epoch to its own Optuna trial and stops when the pruner says so (``TrialReporter``,
  the job's side); Optuna records it PRUNED;
- at the end logs the leaderboard, Optuna's plots and optimization_results.yaml to the
  parent, and writes conf/model/best.yaml from the study's best trial (the previous one is
  kept as an artifact of the parent run).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp import tracking
from mlp.errors import ConfigError, UserError

log = logging.getLogger(__name__)

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}  # leaderboard order; then FAIL
PRUNER_CHOICES = (
    "hydra/sweeper/pruner=none|median|successive_halving|hyperband, "
    "or a mapping with _target_: optuna.pruners.<Class> and its arguments"
)


def make_pruner(spec: Any) -> optuna.pruners.BasePruner | None:
    """The Optuna pruner a ``hydra.sweeper.pruner`` config asks for; None for no pruning."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    from hydra.utils import instantiate

    try:
        pruner = instantiate(spec, _execution_whitelist_="optuna.pruners.*")
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        target = spec["_target_"]
        raise UserError(f"hydra.sweeper.pruner: cannot make {target} ({reason}); expected {PRUNER_CHOICES}") from e
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    return None if isinstance(pruner, optuna.pruners.NopPruner) else pruner


def progress_step(epoch: int, epochs: int) -> int:
    """The step a trial reports at: the percentage of its epochs done. Trials of 5 and of 20
    epochs are then compared at the same point of their learning-rate schedules."""
    return round(100 * epoch / epochs)


class TrialReporter:
    """The job's side of a pruned sweep: the trial that the sweeper asked Optuna for, opened
    from the study storage by its id, reports each epoch's validation accuracy."""

    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: optuna.pruners.BasePruner):
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # samples nothing here; avoids TPE's set-up
            pruner=pruner,
        )
        self.trial = optuna.trial.Trial(study, trial_id)

    @classmethod
    def for_trial(cls, storage: str | None, study_name: str | None, trial_id: int | None) -> TrialReporter | None:
        """A reporter when the trial belongs to a pruned sweep, else None."""
        if storage is None or study_name is None or trial_id is None:
            return None
        spec = optuna.storages.get_storage(storage).get_trial(trial_id).user_attrs.get("pruner")
        pruner = make_pruner(spec)
        return cls(storage, study_name, trial_id, pruner) if pruner is not None else None

    def should_stop(self, epoch: int, epochs: int, val_acc: float) -> bool:
        self.trial.report(val_acc, progress_step(epoch, epochs))
        return epoch < epochs and self.trial.should_prune()

    def pruned(self) -> None:
        """Record the trial PRUNED (its value: the last reported accuracy)."""
        self.trial.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)


def searched_keys(params: dict[str, Any] | None, arguments: list[str]) -> list[str]:
    """The config keys a sweep varies or fixes: its ``params`` and its command-line overrides."""
    keys = list(params or {})
    keys += [a.split("=", 1)[0] for a in arguments if "=" in a]
    return [k for k in keys if not k.startswith(("hydra.", "hydra/", "+", "~"))]


def check_search_space(config: DictConfig, keys: list[str]) -> None:
    """An unknown key would fail every trial: stop before the first."""
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    for key in keys:
        if "/" in key or key in ("model", "optimizer", "data", "trainer"):
            continue  # a group choice, checked by Hydra
        if OmegaConf.select(task, key, default=_MISSING) is _MISSING:
            raise ConfigError(
                f"hydra.sweeper.params.{key}", "", "a key of the training config (see python train.py --cfg job)"
            )


_MISSING = object()


def sweep_owner() -> str:
    """Who runs a trial: this machine and the sweep's process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    """Whether the sweep that started a trial still runs. Only a process on this machine
    can be checked; one on another machine sharing the storage is taken to be alive."""
    if owner is None:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def fail_stale_trials(storage: str | optuna.storages.BaseStorage, study_name: str) -> int:
    """Trials left RUNNING by an interrupted sweep are marked FAIL (never counted as results);
    those of a sweep still running (another process sharing the study) are left alone."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0  # a new study
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    stale = [t for t in running if not _owner_alive(t.user_attrs.get("sweep_owner"))]
    store = optuna.storages.get_storage(storage)
    for trial in stale:
        store.set_trial_user_attr(trial._trial_id, "failure_reason", "left RUNNING by an interrupted sweep")
        store.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def quoted(value: str) -> str:
    """A string as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("'", "\\'") + "'"


def trial_runs(client: MlflowClient, experiment_id: str, study_name: str) -> dict[int, Any]:
    """MLflow runs of a study's trials, by trial number (the latest run of each)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`sweep.study` = '{study_name}'", max_results=50_000)
    by_trial: dict[int, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if (number := run.data.tags.get("sweep.trial")) is not None:
            by_trial[int(number)] = run
    return by_trial


def leaderboard(study: optuna.Study, runs: dict[int, Any]) -> list[dict[str, Any]]:
    """One row per finished or failed trial, best validation accuracy first."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.RUNNING:
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
        figures[f"optuna/{name}.png"] = fig
    return figures


def trial_config(client: MlflowClient, run: Any | None, base: DictConfig | None, trial: Any) -> DictConfig:
    """The config a trial ran with: its MLflow run's config.yaml, else ``base`` with its params."""
    if run is not None:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar
        with tempfile.TemporaryDirectory() as tmp:
            with contextlib.suppress(Exception):  # an old or remote run without the file
                return OmegaConf.load(client.download_artifacts(run.info.run_id, "config.yaml", tmp))
    if base is None:
        raise UserError(f"trial {trial.number} has no MLflow run with its config.yaml to export from")
    cfg = OmegaConf.masked_copy(base, ["model", "optimizer", "trainer", "data"])
    for key, value in trial.params.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def best_values(cfg: DictConfig) -> dict[str, Any]:
    """What model=best sets: the whole model, optimizer and trainer sections and the split."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data = resolved["data"]
    return {
        "model": resolved["model"],
        "optimizer": {k: v for k, v in resolved["optimizer"].items() if k != "name"},
        "trainer": resolved["trainer"],
        "data": {k: data[k] for k in ("val_size", "split_seed", "max_shift")},
    }


def best_yaml(study_name: str, trial: optuna.trial.FrozenTrial, values: dict[str, Any], run_id: str) -> str:
    header = (
        "# @package _global_\n"
        f"# Written by the sweep of Optuna study '{study_name}' on {datetime.date.today().isoformat()}:\n"
        f"# trial {trial.number}, validation accuracy {trial.value:.4f}, MLflow run {run_id or 'unknown'}.\n"
        "# Reproduce that trial with:  python train.py model=best\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(values))


class TrackedSweep:
    def __init__(self, impl: Any, config: DictConfig, arguments: list[str]):
        self.impl = impl
        self.config = config
        self.arguments = arguments
        self.best_path = Path(config.hydra.sweeper.get("best_config") or "")
        spec = config.hydra.sweeper.get("pruner")
        self.pruner_spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec

    def run(self) -> None:
        impl, cfg = self.impl, self.config
        check_search_space(cfg, searched_keys(impl.params, self.arguments))
        pruner = make_pruner(self.pruner_spec)
        if pruner is not None and not isinstance(impl.storage, str):
            raise ConfigError("hydra.sweeper.storage", impl.storage, "a storage URL when pruning (trials open it)")
        if pruner is not None:
            log.info("pruner: %s (trials report validation accuracy at each %% of their epochs)", type(pruner).__name__)
        if isinstance(impl.storage, str) and impl.storage.startswith("sqlite:///"):
            Path(impl.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if stale := fail_stale_trials(impl.storage, impl.study_name):
            log.warning("marked %d trial(s) left RUNNING by an interrupted sweep as FAIL", stale)

        self._enqueue_base_config()

        uri, experiment_id = tracking.use_experiment(cfg.tracking)
        client = MlflowClient(uri)
        started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        parent = client.create_run(
            experiment_id,
            run_name=f"{impl.study_name} {started}",
            tags={
                "sweep.study": impl.study_name,
                "sweep.role": "parent",
                "sweep.dir": str(cfg.hydra.sweep.dir),
                "sweep.storage": str(impl.storage),
            },
        )
        parent_id = parent.info.run_id
        log.info("MLflow parent run %s for study %s", parent_id, impl.study_name)
        self._pass_identity(parent_id)
        status = "FAILED"
        try:
            impl.sweep(self.arguments)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except ValueError as ex:  # the official sweeper ends by asking for study.best_trial
            if (error := self._no_best_error()) is None:
                raise
            raise error from ex
        finally:
            try:
                self._finish(client, experiment_id, parent_id)
            finally:
                client.set_terminated(parent_id, status)
        command, link = tracking.ui_hint(uri, experiment_id, parent_id)
        print(f"sweep logged to MLflow parent run {parent_id}\nbrowse it:  {command}\n            then open {link}")

    def _no_best_error(self) -> UserError | None:
        """One clear line when the sweep ended with no completed trial to call best."""
        study = optuna.load_study(study_name=self.impl.study_name, storage=self.impl.storage)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if "COMPLETE" in states:
            return None
        return UserError(
            f"no trial of study {self.impl.study_name!r} completed ({states.count('FAIL')} failed, "
            f"{states.count('PRUNED')} pruned): there is no best trial; see each trial's failure_reason "
            "in MLflow, then run more trials (hydra.sweeper.n_trials) or a gentler pruner"
        )

    def _enqueue_base_config(self) -> None:
        """A new study's first trial is the base config's own values (by default the
        write-up's network): the sweep's best is then never worse than the run it set out to
        improve, and the leaderboard shows that reference."""
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        impl = self.impl
        distributions, fixed, _ = create_params_from_overrides(impl._parse_sweeper_params_config() + self.arguments)
        params = {}
        for key, distribution in distributions.items():
            value = OmegaConf.select(self.config, key)
            if key in fixed:
                continue
            try:
                inside = distribution._contains(distribution.to_internal_repr(value))
            except (TypeError, ValueError):
                inside = False
            if not inside:
                log.info("base config's %s=%s is outside the search space: no reference trial", key, value)
                return
            params[key] = value
        study = optuna.create_study(
            study_name=impl.study_name, storage=impl.storage, directions=impl._get_directions(), load_if_exists=True
        )
        if not study.trials:
            study.enqueue_trial(params, user_attrs={"reference": "base config"})

    def _pass_identity(self, parent_id: str) -> None:
        """Each trial's overrides get its study, trial number and parent run (a real channel:
        the sweeper that asked Optuna for the trial tells the job which trial it is)."""
        impl = self.impl
        configure = impl._configure_trials
        extra = []
        if impl.n_jobs > 1 and self.config.trainer.threads == 0:
            # Parallel trials share the cores; the thread count goes into each trial's config
            # so that model=best reruns the winner with the same arithmetic.
            extra.append(f"trainer.threads={max(1, (os.cpu_count() or 1) // impl.n_jobs)}")

        if isinstance(impl.storage, str):
            extra.append(f"sweep.storage={quoted(impl.storage)}")
        pruning = make_pruner(self.pruner_spec) is not None
        owner = sweep_owner()

        def with_identity(trials: list[optuna.trial.Trial], *args: Any) -> list[tuple[str, ...]]:
            overrides = configure(trials, *args)
            for t in trials:
                t.set_user_attr("sweep_owner", owner)
                if pruning:
                    t.set_user_attr("pruner", self.pruner_spec)  # the trial's job reads it from the storage
                    # A pruned trial's job tells Optuna PRUNED itself; the official loop's
                    # tell(COMPLETE) that follows must then leave the trial as it is.
                    t.study.tell = functools.partial(type(t.study).tell, t.study, skip_if_finished=True)
            return [
                (
                    *o,
                    *extra,
                    f"sweep.study={quoted(impl.study_name)}",
                    f"sweep.trial={t.number}",
                    f"sweep.trial_id={t._trial_id}",
                    f"sweep.parent_run_id={parent_id}",
                )
                for o, t in zip(overrides, trials, strict=True)
            ]

        impl._configure_trials = with_identity

    def _finish(self, client: MlflowClient, experiment_id: str, parent_id: str) -> None:
        impl = self.impl
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        runs = trial_runs(client, experiment_id, impl.study_name)
        rows = leaderboard(study, runs)
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in (("leaderboard.csv", tracking.csv_text(rows)), ("leaderboard.md", markdown_table(rows))):
                (Path(tmp) / name).write_text(text)
                client.log_artifact(parent_id, str(Path(tmp) / name))
            results = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
            if results.exists():
                client.log_artifact(parent_id, str(results))
        for path, fig in optuna_figures(study).items():
            import matplotlib.pyplot as plt

            client.log_figure(parent_id, fig, path)
            plt.close(fig)
        completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        client.log_metric(parent_id, "trials_complete", len(completed))
        client.log_metric(parent_id, "trials_pruned", len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,))))
        if not completed:
            log.warning("no trial of study %s completed: best.yaml left as it is", impl.study_name)
            return
        best = study.best_trial
        client.log_metric(parent_id, "best/val_acc", best.value)
        for key, value in best.params.items():
            client.set_tag(parent_id, f"best.{key}", str(value))
        client.set_tag(parent_id, "best.trial", str(best.number))
        if self.best_path.name:
            run = runs.get(best.number)
            values = best_values(trial_config(client, run, self.config, best))
            text = best_yaml(impl.study_name, best, values, run.info.run_id if run else "")
            write_best(self.best_path, text, client, parent_id)


def write_best(path: Path, text: str, client: MlflowClient | None = None, run_id: str | None = None) -> None:
    """Write best.yaml atomically; the previous one goes to the run's artifacts first."""
    if path.exists() and client is not None and run_id is not None:
        client.log_artifact(run_id, str(path), artifact_path="previous")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.part")
    tmp.write_text(text)
    tmp.replace(path)
    log.info("wrote %s", path)
