"""How a sweep scales, measured on this machine in three parts (each prints a table and a conclusion):

(a) workers: the same trials run by 1 sweep worker with 2 torch threads, then by 2 workers with 1 thread each
    started at the same moment on one study (the model fixed, only optimizer.lr and weight_decay searched);
(b) storage ceiling: how many trials a second an Optuna storage serves, SQLite (a file) and PostgreSQL (a real
    server, started with scripts/services.py), to 1, 4 and 16 processes doing what a sweep does with the
    storage per trial (fail stale trials, ask, heartbeat, suggest the project's 7 searched keys, 20 reports,
    tell) and no training; read as how many real workers one storage can serve. The client processes share
    the cores with the database server, so on a small machine the figures are a lower bound;
(c) per-trial overhead of a real sweep: the project's default search space and sweep, timed as a whole and
    split into training, the rest of each trial (data, model, test, logging), between trials and start-up.

Parts (a) and (c) run `python train.py -m hydra/sweeper=optuna ...` as a user does. Studies, MLflow runs,
Hydra's folders and the winner file go to a temporary folder (or --keep DIR); mlruns/ and conf/ are left alone.

    python benchmarks/sweep_scale.py                  # all parts on MNIST: about 25 minutes on 2 idle cores
    python benchmarks/sweep_scale.py --part a         # 8 trials of 3 epochs, twice: about 4 minutes
    python benchmarks/sweep_scale.py --part b         # 50 trials per process: about 5 minutes
    python benchmarks/sweep_scale.py --part c         # the default 20-trial sweep: about 15 minutes
    python benchmarks/sweep_scale.py --part c --trials 5 trainer.epochs=5   # a shorter real sweep
    python benchmarks/sweep_scale.py --quick          # a smoke run of all parts on synthetic data (about 1.5 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlp.run.device import cpu_model
from mlp.sweep import protocol
from mlp.sweep.job import open_storage
from mlp.sweep.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
# Part (b) suggests the project's own search space, written once in conf/.
_PARAMS = OmegaConf.load(ROOT / "conf/hydra/sweeper/optuna.yaml").params
SEARCH_SPACE = SearchSpace.parse([f"{k}={v}" for k, v in _PARAMS.items()])
# Part (a): the write-up's network (conf/model/mlp.yaml) fixed, so both set-ups train alike trials.
FIXED_MODEL = ["model.num_layers=4", "model.layer_size=512", "model.activation=leaky_relu", "model.dropout=0.0"]
REPORTS = 20  # part (b): epoch reports per trial


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


# -- parts (a) and (c): the real command line ------------------------------------------------------------------


def sweep_command(folder: Path, study: str, extra: list[str], index: int = 0) -> list[str]:
    """A sweep worker's command line, its study, runs, winner file and Hydra folders in ``folder``."""
    return [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optuna", f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage=sqlite:///{folder}/optuna.db",
        f"hydra.sweeper.best_config={folder}/best.yaml", f"tracking.dir={folder}/mlruns",
        f"hydra.sweep.dir={folder}/multirun/{index}", *extra,
    ]  # fmt: skip


def counted(trials: int) -> list[str]:
    """Overrides for a sweep of exactly ``trials`` whole trials: no time budget, no pruning."""
    return [f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.timeout=null", "hydra/sweeper/pruner=none"]


def run_workers(folder: Path, commands: list[list[str]]) -> tuple[float, float]:
    """Start the commands at the same moment; (start as epoch seconds, wall seconds until the last ends)."""
    folder.mkdir(parents=True)  # the workers create the study and the MLflow store (one of them at a time)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    logs = [folder / f"worker{i}.log" for i in range(len(commands))]
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(log, "w")) for log in logs]
        began, start = time.time(), time.perf_counter()
        procs = [
            subprocess.Popen(c, cwd=folder, env=env, stdout=o, stderr=subprocess.STDOUT)
            for c, o in zip(commands, outs, strict=True)
        ]
        for p in procs:
            p.wait()
        wall = time.perf_counter() - start
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            sys.exit(f"error: a sweep worker exited with status {p.returncode}; the last lines of {log.name}:\n{tail}")
    return began, wall


def study_runs(folder: Path, study: str) -> tuple[optuna.Study, list]:
    """The study (Optuna's own loader) and the MLflow runs of its trials (found by their study tag,
    as one would in the MLflow UI)."""
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{folder}/optuna.db")
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    trial_filter = f"tags.`{protocol.TAG_STUDY}` = '{study}' and tags.`{protocol.TAG_TRIAL}` != ''"
    return loaded, client.search_runs(experiments, trial_filter, max_results=50_000)


