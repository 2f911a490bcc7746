"""Multi-layer perceptrons on handwritten digits: Hydra configs, Optuna sweeps, MLflow runs."""
