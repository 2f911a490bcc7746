"""What pruning buys, measured in one run: the project's sweep run twice on this machine,
unpruned and pruned, with the same search space (conf/hydra/sweeper/optuna.yaml), the same
sampler seed and the same number of trials, each as a user runs it:

    python train.py -m hydra/sweeper=optuna hydra/sweeper/pruner=<none, then PRUNER> ...

It prints the wall time of each, their ratio, the best validation accuracy of each and the
difference, and how many trials were pruned; then, from the unpruned sweep's learning
curves, how well a trial's validation accuracy part-way through predicts its final one
(the information any pruner acts on). Studies, MLflow runs and Hydra's folders go
to a temporary folder (or --keep DIR); conf/model/best.yaml is left as it is.

    python benchmarks/pruning.py                        # 30 trials each on MNIST (about 32 minutes on 2 cores)
    python benchmarks/pruning.py --pruner hyperband --trials 40
    python benchmarks/pruning.py --quick                # a smoke run: 6 trials each on synthetic data (about a minute)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from scipy.stats import spearmanr

from mlp.sweep.job import progress_step

ROOT = Path(__file__).resolve().parent.parent
PRUNERS = ("median", "percentile", "successive_halving", "hyperband")  # conf/hydra/sweeper/pruner/*.yaml


def sweep(folder: Path, name: str, overrides: list[str]) -> float:
    """Run one sweep through the real command line (study, runs and Hydra's folders in
    ``folder``, no winner file unless ``overrides`` name one); its wall time in seconds."""
    args = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.study_name={name}", f"hydra.sweeper.storage=sqlite:///{folder}/optuna.db",
        "hydra.sweeper.best_config=null", f"tracking.dir={folder}/mlruns",
        f"hydra.sweep.dir={folder}/multirun/{name}", *overrides,
    ]  # fmt: skip
    print(f"running: {' '.join(args[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: the {name} sweep failed:\n{done.stderr[-3000:]}")
    return seconds


def summary(folder: Path, name: str) -> dict[str, float]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db")
    states = [t.state for t in study.trials]
    return {
        "best": study.best_value,
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
    }


def early_vs_final(folder: Path, name: str, steps: tuple[int, ...] = (5, 10, 20, 30, 50, 75)) -> dict[int, float]:
    """Spearman rank correlation, over the study's completed trials, between validation
    accuracy at each step (% of the trial's epochs, as trials report it) and the final one."""
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    curves = []
    for run in client.search_runs(experiments, f"tags.`sweep.study` = '{name}' and tags.`sweep.trial` != ''"):
        epochs = int(run.data.params["trainer.epochs"])
        acc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/acc")}
        if len(acc) == epochs:
            curves.append((epochs, acc))
    final = [a[n] for n, a in curves]
    result = {}
    for step in steps:  # each trial's first report at or after the step
        early = [next(a[e] for e in range(1, n + 1) if progress_step(e, n) >= step) for n, a in curves]
        result[step] = float(spearmanr(early, final).statistic)  # ties (equal accuracies) get mean ranks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="the pruned sweep's pruner")
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep (default 30; --quick: 6)")
    parser.add_argument("--quick", action="store_true", help="synthetic data: a smoke run of the benchmark")
    parser.add_argument("--keep", type=Path, default=None, help="keep studies and runs in this folder")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for both sweeps, e.g. trainer.threads=1")
    a = parser.parse_args()
    trials = a.trials or (6 if a.quick else 30)
    extra = (["data=synthetic"] if a.quick else []) + a.overrides

    with tempfile.TemporaryDirectory(prefix="pruning-bench-") as tmp:
        folder = a.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        names = {"none": f"bench-{stamp}-unpruned", a.pruner: f"bench-{stamp}-{a.pruner}"}
        # Both validate every epoch (the early-vs-final correlation needs it); trials, not time, bound them.
        fixed = [f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.timeout=null", "trainer.val_every=1", *extra]
        seconds = {p: sweep(folder, n, [f"hydra/sweeper/pruner={p}", *fixed]) for p, n in names.items()}
        results = {p: summary(folder, n) for p, n in names.items()}
        correlation = early_vs_final(folder, names["none"])

    base, pruned = results["none"], results[a.pruner]
    print(f"\n{trials} trials each, same search space and sampler seed, {'synthetic' if a.quick else 'MNIST'} data")
    print(f"{'sweep':<22}{'wall s':>9}{'best val acc':>14}{'complete':>10}{'pruned':>8}{'failed':>8}")
    for p, r in results.items():
        label = "unpruned" if p == "none" else f"pruned ({p})"
        print(f"{label:<22}{seconds[p]:>9.1f}{r['best']:>14.4%}{r['complete']:>10}{r['pruned']:>8}{r['failed']:>8}")
    print(f"wall time ratio pruned/unpruned: {seconds[a.pruner] / seconds['none']:.3f}")
    print(f"best val acc difference pruned - unpruned: {100 * (pruned['best'] - base['best']):+.2f} percentage points")
    print("how well validation accuracy part-way predicts the final one (Spearman, unpruned trials):")
    print("  " + "   ".join(f"at {step}% of epochs: {rho:+.2f}" for step, rho in correlation.items()))
    if a.keep:
        print(f"studies and runs kept in {folder} (MLflow: sqlite:///{folder}/mlruns/mlflow.db)")


if __name__ == "__main__":
    main()