def part_workers(folder: Path, trials: int, epochs: int, extra: list[str]) -> None:
    trials = max(2, trials - trials % 2)  # split evenly between 2 workers
    fixed = [f"trainer.epochs={epochs}", *FIXED_MODEL, *extra]
    rows, walls = [], {}
    for workers in (1, 2):
        threads, name = 2 // workers, f"{workers} worker{'s' if workers > 1 else ''}"
        progress(f"part a: {name}, {trials // workers} trials each, trainer.threads={threads}")
        sub, study = folder / f"a-{workers}-workers", f"workers-{workers}"
        commands = [
            sweep_command(sub, study, [*counted(trials // workers), f"trainer.threads={threads}", *fixed], i)
            for i in range(workers)
        ]
        _, walls[workers] = run_workers(sub, commands)
        loaded, runs = study_runs(sub, study)
        done = len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        train = sum(r.data.metrics.get("train_seconds", 0.0) for r in runs)
        rows.append([name, workers, threads, done, walls[workers], train, walls[workers] / max(done, 1)])
    ratio = walls[2] / walls[1]
    print(f"\n(a) workers: {trials} trials of {epochs} epochs (model fixed; optimizer.lr, weight_decay searched)")
    table(["set-up", "workers", "threads each", "trials done", "wall s", "summed train s", "wall s/trial"], rows)
    verdict = f"{1 - ratio:.0%} less wall time" if ratio < 1 else f"{ratio - 1:.0%} more wall time"
    print(f"ratio wall(2 workers)/wall(1 worker) = {ratio:.2f}: 2 workers of 1 thread take {verdict} than 1 of 2")


def part_overhead(folder: Path, trials: int, extra: list[str]) -> None:
    progress(f"part c: one sweep of {trials} trials, the default search space")
    sub = folder / "c-sweep"
    began, wall = run_workers(sub, [sweep_command(sub, "overhead", [*counted(trials), *extra])])
    _, runs = study_runs(sub, "overhead")
    n = len(runs)
    train = sum(r.data.metrics.get("train_seconds", 0.0) for r in runs)
    starts = [r.info.start_time / 1000 for r in runs]  # a trial's run is created when it is asked
    ends = [(r.info.end_time or r.info.start_time) / 1000 for r in runs]
    in_trials = sum(e - s for s, e in zip(starts, ends, strict=True))
    startup, wind_down = min(starts) - began, began + wall - max(ends)
    between = wall - startup - wind_down - in_trials
    print(f"\n(c) per-trial overhead: one real sweep of {n} trials, default search space", *extra)
    table(
        ["quantity", "seconds", "per trial"],
        [
            ["whole sweep, process wall", wall, wall / n],
            ["training (summed train_seconds)", train, train / n],
            ["overhead = wall - training", wall - train, (wall - train) / n],
            ["  inside trials (run wall - training)", in_trials - train, (in_trials - train) / n],
            ["  between trials (tell, ask, new run)", between, between / n],
            ["  start-up (process start to first trial)", startup, startup / n],
            ["  wind-down (last trial to exit: report, plots)", wind_down, wind_down / n],
        ],
    )
    print(
        f"each trial costs {(wall - train) / n:.1f} s besides training: {(in_trials - train) / n:.1f} s inside it and "
        f"{(wall - in_trials) / n:.1f} s outside it (start-up, between trials, wind-down): "
        f"{1 - train / wall:.0%} of the wall"
    )


# -- part (b): the storage alone -------------------------------------------------------------------------------


def create_study(url: str, name: str) -> None:
    optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")


def noop_trials(url: str, name: str, sampler: str, seed: int, trials: int, go: threading.Barrier) -> None:
    """One worker process: per trial, what the sweeper and a reporting job ask of the storage."""
    warnings.simplefilter("ignore")  # heartbeats are "experimental"; "heartbeat ... used with optimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat_interval=10, grace_period=30)  # as the sweeper opens it
    make = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    study = optuna.load_study(study_name=name, storage=storage, sampler=make(seed=seed))
    study_id = storage.get_study_id_from_name(name)
    go.wait()
    for _ in range(trials):
        optuna.storages.fail_stale_trials(study)
        trial = study.ask()
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
        SEARCH_SPACE.suggest(trial)
        trial.set_user_attr(protocol.ATTR_RUN_ID, f"run-{seed}-{trial.number}")
        for epoch in range(1, REPORTS + 1):
            trial.report(0.5 + 0.4 * epoch / REPORTS, epoch)
        study.tell(trial, 0.9)


def trials_per_second(url: str, name: str, sampler: str, procs: int, trials: int) -> float:
    # Forked: no start-up to wait for. This process never opens the storage: children inherit no connection.
    ctx = mp.get_context("fork")
    creator = ctx.Process(target=create_study, args=(url, name))
    creator.start()
    creator.join()
    go = ctx.Barrier(procs + 1)  # everyone connected before the clock starts
    workers = [ctx.Process(target=noop_trials, args=(url, name, sampler, i, trials, go)) for i in range(procs)]
    for w in workers:
        w.start()
    try:
        go.wait(timeout=300)
    except threading.BrokenBarrierError:
        sys.exit(f"error: a storage worker on {url} did not start (see its traceback above)")
    start = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    if creator.exitcode or any(w.exitcode for w in workers):
        sys.exit(f"error: a storage worker on {url} failed (see its traceback above)")
    return procs * trials / seconds


@contextlib.contextmanager
def postgresql(folder: Path, keep: bool):
    """A PostgreSQL storage URL from scripts/services.py, or None (with the reason printed) if it cannot start."""
    spec = importlib.util.spec_from_file_location("mlp_services_script", ROOT / "scripts" / "services.py")
    services = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(services)
    try:
        try:
            info = services.start(folder, mlflow_port=0, workers=1)
            services.stop_mlflow(info)  # not needed here; it would compete for the cores
            url = info["storage_url"]
        except services.ServiceError as e:
            print(f"PostgreSQL skipped: {e}")
            url = None
        yield url
    finally:
        services.stop(folder, purge=not keep)


def part_storage(folder: Path, trials: int, keep: bool) -> None:
    runs = [("random", k) for k in (1, 4, 16)] + [("tpe", 1)]
    rates: dict[tuple[str, str, int], float] = {}

    def measure(storage: str, url: str, sampler: str, k: int) -> None:
        progress(f"part b: {storage}, {k} process(es) x {trials} trials, {sampler} sampler")
        rates[storage, sampler, k] = trials_per_second(url, f"noop-{sampler}-{k}", sampler, k, trials)

    (folder / "b").mkdir()
    for sampler, k in runs:  # SQLite first: the PostgreSQL services below would compete for the cores
        measure("sqlite", f"sqlite:///{folder}/b/{sampler}-{k}.db", sampler, k)
    progress("part b: starting PostgreSQL (scripts/services.py)")
    with postgresql(folder / "services", keep) as pg_url:
        for sampler, k in runs if pg_url else []:
            measure("postgresql", pg_url, sampler, k)
    print(f"\n(b) storage ceiling: no-op trials, {trials} per process, {REPORTS} reports each, no training")
    # A worker with one trial a minute of 20 epochs also reports once per 3 s: the same load.
    head = ["storage", "sampler", "processes", "trials/s", "reports/s", "workers @1 trial/min, 1 report/3 s"]
    table(head, [[*key, rate, rate * REPORTS, rate * 60] for key, rate in rates.items()])
    best: dict[str, float] = {}
    for (storage, _, _), rate in rates.items():
        best[storage] = max(rate, best.get(storage, 0.0))
    served = " and ".join(f"{s} about {r * 60:.0f}" for s, r in best.items())
    print(f"at its best one storage serves, at one trial a minute each (one report per 3 s), {served} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices="abc", help="a, b or c; repeatable (default: all)")
    parser.add_argument("--quick", action="store_true", help="synthetic data and tiny counts: a smoke run")
    parser.add_argument("--trials", type=int, default=None, help="trials of parts a and c (default 8 and 20)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each trial in part a (default 3)")
    parser.add_argument("--keep", type=Path, default=None, help="keep studies, runs and logs in this folder")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for parts a and c")
    a = parser.parse_args()
    parts = sorted(set(a.part or "abc"))
    extra = (["data=synthetic"] if a.quick else []) + a.overrides
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("alembic", "mlflow.store.db.utils"):  # a new MLflow store's tables: not progress worth a line
        logging.getLogger(name).setLevel(logging.WARNING)

    data = "synthetic (--quick)" if a.quick else "MNIST"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)   date: {time.strftime('%Y-%m-%d %H:%M %Z')}   data: {data}")
    with tempfile.TemporaryDirectory(prefix="sweep-scale-") as tmp:
        folder = (a.keep or Path(tmp)).resolve() / time.strftime("%Y%m%d-%H%M%S")
        folder.mkdir(parents=True)
        for part in parts:
            began = time.perf_counter()
            if part == "a":
                part_workers(folder, a.trials or (4 if a.quick else 8), a.epochs or (2 if a.quick else 3), extra)
            elif part == "b":
                part_storage(folder, 5 if a.quick else 50, a.keep is not None)
            else:
                part_overhead(folder, a.trials or (3 if a.quick else 20), extra)
            sys.stdout.flush()
            progress(f"part {part} took {time.perf_counter() - began:.0f} s")
    if a.keep:
        print(f"studies, runs and logs kept in {folder}")


if __name__ == "__main__":
    main()
