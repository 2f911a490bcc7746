"""Trials in flight against batches: the same 18 trials through this project's sweeper and through
hydra-optuna-sweeper's own OptunaSweeper, both with Hydra's joblib launcher at n_jobs=2 (and 4 on a
machine with 4 or more cores), in one run. Prints for each: wall time, the share of slot-time a job
was running, trials per minute.

The trials: 18 configurations drawn from the project's default search space (conf/, a random
sampler with seed 0), in that order, given to both sweepers by trial number (a
``custom_search_space`` that fixes every key, so no sampler decides anything); each trains on
synthetic data (12,000 images, batch 64) for a third of its epochs, so that durations spread as a
real sweep's do (the network's size times its epochs). Both run train.py's job, through this
file's ``job`` (``python benchmarks/sweep_async.py job -m ...``), which records each job's start
and end; one torch thread per job.

    python benchmarks/sweep_async.py            # about 9 minutes on 2 cores
    python benchmarks/sweep_async.py --trials 6 # a smoke run

Busy share, three ways: "busy" is the seconds jobs ran over n_jobs times the span from the first
job's start to the last one's end (start-up before and the report after are in the wall time
only); "ideal busy" is what the same durations in the same order would give with no overhead at
all, under the sweeper's policy (batches, or each trial to the first free slot): the end of a
fixed list, where slots have nothing left, bounds both below 100%; "while work" divides by each
slot's own span (its first job's start to its last job's end), leaving that end out: what
remains is the slots' waits between trials (asking, launching, in batches the wait for the
slowest).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from mlp.run.device import cpu_model
from mlp.run.experiment import run
from mlp.sweep.job import judge
from mlp.sweep.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 18
REPLAY = "replay"  # the job's config key that names the configuration to run
EPOCH_SHARE = 3  # a benchmark trial runs a third of its configuration's epochs (at least one)
# What every trial shares: synthetic data big enough for an epoch to cost, one thread per job.
COMMON = [
    "data=synthetic", "data.num_train=12000", "trainer.batch_size=64", "trainer.threads=1", "trainer.progress=false",
    "tracking.log_model=false", "trainer.val_every=5", "hydra/launcher=joblib",
]  # fmt: skip


@functools.cache
def configurations(n: int = 100) -> list[dict]:
    """The first ``n`` configurations of the default search space (conf/hydra/sweeper/optuna.yaml)
    that a random sampler with seed 0 proposes."""
    params = OmegaConf.load(ROOT / "conf/hydra/sweeper/optuna.yaml").params
    space = SearchSpace.parse([f"{k}={v}" for k, v in params.items()])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        config = dict(trial.params)
        config["trainer.epochs"] = max(1, config["trainer.epochs"] // EPOCH_SHARE)
        configs.append(config)
        study.tell(trial, 0.0)
    return configs


def replay(cfg: object, trial: optuna.trial.Trial) -> None:
    """A custom_search_space for both sweepers: trial n runs configuration n. It passes the number
    (``+replay=n``, an int fixed to one value: no sampler decides it) and timed_train.py applies
    the configuration (``job``), since Optuna does not let a categorical's choices change between
    trials."""
    trial.suggest_int(f"+{REPLAY}", trial.number, trial.number)


@hydra.main(config_path="../conf", config_name="config")  # as train.py
def job(cfg: DictConfig) -> float:
    """train.py's job (configuration n with ``+replay=n``), its start and end appended to
    $TIMED_TRAIN_LOG as one JSON line."""
    from sweep_async import REPLAY, configurations  # by name: joblib sends this function, not __main__'s globals

    start = time.time()
    with open_dict(cfg):
        for key, value in configurations()[cfg.pop(REPLAY)].items():
            OmegaConf.update(cfg, key, value)
    try:
        return run(cfg, judge(cfg.sweep)).val_acc
    finally:
        with open(os.environ["TIMED_TRAIN_LOG"], "a") as log:
            log.write(json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}) + "\n")


def official_sweeper(folder: Path, n_trials: int, n_jobs: int) -> Path:
    """A config folder with hydra-optuna-sweeper's own sweeper as hydra/sweeper=official (ours
    shadows its name optuna): its fields and defaults, nothing searched but the replay."""
    (folder / "hydra" / "sweeper").mkdir(parents=True)
    (folder / "hydra" / "sweeper" / "official.yaml").write_text(
        "defaults:\n  - sampler: random\n"
        "_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper\n"
        f"direction: maximize\nstorage: null\nstudy_name: official\nn_trials: {n_trials}\nn_jobs: {n_jobs}\n"
        "max_failure_rate: 0.0\nparams: null\ncustom_search_space: sweep_async.replay\n"
    )
    return folder


def run_sweep(folder: Path, name: str, n_trials: int, n_jobs: int) -> dict:
    """One sweeper's run of the trials: wall, busy share, trials per minute."""
    times, out = folder / f"{name}.jsonl", folder / name
    if name == "ours":
        sweeper = [
            "hydra/sweeper=optuna", "hydra/sweeper/pruner=none", "hydra.sweeper.params=null",
            "hydra.sweeper.custom_search_space=sweep_async.replay", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.storage=sqlite:///{folder}/ours.db", "hydra.sweeper.study_name=ours",
            "hydra.sweeper.best_config=null", "hydra.sweeper.timeout=null",
        ]  # fmt: skip
    else:
        sweeper = [
            "hydra/sweeper=official",
            f"hydra.searchpath=[file://{official_sweeper(folder / 'conf', n_trials, n_jobs)}]",
        ]
    command = [
        sys.executable, str(Path(__file__).resolve()), "job", "-m", *sweeper, *COMMON,
        f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweeper.n_jobs={n_jobs}", f"tracking.dir={folder}/mlruns-{name}",
        f"hydra.sweep.dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "TIMED_TRAIN_LOG": str(times), "PYTHONPATH": str(ROOT / "benchmarks")}  # sweep_async.replay
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.monotonic()
    with open(folder / f"{name}.log", "w") as log:
        done = subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"error: the {name} sweep failed (exit {done.returncode}); see {folder / name}.log")
    jobs = [json.loads(line) for line in times.read_text().splitlines()]
    span = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    ran = sum(j["end"] - j["start"] for j in jobs)
    slots = {j["pid"] for j in jobs}  # a job's process is its slot (joblib keeps n_jobs processes)
    spans = sum(max(j["end"] for j in jobs if j["pid"] == p) - min(j["start"] for j in jobs if j["pid"] == p)
                for p in slots)  # fmt: skip
    durations = [j["end"] - j["start"] for j in sorted(jobs, key=lambda j: j["start"])]  # in the order asked
    ideal = ideal_busy(durations, n_jobs, batches=name == "official")
    return {"trials": len(jobs), "wall": wall, "span": span, "busy": ran / (n_jobs * span), "ideal": ideal,
            "working": ran / spans, "per_min": 60 * len(jobs) / wall}  # fmt: skip


