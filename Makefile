# The README's two commands: `make` (set up and train) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run train test test-fast ui serve serve-mlflow services services-stop cluster cluster-stop bench bench-parts bench-step bench-pruning bench-scale bench-async bench-quality bench-recognizer lint clean

run: train

# A virtualenv with the pinned dependencies, reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Train the default MLP (fetches MNIST into data/ on first use); logs to mlruns/.
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# One torch thread in each test process and its children: the tests' models are tiny, and beside another
# worker a second thread only spins for its turn (the whole suite on 2 cores: 370 s -> 328 s). The whole
# suite runs three workers on 2 cores: while one waits (for SLURM, a dead trial's grace period, a server),
# two still compute (332 s against 349 s with two, one after the other); the fast tests never wait.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --dist loadgroup

test: $(STAMP)
	$(PYTEST) -n 3 $(ARGS)

# The tests without the slow ones (pyproject.toml's `slow` marker: real MNIST, servers, browser, subprocesses).
test-fast: $(STAMP)
	$(PYTEST) -n 2 -m "not slow" $(ARGS)

# Browse the runs (ARGS="--port 5001" etc.; one server worker, enough for one user). It first prints
# the links to open: each study's trials, best first (python sweep.py link), and the experiment's runs in
# MLflow's Model training view (the UI opens in its GenAI view without ?workflowType=machine_learning).
ui: $(STAMP)
	-@$(BIN)/python sweep.py link 2>/dev/null
	@echo "all runs of mnist-mlp: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --workers 1 $(ARGS)

# The digit recognizer: a page to draw on and a JSON API (POST /predict) at http://127.0.0.1:8000,
# serving models:/mnist-mlp@champion (made by `python train.py model=best`); PORT=8001, ARGS="--model compact" etc.
serve: $(STAMP)
	$(BIN)/python -m mlp.serve $(if $(PORT),--port $(PORT)) $(ARGS)

# MLflow's own model server for the champion at http://127.0.0.1:5002/invocations: uvicorn found on PATH,
# the project's tracking store named (no stray ./mlflow.db), the venv used as it is (no new environment).
serve-mlflow: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} \
		MLFLOW_DEFAULT_PREDICTION_DEVICE=$${MLFLOW_DEFAULT_PREDICTION_DEVICE:-cpu} \
		$(BIN)/mlflow models serve -m models:/mnist-mlp@champion --env-manager local --host 127.0.0.1 --port 5002 $(ARGS)

# A local PostgreSQL (study storage) and mlflow server for multi-worker sweeps; prints the URLs to export.
services: $(STAMP)
	$(BIN)/python scripts/services.py start $(ARGS)

# Stops both, keeping their data (ARGS=--purge deletes it).
services-stop: $(STAMP)
	$(BIN)/python scripts/services.py stop $(ARGS)

# A one-node SLURM cluster on this machine (slurm-wlm, munge; installed as root when missing), in .cluster/;
# prints the SLURM_CONF to export (docs/many_machines.md, "On a SLURM cluster").
cluster: $(STAMP)
	$(BIN)/python scripts/cluster.py start $(ARGS)

cluster-stop: $(STAMP)
	$(BIN)/python scripts/cluster.py stop $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py $(ARGS)

# Where one run's wall time goes: training, validation, data, test, figures, model, the rest.
bench-parts: $(STAMP)
	$(BIN)/python benchmarks/run_parts.py $(ARGS)

# One step of model=best's network part by part, torch's dropout against ours, and an epoch of each (about 2 minutes; ARGS=--quick: seconds).
bench-step: $(STAMP)
	$(BIN)/python benchmarks/step_speed.py $(ARGS)

# Unpruned vs pruned (median) sweep, 30 trials each (about 32 minutes on 2 cores; ARGS=--quick: 1 minute).
bench-pruning: $(STAMP)
	$(BIN)/python benchmarks/pruning.py $(ARGS)

# 1 vs 2 workers, the study storage's ceiling (SQLite, PostgreSQL), per-trial overhead (ARGS=--quick: a smoke run).
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/sweep_scale.py $(ARGS)

# Trials in flight against hydra-optuna-sweeper's batches: the same 18 trials (about 9 minutes)
bench-async: $(STAMP)
	$(BIN)/python benchmarks/sweep_async.py $(ARGS)

# The default sweep (TPE) vs random search, 3 seeds each, its 12-minute budget (about 80 minutes; ARGS=--quick: a smoke run).
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/sweep_quality.py $(ARGS)

# The champion on photo-like test digits (accuracy, drop from clean) and POST /predict speed (ARGS="--limit 1000": quicker).
bench-recognizer: $(STAMP)
	$(BIN)/python benchmarks/recognizer.py $(ARGS)

# ruff's rules (pyproject.toml [tool.ruff]) and the import contracts between the rooms ([tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-logo

clean:
	rm -rf outputs multirun .pytest_cache
