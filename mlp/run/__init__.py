"""One run: the typed config, MNIST as tensors, the model, the training loop, MLflow tracking,
the figures, the Model Registry's champion rule, and ``experiment.run(cfg)`` that ties them
together. Nothing here imports Optuna or the sweep room."""
