"""The sweep worker's logic, in process: whole sweeps whose trials' jobs are Python functions
(tests/scripted.py), on a SQLite study and MLflow store in a temporary folder: ask, launch and
tell, repeats, failures, pruning, the timeout, trials in flight, interrupts, dead workers' trials,
several objectives and the study's end (report, winner file, parent run). The real command line,
a real job and real processes are in tests/test_sweeps.py, test_async_trials.py, test_workers.py."""

from __future__ import annotations

import logging
import math
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from hydra import compose, initialize_config_dir

from mlp import processes
from mlp.errors import DivergedError, UserError
from mlp.sweep import protocol, report
from mlp.sweep.job import TrialLink
from mlp.sweep.recovery import Heartbeat
from mlp.sweep.settings import Plan, fixed_config
from mlp.sweep.study import join
from mlp.sweep.worker import Worker
from tests.helpers import CONF, Sweep, seed_store, winner_of
from tests.scripted import Job, ScriptedLauncher, run_in_process, sweep_config

ALWAYS_PRUNE = (
    "hydra/sweeper/pruner=none",
    "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
    "+hydra.sweeper.pruner.lower=1.01",  # prunes at every step: accuracy < 1.01
)
NO_WINNER_FILE = "hydra.sweeper.best_config=null"
PARALLEL = ("hydra/launcher=joblib", "hydra.sweeper.n_jobs=2")  # the scripted launcher runs them; joblib's n_jobs rule


