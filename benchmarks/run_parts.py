"""Where the wall time of one run goes: `python train.py ARGS` timed as a whole process, split
into training (the epochs' own seconds) and everything else, part by part, from what the run
logs to MLflow (``train_seconds`` and ``time/*_seconds``).

    python benchmarks/run_parts.py                     # the default run (20-40 s on 2 cores)
    python benchmarks/run_parts.py --repeat 3          # three runs in one store, each printed, then the median share
    python benchmarks/run_parts.py trainer.precision=fp32            # float32 epochs (default: bf16 where the CPU can)
    python benchmarks/run_parts.py data=synthetic trainer.epochs=2   # a smoke run, seconds

Last, it times ``python -c "import train"`` (the interpreter and the imports a run needs) as
often as the runs: the start-up that no change to the run itself can remove, next to what 15%
of the wall would allow. The runs log to a temporary folder; mlruns/ is left alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlp.run.device import cpu_model
from mlp.run.model import MLP

ROOT = Path(__file__).resolve().parent.parent
PARTS = {  # logged metric -> what the row says
    "time/data_seconds": "data: read, check, split, normalise",
    "time/validation_seconds": "validation after epochs",
    "time/test_seconds": "test set",
    "time/figures_seconds": "figures (3 PNG) to MLflow",
    "time/model_seconds": "model to MLflow (pt2)",
}


def one_run(folder: Path, overrides: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    cmd = [sys.executable, str(ROOT / "train.py"), f"tracking.dir={folder}/mlruns", f"hydra.run.dir={folder}/out"]
    start = time.perf_counter()
    done = subprocess.run([*cmd, "trainer.progress=false", *overrides], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: the run failed:\n{done.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id], max_results=1)[0]
    m = {"wall": wall, **run.data.metrics}  # the latest run
    p = run.data.params
    if "data.val_size" in p:  # the validation's arithmetic rate, to compare with epoch_speed.py's fp32 matmul peak
        passes = len(client.get_metric_history(run.info.run_id, "val/acc"))
        model = MLP(int(p["model.num_layers"]), int(p["model.layer_size"]))
        m["validation_gflops"] = passes * int(p["data.val_size"]) * model.flops_per_example() / 1e9
    return m


def report(m: dict[str, float]) -> float:
    """Print one run's parts; return the share of its wall spent outside training."""
    train = m["train_seconds"]
    parts = {label: m.get(key, 0.0) for key, label in PARTS.items()}
    rest = m["wall"] - train - sum(parts.values())
    rows = [("whole process (wall)", m["wall"]), ("training epochs", train), *parts.items()]
    rows.append(("the rest: start-up, MLflow run and logging, exit", rest))
    for label, seconds in rows:
        print(f"  {label:<50} {seconds:7.2f} s  {seconds / m['wall']:6.1%}")
    if "validation_gflops" in m:
        rate = m["validation_gflops"] / m["time/validation_seconds"]
        print(f"  {'validation speed (float32 forward passes)':<50} {rate:7.1f} GFLOP/s")
    outside = 1 - train / m["wall"]
    print(f"  {'outside training':<50} {m['wall'] - train:7.2f} s  {outside:6.1%}")
    return outside


def import_seconds(repeat: int) -> float:
    """Wall seconds of ``python -c "import train"``: the interpreter and only the imports a run
    needs (torch, torchvision, mlflow, hydra, matplotlib, ...), nothing run; median of ``repeat``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import train"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (default 1)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: none, the default run)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)   date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"command: python train.py {' '.join(args.overrides)}")
    shares, trains = [], []
    with tempfile.TemporaryDirectory(prefix="run-parts-") as tmp:  # one store: the first run creates it
        for i in range(args.repeat):
            print(f"run {i + 1}{' (creates the MLflow store)' if i == 0 else ''}:", flush=True)
            m = one_run(Path(tmp), args.overrides)
            shares.append(report(m))
            trains.append(m["train_seconds"])
    print(f"outside training, median of {len(shares)}: {statistics.median(shares):.1%} of the wall")
    floor, train = import_seconds(args.repeat), statistics.median(trains)
    print(
        f"start-up floor: python -c 'import train' (the imports alone) {floor:.2f} s = {floor / (floor + train):.1%} "
        f"of imports + training; 15% of the wall allows {0.15 / 0.85 * train:.2f} s outside {train:.2f} s of training"
    )


if __name__ == "__main__":
    main()
