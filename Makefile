# The README's two commands: `make` (set up and train) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run train test ui services services-stop bench bench-parts bench-pruning bench-scale bench-quality lint clean

run: train

# A virtualenv with the pinned dependencies, reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Train the default MLP (fetches MNIST into data/ on first use); logs to mlruns/.
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# Browse the runs: http://127.0.0.1:5000
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db

# A local PostgreSQL (study storage) and mlflow server for multi-worker sweeps; prints the URLs to export.
services: $(STAMP)
	$(BIN)/python scripts/services.py start

services-stop: $(STAMP)
	$(BIN)/python scripts/services.py stop

bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py $(ARGS)

# Where one run's wall time goes: training, validation, data, test, figures, model, the rest.
bench-parts: $(STAMP)
	$(BIN)/python benchmarks/run_parts.py $(ARGS)

# Unpruned vs pruned (median) sweep, 30 trials each (about 32 minutes on 2 cores; ARGS=--quick: 1 minute).
bench-pruning: $(STAMP)
	$(BIN)/python benchmarks/pruning.py $(ARGS)

# 1 vs 2 workers, the study storage's ceiling (SQLite, PostgreSQL), per-trial overhead (ARGS=--quick: a smoke run).
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/sweep_scale.py $(ARGS)

# The default sweep (TPE) vs random search, 3 seeds each, its 12-minute budget (about 80 minutes; ARGS=--quick: a smoke run).
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/sweep_quality.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
