"""The sweep protocol: every name that passes between the worker (mlp.sweep.worker), a trial's
job (train.py -> mlp.run.experiment, with mlp.sweep.job beside it), the reporting
(mlp.sweep.report, sweep.py) and the benchmarks. Follow one trial from ask to tell here:

1. the worker asks Optuna for a trial, sets its *trial attributes* (``ATTR_*``), opens its
   MLflow run with the *trial tags* (``TAG_*``) under the study's parent run, and launches the
   job with ``trial_overrides`` (the ``sweep`` group of conf/config.yaml, typed by
   mlp.run.config.SweepConfig);
2. the job resumes that run (``sweep.run_id``), reports each epoch to its trial (``sweep.storage``,
   ``sweep.study``, ``sweep.trial``), and when its pruner stops it, records ``ATTR_PRUNED_AT`` and
   tags its run (``TAG_STATE``, ``TAG_PRUNED_AT``);
3. the worker tells Optuna how the trial ended (FAIL with ``ATTR_FAILURE``), and at the end logs
   the study's report to the parent run (``PARENT_*`` tags). The study itself carries the
   *study attributes* (``STUDY_*``) its first worker recorded.

A leaf: it imports nothing, so that both sides (and the run room) may read it.
"""

from __future__ import annotations

# -- overrides the worker adds to a trial's command line (conf/config.yaml's `sweep` group) ------
STUDY = "sweep.study"  # the Optuna study's name
TRIAL = "sweep.trial"  # the trial's number in it
RUN_ID = "sweep.run_id"  # the MLflow run the worker opened for it; the job resumes it
STORAGE = "sweep.storage"  # the study storage's URL (a pruned trial reports there)
SLOT = "sweep.slot"  # which of the worker's parallel trials it is (picks a GPU)
THREADS = "trainer.threads"  # parallel trials share the cores (recorded, so model=best reruns alike)
# -- the environment a worker hands its jobs -----------------------------------------------------
ENV_WORKER = "MLP_SWEEP_WORKER"  # host:pid of the worker: a job in a process of its own ends when it dies


def quoted(value: str) -> str:
    """A string as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(study: str, number: int, run_id: str, storage: str | None, slot: int | None) -> list[str]:
    """What tells a job which trial it is (``slot`` None: the worker runs one trial at a time)."""
    overrides = [f"{STUDY}={quoted(study)}", f"{TRIAL}={number}", f"{RUN_ID}={run_id}"]
    if storage is not None:
        overrides.append(f"{STORAGE}={quoted(storage)}")
    if slot is not None:
        overrides.append(f"{SLOT}={slot}")
    return overrides


# -- Optuna trial attributes (user attributes) ---------------------------------------------------
ATTR_RUN_ID = "mlflow_run_id"  # the trial's MLflow run (reports find runs by it, never by name)
ATTR_WORKER = "worker"  # host:pid of the worker that ran it
ATTR_CLAIMED = "claimed_as"  # the trial's own number, set by its worker right after asking (a retry copies
#                              its dead trial's attributes, so the number tells whose claim it is)
ATTR_PRUNER = "pruner"  # the pruner's spec: the job builds the same pruner from it
ATTR_PRUNED_AT = "pruned_at_epoch"  # set by the job when its pruner stopped it; the worker tells PRUNED
ATTR_FAILURE = "failure_reason"  # why it failed (also the MLflow tag FAILURE below)
ATTR_REFERENCE = "reference"  # an enqueued reference point (the base config, an earlier winner)
ATTR_SLURM_JOB = "slurm_job_id"  # its SLURM job (hydra/launcher=slurm): cancelled when its worker is found dead
DUPLICATE = "duplicate of"  # how ATTR_FAILURE starts on a skipped repeat of an earlier configuration

# -- Optuna study attributes, recorded by the worker that created the study ----------------------
OBJECTIVE = "val_acc"  # the study's metric name (train.py returns the validation accuracy): dashboards show it
# A study's objectives by name (hydra.sweeper.objectives; Optuna's metric names), each read from the
# metric of that name on the trial's MLflow run (train.py returns the validation accuracy; the
# run logs the costs): what every run measures of its model the same way.
METRIC_PARAMS = "cost/params"  # weights and biases
METRIC_LATENCY = "cost/latency_ms"  # milliseconds per image: one image at a time, fp32, 1 CPU thread, median
OBJECTIVE_METRICS = {OBJECTIVE: "val/acc", "params": METRIC_PARAMS, "latency_ms": METRIC_LATENCY,
                     "train_seconds": "train_seconds"}  # fmt: skip
STUDY_FIXED_CONFIG = "fixed_config"  # everything not searched: joining workers must match it
STUDY_TRACKING_URI = "mlflow_tracking_uri"  # where its MLflow runs are
STUDY_PARENT_RUN = "mlflow_parent_run_id"  # its one MLflow parent run

# -- MLflow tags -------------------------------------------------------------------------------
FAILURE = "failure_reason"  # on any run that ended FAILED or KILLED: why
TAG_STUDY = "sweep.study"  # on a trial's run and on the parent: the study's name
TAG_TRIAL = "sweep.trial"  # on a trial's run: its number
TAG_DIR = "sweep.dir"  # on a trial's run: Hydra's sweep folder (its logs)
TAG_RETRY_OF = "sweep.retry_of"  # on a retried trial's run: the dead trial it repeats
TAG_STATE = "sweep.state"  # on a pruned trial's run: PRUNED
TAG_PRUNED_AT = "sweep.pruned_at_epoch"  # on a pruned trial's run: its last epoch
TAG_ROLE = "sweep.role"  # on the parent run: parent
TAG_STORAGE = "sweep.storage"  # on the parent run: the study storage's URL
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own nesting tag, on a trial's run
PARENT_BEST = "best."  # on the parent run: best.trial and best.<param> of the best trial
PARENT_WINNER_KEPT = "winner.kept"  # on the parent run: why the winner file was not replaced
TAG_ON_FRONT = "sweep.on_front"  # on a complete trial's run of a multi-objective study: true or false
