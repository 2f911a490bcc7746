"""Train one MLP on MNIST, or sweep many with Optuna; every run is logged to MLflow.

    python train.py                                   # the write-up's MLP, 20 epochs (under 20 s on 2 bf16 cores)
    python train.py data=synthetic trainer.epochs=1   # a smoke run on tiny synthetic data (seconds)
    python train.py model.num_layers=3 model.activation=tanh optimizer.weight_decay=1e-4 trainer.epochs=10
    python train.py optimizer=sgd optimizer.lr=0.05   # another optimizer group
    python train.py --cfg job                         # print the composed config and stop

Runs go to MLflow: by default a SQLite store with artifacts under ./mlruns (browse with
`make ui`); set MLFLOW_TRACKING_URI or tracking.uri to use a server. Hydra's own logs go
to outputs/ (single runs) and multirun/ (sweeps).
"""

import gc

import hydra
from omegaconf import DictConfig

# torch, mlflow and matplotlib create millions of long-lived objects as they load: with the
# collector off while they do, and those objects frozen (never scanned again), start-up is
# faster. Measured: `python train.py --cfg job` 3.1 s with, 6.0 s without (2 cores, 2026-11-26).
gc.disable()
from mlp.cli import closed_pipe_quietly, exit_on_user_error, run_cli  # noqa: E402
from mlp.run.experiment import run  # noqa: E402
from mlp.run.hydra_job import in_sweep  # noqa: E402
from mlp.sweep.job import judge  # noqa: E402

gc.freeze()
gc.enable()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        result = run(cfg, judge(cfg.sweep))  # judge: a pruned sweep trial's pruner, else None
    if not in_sweep():  # a sweep logs one line per trial and prints its own summary
        with closed_pipe_quietly():  # here, not only around main: Hydra would report a failed job first
            print(result.summary())
    return result.val_acc  # the sweep objective


if __name__ == "__main__":
    run_cli(main)