@pytest.fixture
def sweep(tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sweep]:
    """A sweep set-up, its MLflow store a copy of an empty one; on tmpfs where there is one (each
    SQLite commit waits for the disk otherwise: half a sweep's time). Optuna's figures are not
    drawn (seconds each: tests/test_figures.py draws them)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (tracking.dir decides), and so again after MLflow sets it
    monkeypatch.setattr(report, "optuna_figures", lambda study: {})
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else tmp_path) as root:
        seed_store(Path(root) / "mlruns", empty_store)
        yield Sweep(Path(root))


def runs_of(sweep: Sweep) -> tuple[object, dict[str, object]]:
    """The study's parent run, and its trials' runs by run id."""
    (parent,) = sweep.runs("parent")
    return parent, {r.info.run_id: r for r in sweep.runs("child")}


def test_a_study_runs_its_trials_then_continues_with_new_configurations(sweep: Sweep) -> None:
    client = sweep.client()
    score = lambda job: job.log_run(client, 0.9 - job.trial / 100, **{"test/acc": 0.5})  # noqa: E731 - the first best
    first = run_in_process(sweep, score, 2)
    assert [job.trial for job in first.jobs] == [0, 1]
    first_params, first_winner = [t.params for t in sweep.study_trials()], sweep.best.read_text()
    run_in_process(sweep, score, 1)

    trials = sweep.study_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert [t.params for t in trials[:2]] == first_params and trials[2].params not in first_params  # not asked again
    assert trials[0].user_attrs[protocol.ATTR_REFERENCE] == "base config"  # a new study starts from the defaults
    assert trials[0].params["model.num_layers"] == 4 and trials[0].params["model.activation"] == "leaky_relu"
    study = optuna.load_study(study_name=sweep.study, storage=sweep.storage)
    assert study.user_attrs[protocol.STUDY_FIXED_CONFIG]["data.name"] == "synthetic"

    parent, children = runs_of(sweep)
    assert parent.info.status == "FINISHED" and parent.data.tags[protocol.TAG_ROLE] == "parent"
    assert {c.data.tags[protocol.PARENT_RUN] for c in children.values()} == {parent.info.run_id}
    for trial in trials:
        child = children[trial.user_attrs[protocol.ATTR_RUN_ID]]  # the trial knows its run
        assert child.data.tags[protocol.TAG_TRIAL] == str(trial.number) and child.info.run_name.startswith("trial-")
    assert len(children) == 3
    assert {"leaderboard.csv", "leaderboard.md", "study_fixed_config.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    assert parent.data.metrics["best/val_acc"] == 0.9 and parent.data.metrics["trials_complete"] == 3

    # The winner file holds the best trial (0), which the third did not beat: the file was left as it was.
    assert winner_of(sweep.best) == (sweep.study, 0) and sweep.best.read_text() == first_winner
    values = yaml.safe_load(first_winner)
    for key, value in trials[0].params.items():
        section, name = key.split(".")
        assert values[section][name] == pytest.approx(value), key


def nothing_more(cfg: object, trial: optuna.trial.Trial) -> None:
    """A hydra.sweeper.custom_search_space that suggests nothing."""


def test_a_configuration_the_study_has_is_skipped_until_the_space_looks_exhausted(
    sweep: Sweep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # the root logger's level is ERROR once MLflow is imported
    fixed = ["model.num_layers=2", "model.layer_size=256", "model.dropout=0.1", "optimizer.lr=0.003",
             "optimizer.weight_decay=0.01", "data.max_rotation=0", "data.max_scale=0.0"]  # fmt: skip
    # A custom_search_space (adding nothing here) may add keys: the worker cannot tell that the 2
    # configurations are all there is (then it stops: tests/test_refusals.py), so repeats are proposed.
    space = ("model.activation=choice(relu,gelu)", "hydra.sweeper.max_failure_rate=0", NO_WINNER_FILE,
             "hydra.sweeper.custom_search_space=tests.test_worker.nothing_more")  # fmt: skip
    launcher = run_in_process(sweep, lambda job: 0.5, 3, *fixed, *space)  # leaky_relu, the base config's, is outside

    trials = sweep.study_trials()
    ran = [t for t in trials if t.state.name == "COMPLETE"]
    assert [t.number for t in ran] == [job.trial for job in launcher.jobs] and len(ran) == 3
    assert {t.params["model.activation"] for t in ran[:2]} == {"relu", "gelu"}
    skipped = [t for t in trials if t.state.name == "FAIL"]
    assert len(skipped) == 19  # then the 20th proposal of a known configuration runs
    assert all(t.user_attrs[protocol.ATTR_FAILURE].startswith(protocol.DUPLICATE) for t in skipped)
    assert "the search space looks exhausted" in caplog.text
    assert runs_of(sweep)[0].info.status == "FINISHED"  # skips are no failures (max_failure_rate 0)


def test_failed_and_non_finite_trials_are_recorded_and_the_sweep_goes_on(sweep: Sweep) -> None:
    client = sweep.client()

    def job(job: Job) -> float:
        if job.trial == 1:
            raise DivergedError("the loss became non-finite at epoch 1")
        return math.nan if job.trial == 2 else job.log_run(client, 0.5)

    launcher = run_in_process(sweep, job, 3)
    trials = sweep.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"] and len(launcher.jobs) == 3
    reasons = [t.user_attrs.get(protocol.ATTR_FAILURE) for t in trials]
    assert reasons == [None, "DivergedError: the loss became non-finite at epoch 1", "objective nan"]
    _, children = runs_of(sweep)
    for trial, reason in zip(trials[1:], reasons[1:], strict=True):
        run = children[trial.user_attrs[protocol.ATTR_RUN_ID]]
        assert run.info.status == "FAILED" and run.data.tags[protocol.FAILURE] == reason
    assert winner_of(sweep.best) == (sweep.study, 0)  # written from the trial that completed


def test_too_many_failures_stop_the_worker(sweep: Sweep) -> None:
    def job(job: Job) -> float:
        if job.trial == 1:
            raise RuntimeError("out of memory")
        return 0.5

    with pytest.raises(UserError, match=r"^1 of this worker's 2 trials failed, more than max_failure_rate 0.4: stop"):
        run_in_process(sweep, job, 5, "hydra.sweeper.max_failure_rate=0.4", NO_WINNER_FILE)
    assert [t.state.name for t in sweep.study_trials()] == ["COMPLETE", "FAIL"]  # no third trial
    assert runs_of(sweep)[0].info.status == "FAILED"


def test_a_sweep_where_no_trial_completes_ends_with_one_clear_line(sweep: Sweep) -> None:
    def diverged(job: Job) -> float:
        raise DivergedError("the loss became non-finite")

    with pytest.raises(UserError) as info:
        run_in_process(sweep, diverged, 1)
    assert str(info.value).startswith("no trial of study 'test' completed (1 failed, 0 pruned): there is no best")
    assert [t.state.name for t in sweep.study_trials()] == ["FAIL"]
    assert runs_of(sweep)[0].info.status == "FINISHED"  # the study's parent: its sweep ran; the trial's run FAILED
    assert not sweep.best.exists()


def test_a_trial_its_pruner_stopped_is_told_pruned(sweep: Sweep) -> None:
    """The job's side is the real one (mlp.sweep.job.TrialLink): trials of 3 epochs are pruned
    after their first, trials of 1 complete (a trial is never pruned at its last epoch)."""
    client = sweep.client()

    def job(job: Job) -> float:
        link = TrialLink.open(job.values[protocol.STORAGE], job.values[protocol.STUDY], job.trial)
        epochs = job.values["trainer.epochs"]
        for epoch in range(1, epochs + 1):
            if link.should_stop(epoch, epochs, 0.5 + job.trial / 100):
                break
        return job.log_run(client, 0.5 + job.trial / 100)

    run_in_process(sweep, job, 4, *ALWAYS_PRUNE, "trainer.epochs=choice(1,3)", "hydra.sweeper.sampler.seed=1")
    trials = sweep.study_trials()
    states = {t.number: t.state.name for t in trials}
    assert states == {t.number: "PRUNED" if t.params["trainer.epochs"] == 3 else "COMPLETE" for t in trials}
    assert {"PRUNED", "COMPLETE"} <= set(states.values())
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert winner_of(sweep.best) == (sweep.study, best.number)  # the winner comes from a completed trial


def test_a_timeout_stops_starting_trials(sweep: Sweep, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    launcher = run_in_process(
        sweep, lambda job: time.sleep(0.1) or 0.5, 50, "hydra.sweeper.timeout=0.3", NO_WINNER_FILE
    )
    trials = sweep.study_trials()
    assert 1 <= len(trials) < 50 and len(launcher.jobs) == len(trials)
    assert {t.state.name for t in trials} == {"COMPLETE"}  # those under way finished
    assert f"timeout of 0.3 s reached after {len(trials)} trial(s): no new trial started" in caplog.text


def test_a_slot_takes_its_next_trial_while_the_other_still_runs(sweep: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 1 runs until trial 3 has started: in batches of two, trial 2 would wait for it."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    started, release = [], threading.Event()

    def job(job: Job) -> float:
        started.append(job.trial)
        if job.trial == 3:
            release.set()
        assert job.trial != 1 or release.wait(timeout=20), "trial 1 blocked: no trial started while it ran"
        return 0.5

    launcher = run_in_process(sweep, job, 4, *PARALLEL, NO_WINNER_FILE)
    trials = sweep.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4 and started[:2] in ([0, 1], [1, 0])
    assert trials[1].datetime_complete > trials[3].datetime_start  # trials 2 and 3 ran while 1 did
    slots = {job.trial: job.values[protocol.SLOT] for job in launcher.jobs}
    assert slots[0] != slots[1] and set(slots.values()) == {0, 1}
    assert {job.values[protocol.THREADS] for job in launcher.jobs} == {2}  # the 4 cores shared by 2 trials


def interrupted(job: Job) -> float:
    raise KeyboardInterrupt  # Ctrl-C while the job runs in the worker's thread (Hydra's basic launcher)


def test_ctrl_c_in_a_trial_ends_it_and_the_parent_killed(sweep: Sweep) -> None:
    before = subprocess.Popen(["sleep", "60"])  # a process there before the worker (a server of the session): no job
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_process(sweep, interrupted, 3)
        assert processes.running(psutil.Process(before.pid))
    finally:
        before.kill()
        before.wait()
    (trial,) = sweep.study_trials()  # no trial asked after it
    assert trial.state.name == "FAIL" and trial.user_attrs[protocol.ATTR_FAILURE] == "interrupted"
    parent, children = runs_of(sweep)
    assert [c.info.status for c in children.values()] == ["KILLED"] and parent.info.status == "KILLED"


def test_ctrl_c_with_trials_in_flight_ends_them_all_and_stops_their_jobs(
    sweep: Sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job starts a process (as joblib's and submitit's do) and runs on; Ctrl-C reaches the
    worker's thread while both run (Python's own SIGINT handler: a shell's `&` leaves it ignored)."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    spawned: list[subprocess.Popen] = []
    done = threading.Event()

    def job(job: Job) -> float:
        spawned.append(subprocess.Popen(["sleep", "60"]))
        if len(spawned) == 2:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        done.wait(timeout=30)
        return 0.5

    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_process(sweep, job, 4, *PARALLEL)
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    assert [p.wait(timeout=10) for p in spawned] == [-signal.SIGTERM] * 2  # stopped, not left running
    trials = sweep.study_trials()
    assert [(t.state.name, t.user_attrs[protocol.ATTR_FAILURE]) for t in trials] == [("FAIL", "interrupted")] * 2
    parent, children = runs_of(sweep)
    assert sorted(c.info.status for c in children.values()) == ["KILLED"] * 2 and parent.info.status == "KILLED"


def test_a_job_that_ignores_sigterm_is_killed() -> None:
    """As submitit's jobs do: SIGTERM, then SIGKILL after the patience."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    job.stdout.readline()  # SIGTERM ignored from here
    processes.stop([psutil.Process(job.pid)], patience=0.2)
    assert job.wait(timeout=10) == -signal.SIGKILL


