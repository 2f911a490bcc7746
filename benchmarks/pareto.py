"""Accuracy against cost: the multi-objective preset for a fixed budget, its Pareto front, and the
compact pick against the most accurate trial (the champion's recipe: what the winner file and
`python train.py model=best` reproduce).

    python benchmarks/pareto.py                    # hydra/sweeper=optuna_pareto as shipped: a 12-minute budget
    python benchmarks/pareto.py --budget 600       # another budget, in seconds
    python benchmarks/pareto.py --quick            # seconds: 2 one-epoch trials of tiny networks
    python benchmarks/pareto.py --dir DIR --reuse --within 0.01   # the study in DIR again, another compact distance

Everything goes to a folder of its own (--dir, else a temporary one): the study, the MLflow store
with every trial's model, the winner file; the project's mlruns/ and conf/ are not touched.
Printed: the front (objectives and parameters) and, for the two picks, test accuracy, weights,
the objective's time per image, p50 and p99 of ``POST /predict`` (the web app, one photo-like JPEG
per request, in sequence) and images/s of a 10,000-image batch through the model, with the CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.recognizer import serving  # noqa: E402
from mlp.run import data  # noqa: E402
from mlp.run.device import cpu_model  # noqa: E402
from mlp.serve import images  # noqa: E402
from mlp.serve.recognizer import Recognizer  # noqa: E402
from mlp.sweep import front, protocol  # noqa: E402
from mlp.sweep.report import front_rows, markdown_table, short_name, trial_runs  # noqa: E402

QUICK = [  # a smoke run: the sweep, its front and the picks' serving, end to end
    "trainer.epochs=1",
    "hydra.sweeper.n_trials=2",
    "model.num_layers=range(1,3)",
    "model.layer_size=choice(16,64)",
]


def sweep(folder: Path, budget: float, quick: bool) -> float:
    """The preset's sweep in ``folder``; its wall seconds."""
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optuna_pareto", "trainer.device=cpu",
        "hydra.sweeper.study_name=bench-pareto", f"hydra.sweeper.storage=sqlite:///{folder}/optuna.db",
        f"hydra.sweeper.best_config={folder}/best.yaml", f"tracking.dir={folder}/mlruns",
        f"hydra.sweep.dir={folder}/multirun", f"hydra.sweeper.timeout={budget}", *(QUICK if quick else []),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: the sweep failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def model_uri(client: MlflowClient, run) -> str:  # an MLflow Run
    (found,) = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    return found.model_uri


def measure(uri: str, photos: list[bytes], batch: np.ndarray) -> dict[str, float]:
    served = serving(uri, photos)
    recognizer = Recognizer(uri)
    recognizer.predict(batch[:100])
    start = time.perf_counter()
    recognizer.predict(batch)
    return {**served, "images/s": len(batch) / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=720, help="seconds the sweep starts trials for (default: 720)")
    parser.add_argument("--dir", help="folder for the study and its runs (default: a temporary one)")
    parser.add_argument("--requests", type=int, default=500, help="POST /predict requests per model (default: 500)")
    parser.add_argument("--quick", action="store_true", help="2 one-epoch trials of tiny networks: a smoke run")
    parser.add_argument("--reuse", action="store_true", help="measure the study already in --dir: no new sweep")
    parser.add_argument("--within", type=float, default=0.002, help="the compact pick's distance (the preset's: 0.002)")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-pareto-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the web app's subprocess too
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; hydra/sweeper=optuna_pareto, budget {args.budget:.0f} s; {folder}"
    )
    wall = 0.0 if args.reuse else sweep(folder, args.budget, args.quick)
    study = optuna.load_study(study_name="bench-pareto", storage=f"sqlite:///{folder}/optuna.db")
    client = MlflowClient(uri)
    runs = trial_runs(client, study)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    objectives = ", ".join(front.names(study))
    took = f" in {wall:.0f} s" if wall else ""
    print(f"\n{complete} trials{took}; the Pareto front of {objectives}, most accurate first:")
    rows = [{short_name(k): v for k, v in row.items() if k != "run_id"} for row in front_rows(study, runs)]
    print(markdown_table(rows), end="")

    within = args.within
    best, compact = front.most_accurate(study), front.compact_pick(study, within)
    _, _, test_x, _ = data.read_mnist(ROOT / "data")
    x = test_x.numpy()
    rng = np.random.default_rng(1)
    photos = [images.photo_like(x[i % len(x)], rng) for i in range(args.requests)]
    picks = {"most accurate (champion recipe)": best, f"compact pick (within {within})": compact}
    print(f"\n{'':34} {'trial':>5} {'test acc':>9} {'weights':>9} {'ms/image':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'images/s':>10}")  # fmt: skip
    for name, trial in picks.items():
        if name != next(iter(picks)) and trial.number == best.number:
            print("(the compact pick is the most accurate trial itself: no cheaper front trial within the distance)")
            break
        run = runs[trial.number]
        found, metrics = measure(model_uri(client, run), photos, x), run.data.metrics
        print(
            f"{name:34} {trial.number:>5} {metrics['test/acc']:>9.4f} {int(metrics[protocol.METRIC_PARAMS]):>9,} "
            f"{metrics[protocol.METRIC_LATENCY]:>9.4f} {found['p50']:>8.2f} {found['p99']:>8.2f} "
            f"{found['images/s']:>10,.0f}"
        )


if __name__ == "__main__":
    main()
