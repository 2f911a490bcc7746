"""What the default sweep finds in its time budget, and how much of it is luck: the default
sweep (conf/hydra/sweeper/optuna.yaml: multivariate TPE, no pruning, its timeout) run with
several sampler seeds, and random search (hydra/sweeper/sampler=random) with the same budget
and seeds, each as a user runs it, one after the other on this machine:

    python train.py -m hydra/sweeper=optuna hydra.sweeper.sampler.seed=S [hydra/sweeper/sampler=random]

Each sweep is a new study that starts from the base config only (its winner file is a new one
in a temporary folder, so the shipped conf/model/best.yaml is neither a starting point nor
touched). For each it prints the best validation accuracy so far against wall minutes since
the process started (the anytime curve, also saved as a PNG with the medians over seeds), the
final best trial's configuration and its test accuracy; then the medians at half and at full
budget. The winner files of every sweep are kept next to the PNG (best_<sampler>_<seed>.yaml).

    python benchmarks/sweep_quality.py                 # 3 seeds x (TPE, random), about 6 x 13.5 minutes on 2 cores
    python benchmarks/sweep_quality.py --seeds 0 --samplers tpe
    python benchmarks/sweep_quality.py --quick         # a smoke run on synthetic data (about half a minute)
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from omegaconf import OmegaConf
from sweep_scale import progress, run_workers, study_runs, sweep_command, table

from mlp.run.device import cpu_model
from mlp.sweep import protocol

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET = float(OmegaConf.load(ROOT / "conf/hydra/sweeper/optuna.yaml").timeout)
SAMPLERS = {"tpe": [], "random": ["hydra/sweeper/sampler=random"]}  # tpe: the default sampler (tpe_multivariate)
QUICK = ["data=synthetic", "trainer.epochs=2", "hydra.sweeper.n_trials=1"]  # 1 trial of 2 tiny epochs per sweep


def anytime(study: optuna.Study, began: float) -> list[tuple[float, float]]:
    """(minutes since the process started, best validation accuracy so far) at each new best."""
    points, best = [], -math.inf
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_complete]
    for t in sorted(done, key=lambda t: t.datetime_complete):
        if t.value > best:
            best = t.value
            points.append(((t.datetime_complete.timestamp() - began) / 60, best))
    return points


def best_at(curve: list[tuple[float, float]], minute: float) -> float:
    """The curve's value at ``minute`` (nan before its first point)."""
    values = [v for m, v in curve if m <= minute]
    return values[-1] if values else math.nan