def test_a_launcher_that_breaks_fails_its_trial_and_stops_the_worker(sweep: Sweep) -> None:
    class Broken(ScriptedLauncher):
        def launch(self, job_overrides, initial_job_idx):
            raise ConnectionError("the cluster does not answer")

    config, arguments = sweep_config(sweep, 3, NO_WINNER_FILE)
    plan = Plan.of(config, arguments)
    with pytest.raises(ConnectionError):
        Worker(plan, join(plan, config), Broken(lambda job: 0.5)).run()
    (trial,) = sweep.study_trials()
    assert trial.user_attrs[protocol.ATTR_FAILURE] == "launcher failed: the cluster does not answer"
    parent, children = runs_of(sweep)
    assert [c.info.status for c in children.values()] == ["FAILED"] and parent.info.status == "FAILED"


QUICK = ("hydra.sweeper.heartbeat_interval=0.1", "hydra.sweeper.grace_period=0.2", NO_WINNER_FILE)


def test_reference_trials_past_n_trials_wait_for_the_studys_next_worker(sweep: Sweep) -> None:
    enqueue = "hydra.sweeper.enqueue_trials=[{model.layer_size: 256}]"  # the base config's, then this one
    first = run_in_process(sweep, lambda job: 0.5, 1, NO_WINNER_FILE, enqueue)
    assert [job.trial for job in first.jobs] == [0]  # n_trials=1: one trial, not both references
    assert [(t.number, t.state.name) for t in sweep.study_trials()] == [(0, "COMPLETE"), (1, "WAITING")]
    second = run_in_process(sweep, lambda job: 0.6, 1, NO_WINNER_FILE)
    assert [job.trial for job in second.jobs] == [1]
    assert sweep.study_trials()[1].params["model.layer_size"] == 256


