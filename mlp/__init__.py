"""Multi-layer perceptrons on handwritten digits: Hydra configs, Optuna sweeps, MLflow runs.

Three rooms: ``mlp.run`` (one run), ``mlp.sweep`` (sweeps) and ``mlp.serve`` (the recognizer);
beside them ``errors`` (error types), ``cli`` (the command-line wrapper) and ``sqlite_files``.
"""

import importlib
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the repository: conf/, mlruns/, data/


def __getattr__(name: str) -> Any:
    """``mlp.training``: the name conf/schedule/*.yaml give their schedules (``_target_:
    mlp.training.onecycle``), kept so that composed configs, and those of earlier runs logged
    to MLflow, stay valid; imported when Hydra first resolves one."""
    if name == "training":
        return importlib.import_module("mlp.run.training")
    raise AttributeError(f"module 'mlp' has no attribute {name!r}")