def ideal_busy(durations: list[float], n_jobs: int, batches: bool) -> float:
    """The busy share the same trials in the same order would give with no overhead at all: in
    batches of n_jobs (each waits for its slowest), or each to the first free slot. The span's end
    (the last trials, with slots idle once nothing is left) bounds it below 100% either way."""
    if batches:
        span = sum(max(durations[i : i + n_jobs]) for i in range(0, len(durations), n_jobs))
    else:
        slots = [0.0] * n_jobs
        for d in durations:
            slots[slots.index(min(slots))] += d
        span = max(slots)
    return sum(durations) / (n_jobs * span)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS, help=f"trials per sweep (default {TRIALS})")
    parser.add_argument("--keep", type=Path, help="keep the sweeps' folders here (default: a temporary folder)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_model()}, {cores} cores; {args.trials} trials, durations as the default space's (see --help)")
    header = ("n_jobs", "wall s", "span s", "busy", "ideal busy", "while work", "trials/min", "wall ratio")
    print(f"{'sweeper':<34} " + " ".join(f"{h:>10}" for h in header))
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for n_jobs in [2, 4] if cores >= 4 else [2]:
            results = {}
            for name, label in (("official", "hydra-optuna-sweeper (batches)"), ("ours", "this project (in flight)")):
                folder = base / f"n{n_jobs}"
                folder.mkdir(parents=True, exist_ok=True)
                results[name] = r = run_sweep(folder, name, args.trials, n_jobs)
                ratio = r["wall"] / results["official"]["wall"]
                print(f"{label:<34} {n_jobs:>10} {r['wall']:>10.1f} {r['span']:>10.1f} {r['busy']:>10.1%} "
                      f"{r['ideal']:>10.1%} {r['working']:>10.1%} {r['per_min']:>10.2f} {ratio:>10.2f}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["job"]:  # a sweep's command (see run_sweep): Hydra reads the rest
        del sys.argv[1]
        job()
    else:
        main()