def another_worker(sweep: Sweep, *extra: str) -> Worker:
    """Another worker of the study (it creates it: its first trial is the base config's)."""
    config, arguments = sweep_config(sweep, 1, *extra)
    plan = Plan.of(config, arguments)
    return Worker(plan, join(plan, config), ScriptedLauncher(lambda job: 0.5))


def test_a_dead_workers_trial_is_failed_and_retried_once_by_another(sweep: Sweep) -> None:
    dead_worker = another_worker(sweep, NO_WINNER_FILE)
    flight, _ = dead_worker.ask()  # then it died (SIGKILL, its machine lost): its trial RUNNING, its run opened
    with sqlite3.connect(sweep.root / "optuna.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")  # its last heartbeat
    launcher = run_in_process(sweep, lambda job: 0.6, 1, NO_WINNER_FILE)

    dead, retry = sweep.study_trials()
    assert (dead.number, dead.state.name, retry.state.name) == (flight.trial.number, "FAIL", "COMPLETE")
    assert retry.system_attrs["failed_trial"] == dead.number and retry.params == dead.params  # its configuration
    assert [job.trial for job in launcher.jobs] == [retry.number]  # the new worker's one trial: the retry
    parent, children = runs_of(sweep)
    dead_run, retry_run = (children[t.user_attrs[protocol.ATTR_RUN_ID]] for t in (dead, retry))
    assert dead_run.info.status == "KILLED" and dead_run.data.tags[protocol.FAILURE].startswith("its worker died")
    assert retry_run.data.tags[protocol.TAG_RETRY_OF] == str(dead.number)
    assert parent.info.status == "FINISHED"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_lost_inside_ask_is_failed_and_retried(sweep: Sweep) -> None:
    """A worker killed inside ``study.ask`` leaves a RUNNING trial with no heartbeat and no claim."""
    lost = another_worker(sweep, *QUICK).study.ask()
    time.sleep(0.3)  # its grace period
    run_in_process(sweep, lambda job: 0.6, 1, *QUICK)
    lost_again, retry = sweep.study_trials()
    assert (lost_again.number, lost_again.state.name) == (lost.number, "FAIL")
    assert retry.system_attrs["failed_trial"] == lost.number and retry.state.name == "COMPLETE"