def run_one(folder: Path, sampler: str, seed: int, budget: float, extra: list[str]) -> dict:
    name = f"{sampler}-{seed}"
    sub = folder / name
    overrides = [f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.timeout={budget}", *SAMPLERS[sampler], *extra]
    progress(f"sweep {name}: budget {budget:.0f} s")
    began, wall = run_workers(sub, [sweep_command(sub, name, overrides)])
    study, runs = study_runs(sub, name)
    best = study.best_trial
    run = next((r for r in runs if r.info.run_id == best.user_attrs.get(protocol.ATTR_RUN_ID)), None)
    states = [t.state for t in study.trials]
    result = {
        "name": name,
        "sampler": sampler,
        "seed": seed,
        "wall": wall,
        "curve": anytime(study, began),
        "best": best.value,
        "best_trial": best.number,
        "params": best.params,
        "test": run.data.metrics.get("test/acc", math.nan) if run else math.nan,
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "other": len(states)
        - states.count(optuna.trial.TrialState.COMPLETE)
        - states.count(optuna.trial.TrialState.PRUNED),
    }
    progress(
        f"sweep {name}: {wall / 60:.1f} min, best val {best.value:.4f} (trial {best.number}), test {result['test']:.4f}"
    )
    return result


def plot(results: list[dict], budget_min: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"tpe": "tab:blue", "random": "tab:orange"}
    end = max(budget_min, *(r["wall"] / 60 for r in results))
    grid = [end * i / 200 for i in range(201)]
    for sampler, colour in colours.items():
        mine = [r for r in results if r["sampler"] == sampler]
        for r in mine:
            xs = [m for m, _ in r["curve"]] + [r["wall"] / 60]
            ys = [v for _, v in r["curve"]] + [r["curve"][-1][1]] if r["curve"] else []
            if ys:
                ax.step(xs, ys, where="post", color=colour, alpha=0.35, linewidth=1)
        if mine:
            med = [statistics.median(best_at(r["curve"], m) for r in mine) for m in grid]
            ax.plot(grid, med, color=colour, linewidth=2.2, label=f"{sampler}: median of {len(mine)} seeds")
    ax.axvline(budget_min, color="grey", linestyle=":", linewidth=1)
    ax.text(budget_min, ax.get_ylim()[0], " budget", color="grey", va="bottom", fontsize=8)
    ax.set_xlabel("wall minutes since the sweep started (whole process)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Default sweep (TPE) vs random search, same budget and seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def median_at(results: list[dict], sampler: str, minute: float) -> float:
    values = [best_at(r["curve"], minute) for r in results if r["sampler"] == sampler]
    return statistics.median(values) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (default 0 1 2)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS), help="default: both")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds per sweep (default: the sweep's timeout, {DEFAULT_BUDGET:.0f})",
    )
    parser.add_argument("--quick", action="store_true", help="synthetic data, 1 tiny trial per sweep: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the PNG and winner files (default: a temporary one)"
    )
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for every sweep, e.g. trainer.threads=1")
    a = parser.parse_args()
    budget = a.budget or (20.0 if a.quick else DEFAULT_BUDGET)
    extra = (QUICK if a.quick else []) + a.overrides

    with tempfile.TemporaryDirectory(prefix="sweep-quality-") as tmp:
        folder = Path(tmp)
        out = a.out or folder / "out"
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for seed in a.seeds:  # interleaved, so a drift of the machine's speed touches both samplers alike
            for sampler in a.samplers:
                r = run_one(folder, sampler, seed, budget, extra)
                results.append(r)
                winner = folder / r["name"] / "best.yaml"
                if winner.exists():
                    shutil.copy(winner, out / f"best_{r['name']}.yaml")
        png = out / "sweep_quality.png"
        plot(results, budget / 60, png)
        report(results, budget, "synthetic" if a.quick else "MNIST")
        print(f"anytime curves: {png}" + ("" if a.out else " (temporary: give --out DIR to keep it)"))


def report(results: list[dict], budget: float, data: str) -> None:
    half, full = budget / 120, max(r["wall"] for r in results) / 60
    print(f"\n{data}, budget {budget:.0f} s per sweep (timeout: no new trial after it), CPU: {cpu_model()}")
    rows = [
        [
            r["name"], r["wall"] / 60, r["complete"], r["pruned"], r["other"], f"{best_at(r['curve'], half):.4f}",
            f"{r['best']:.4f}", r["best_trial"], f"{r['test']:.4f}",
        ]
        for r in results
    ]  # fmt: skip
    table(["sweep", "wall min", "complete", "pruned", "other", "best val @half", "best val", "trial", "its test"], rows)
    print("\nbest trial of each sweep:")
    for r in results:
        params = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in r["params"].items()
        )
        print(f"  {r['name']}: {params}")
    samplers = sorted({r["sampler"] for r in results})
    print(f"\nmedian best val over seeds at half budget ({half:.1f} min) and at the end ({full:.1f} min):")
    for s in samplers:
        print(f"  {s:<7} {median_at(results, s, half):.4f}   {median_at(results, s, full):.4f}")
    tpe = [r for r in results if r["sampler"] == "tpe"]
    if tpe:
        reached = sum(r["best"] >= 0.99 for r in tpe)
        print(f"TPE sweeps that reached best val >= 0.9900: {reached} of {len(tpe)}")
    if {"tpe", "random"} <= set(samplers):
        for label, minute in (("half", half), ("full", full)):
            diff = median_at(results, "tpe", minute) - median_at(results, "random", minute)
            print(f"median TPE - median random at {label} budget: {100 * diff:+.2f} percentage points")


if __name__ == "__main__":
    main()
