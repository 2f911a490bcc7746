"""Kill one of three sweep workers at a random moment, again and again: what a cluster does to a
study. On a real PostgreSQL and `mlflow server` (scripts/services.py), each round starts three
workers of one new study (synthetic data, 3 trials each), SIGKILLs one of them a random number of
seconds after the start, and lets the others finish (when the kill came after they had ended, a
later one-trial sweep of the study starts, as a user would). Then it checks: no trial RUNNING or
WAITING, no MLflow run RUNNING, one parent run, FINISHED. It prints one line per round and
exits 1 if any round left something behind.

    python scripts/kill_soak.py               # 10 rounds, kills 2-25 s after the start: about 8 minutes
    python scripts/kill_soak.py --rounds 3 --seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import services  # scripts/services.py, beside this file
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def worker(folder: Path, info: dict, study: str, index: int, n_trials: int = 3) -> subprocess.Popen:
    args = [
        "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none", "data=synthetic", "trainer.epochs=2",
        "trainer.threads=1", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage={info['storage_url']}", f"hydra.sweeper.best_config={folder}/best_{study}.yaml",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
        f"hydra.sweep.dir={folder}/{study}/{index}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": info["tracking_uri"]}
    log = open(folder / f"{study}-{index}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=folder, env=env, stdout=log, stderr=log
    )


def left_behind(info: dict, study_name: str) -> list[str]:
    """What the study and MLflow hold that a finished study must not."""
    trials = optuna.load_study(study_name=study_name, storage=info["storage_url"]).get_trials(deepcopy=False)
    problems = [f"trial {t.number} {t.state.name}" for t in trials if t.state.name in ("RUNNING", "WAITING")]
    client = MlflowClient(info["tracking_uri"])
    experiment = client.get_experiment_by_name("mnist-mlp")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`sweep.study` = '{study_name}'")
    problems += [f"run {r.info.run_name} RUNNING" for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parents {[p.info.status for p in parents]}")
    return problems


def one_round(folder: Path, info: dict, study: str, kill_after: float) -> tuple[str, list[str]]:
    workers = [worker(folder, info, study, i) for i in range(3)]
    time.sleep(kill_after)
    others_running = all(w.poll() is None for w in workers[1:])
    victim_running = workers[0].poll() is None
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    for i, w in enumerate(workers[1:], 1):
        if w.wait(timeout=600) != 0:
            return "a surviving worker failed", [(folder / f"{study}-{i}.log").read_text()[-2000:]]
    when = "while all three ran" if others_running and victim_running else "after some had ended"
    if not victim_running:
        when = "too late: the victim had ended"
    if not others_running:  # the others had ended: a later sweep of the study starts, as a user would
        later = worker(folder, info, study, 3, n_trials=1)
        if later.wait(timeout=600) != 0:
            return "the later worker failed", [(folder / f"{study}-3.log").read_text()[-2000:]]
        when += ", then a later sweep"
    return when, left_behind(info, study)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="of the kill times")
    parser.add_argument("--earliest", type=float, default=2.0, help="seconds after the start (default 2)")
    parser.add_argument("--latest", type=float, default=25.0, help="seconds after the start (default 25)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped on the way out
    rng = random.Random(args.seed)
    good = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        info = services.start(folder / "services", mlflow_port=0, workers=1)
        try:
            for n in range(args.rounds):
                kill_after = rng.uniform(args.earliest, args.latest)
                when, problems = one_round(folder, info, f"soak{n}", kill_after)
                good += not problems
                verdict = "nothing left behind" if not problems else "LEFT: " + "; ".join(problems)
                print(f"round {n + 1}: killed after {kill_after:4.1f} s ({when}): {verdict}", flush=True)
        finally:
            services.stop(folder / "services", purge=True)
    print(f"{good} of {args.rounds} rounds left nothing behind")
    sys.exit(0 if good == args.rounds else 1)


if __name__ == "__main__":
    main()