def test_a_worker_ends_while_another_runs_a_trial_and_leaves_the_parent_to_it(
    sweep: Sweep, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker's trial, alive (its heartbeat goes on): this worker waits one grace period
    for it, then leaves; the study's parent stays RUNNING for the other worker to end."""
    other = another_worker(sweep, *QUICK)
    other.ask()
    with Heartbeat(other.joined.rdb, other.trial_ids_in_flight, 0.1), caplog.at_level(logging.INFO):
        run_in_process(sweep, lambda job: 0.6, 1, *QUICK)
    assert "waiting up to 0 s for 1 trial(s) of other workers" in caplog.text
    assert [t.state.name for t in sweep.study_trials()] == ["RUNNING", "COMPLETE"]
    assert runs_of(sweep)[0].info.status == "RUNNING"


def test_a_multi_objective_trial_is_told_its_measured_costs(sweep: Sweep, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # the root logger's level is ERROR once MLflow is imported
    client = sweep.client()

    def job(job: Job) -> float:
        if job.trial == 2:
            return job.log_run(client, 0.7)  # logged no latency
        return job.log_run(client, 0.6 + job.trial / 10, **{protocol.METRIC_LATENCY: 2.0 - job.trial})

    run_in_process(sweep, job, 3, "hydra/sweeper=optuna_pareto")
    trials = sweep.study_trials()
    assert [t.values for t in trials[:2]] == [[0.6, 2.0], [0.7, 1.0]]
    assert trials[2].state.name == "FAIL"
    assert trials[2].user_attrs[protocol.ATTR_FAILURE] == (
        "its run logged no finite cost/latency_ms (objective latency_ms)"
    )
    _, children = runs_of(sweep)
    on_front = [children[t.user_attrs[protocol.ATTR_RUN_ID]].data.tags[protocol.TAG_ON_FRONT] for t in trials[:2]]
    assert on_front == ["false", "true"]  # trial 1 is more accurate and faster
    assert winner_of(sweep.best) == (sweep.study, 1)  # the winner file: the most accurate trial
    # The compact pick (trial 1) is not registered, its data not MNIST's: said, and the sweep ends as it would.
    assert "compact pick: trial 1 not registered: trial 1 was trained on" in caplog.text


def test_a_new_study_starts_from_the_base_config_and_a_better_winner_file_is_kept(
    sweep: Sweep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # the root logger's level is ERROR once MLflow is imported
    sweep.best.parent.mkdir(parents=True)
    recorded = (
        "# @package _global_\n# winner: study=test trial=7 value=0.9999 run=abc\n"
        "model:\n  num_layers: 2\n  layer_size: 256\n  activation: relu\n  dropout: 0.1\n"
        "optimizer:\n  lr: 0.005\n  weight_decay: 0.001\ntrainer:\n  epochs: 10\n"
    )  # no data section: the base config's values fill in
    sweep.best.write_text(recorded)
    client = sweep.client()
    run_in_process(sweep, lambda job: job.log_run(client, 0.5), 2)
    base, winner = sweep.study_trials()
    assert base.user_attrs[protocol.ATTR_REFERENCE] == "base config"
    assert winner.user_attrs[protocol.ATTR_REFERENCE] == "winner file best_test.yaml"
    assert winner.params == {
        "model.num_layers": 2,
        "model.layer_size": 256,
        "model.activation": "relu",
        "model.dropout": 0.1,
        "optimizer.lr": 0.005,
        "optimizer.weight_decay": 0.001,
        "data.max_rotation": 0,
        "data.max_scale": 0.0,
    }  # fmt: skip (trainer.epochs is fixed by the command line here, so not searched)
    assert sweep.best.read_text() == recorded  # neither trial beat the 0.9999 it records: the file is kept
    assert f"{sweep.best} is kept: it holds trial 7 of study test, which scored 0.9999" in caplog.text
    assert runs_of(sweep)[0].data.tags[protocol.PARENT_WINNER_KEPT] == "best_test.yaml: 0.9999 (study test, trial 7)"


def test_a_winner_found_with_other_groups_selects_them(sweep: Sweep) -> None:
    """A sweep run with optimizer=sgd and schedule=constant: its winner file selects them itself."""
    client = sweep.client()
    run_in_process(sweep, lambda job: job.log_run(client, 0.5), 1, "optimizer=sgd", "schedule=constant")
    assert "- override /optimizer: sgd\n" in sweep.best.read_text()
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", ["model=best_test", "data=synthetic", f"hydra.searchpath=[file://{sweep.root}/conf]"])
    assert (cfg.optimizer._target_, cfg.schedule._target_) == ("torch.optim.SGD", "mlp.training.constant")
    assert cfg.optimizer.momentum == 0.9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("model.layerz=choice(1,2)",), "hydra.sweeper.params.model.layerz"),
        (("optimizer.lr=interval(0.1, 0.01)",), "search space: optimizer.lr=interval(0.1, 0.01): low 0.1 is"),
        (("hydra.sweeper.storage=garbage",), "hydra.sweeper.storage='garbage' is not accepted: expected an"),
        (("hydra.sweeper.storage=postgresql://nobody@127.0.0.1:9/optuna",), "hydra.sweeper.storage='postgresql"),
        (("tracking.uri=http://127.0.0.1:9",), "MLflow tracking at http://127.0.0.1:9 is not usable"),
    ],
)
def test_bad_sweep_input_stops_before_anything_is_written(sweep: Sweep, extra: tuple, message: str) -> None:
    """One line each (the command line's exit status and stderr: tests/test_sweep_inputs.py)."""
    with pytest.raises(UserError) as info:
        run_in_process(sweep, lambda job: 0.5, 2, *extra)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (sweep.root / "optuna.db").exists() or not optuna.get_all_study_names(sweep.storage)


def test_a_study_refuses_a_sweep_with_another_direction_or_fixed_config(sweep: Sweep) -> None:
    optuna.create_study(study_name="down", storage=sweep.storage, direction="minimize")
    with pytest.raises(UserError, match="^study 'down' maximises/minimises differently: it was created with direction"):
        run_in_process(sweep, lambda job: 0.5, 1, "hydra.sweeper.study_name=down")
    run_in_process(sweep, lambda job: 0.5, 1, NO_WINNER_FILE)
    with pytest.raises(UserError) as info:
        run_in_process(sweep, lambda job: 0.5, 1, NO_WINNER_FILE, "data.num_train=300")
    assert str(info.value) == (
        "study 'test' was created with another fixed config (data.num_train: study 600, now 300): "
        "its trials would not be comparable; use another hydra.sweeper.study_name"
    )
    assert len(sweep.study_trials()) == 1  # nothing written


def test_the_fixed_config_is_what_trials_run_with_and_older_records_still_join(sweep: Sweep) -> None:
    """The record holds the search space's fixed values (trainer.val_every: 5 in
    conf/hydra/sweeper/optuna.yaml), not the base config's (1). A study recorded before that (the
    base config's values), or before a key existed (its shipped default), is still joined; a
    real difference is refused, in either form."""
    cfg, arguments = sweep_config(sweep, 1)
    plan = Plan.of(cfg, arguments)
    created = join(plan, cfg)
    recorded = created.study.user_attrs["fixed_config"]
    assert cfg.trainer.val_every == 1 and recorded["trainer.val_every"] == 5  # the base config's, the trials'
    older = {k: v for k, v in fixed_config(cfg, set(plan.space.distributions)).items() if k != "data.max_shift"}
    assert older["trainer.val_every"] == 1
    created.study.set_user_attr("fixed_config", older)  # a study made before: the base config's values, a key fewer
    assert join(plan, cfg).parent_id == created.parent_id
    shifted, shifted_arguments = sweep_config(sweep, 1, "data.max_shift=2")  # the key the record lacks, not 0
    with pytest.raises(UserError, match=r"\(data\.max_shift: study '-', now 2, "):
        join(Plan.of(shifted, shifted_arguments), shifted)
    created.study.set_user_attr("fixed_config", recorded | {"trainer.val_every": 3})
    with pytest.raises(UserError, match=r"\(trainer\.val_every: study 3, now 5\)"):
        join(plan, cfg)
