# The README's two commands: `make` (set up and train) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run train test ui bench bench-pruning lint clean

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

bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py $(ARGS)

# Unpruned vs pruned (median) sweep, 30 trials each (about 32 minutes on 2 cores; ARGS=--quick: 1 minute).
bench-pruning: $(STAMP)
	$(BIN)/python benchmarks/pruning.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
