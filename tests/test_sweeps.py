"""Sweeps through the real command line: tiny synthetic data, 1 epoch, MLflow and the study
in a temporary folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir

from mlp.errors import UserError
from mlp.run.winner_files import winner_record
from mlp.sweep.settings import Plan, fixed_config
from mlp.sweep.study import join
from tests.helpers import CONF, ROOT, TINY, Sweep, run_train, seed_store, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A study of 3 trials: a sweep of 2, then the same command again for 1 more."""
    sweep = Sweep(tmp_path_factory.mktemp("sweep"))
    sweep.run(2)
    sweep.first_params = [t.params for t in sweep.study_trials()]
    sweep.first_winner = sweep.best.read_text()
    sweep.run(1)
    return sweep


def test_running_again_continues_the_study_with_new_configurations(swept: Sweep) -> None:
    trials = swept.study_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.params for t in trials[:2]] == swept.first_params  # kept
    assert trials[2].params not in swept.first_params  # not asked again
    assert trials[0].user_attrs["reference"] == "base config"  # a new study starts from the defaults
    assert trials[0].params["model.num_layers"] == 4 and trials[0].params["model.activation"] == "leaky_relu"
    study = optuna.load_study(study_name=swept.study, storage=swept.storage)
    assert study.user_attrs["fixed_config"]["data.name"] == "synthetic"


def test_one_parent_run_per_study_and_a_child_per_trial(swept: Sweep) -> None:
    trials = swept.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    (parent,) = [r for r in swept.runs("parent") if r.data.tags.get("sweep.role") == "parent"]
    assert parent.info.status == "FINISHED"
    children = {c.info.run_id: c for c in swept.runs("child")}
    assert len(children) == 3 and {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    client = swept.client()
    for trial in trials:
        child = children[trial.user_attrs["mlflow_run_id"]]  # the trial knows its run
        assert child.data.tags["sweep.trial"] == str(trial.number)
        assert child.info.run_name.startswith(f"trial-{trial.number:03d} mlp-")
        assert {"confusion_matrix.png", "confusion_matrix.csv"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)
        }
        assert child.data.metrics["val/acc"] == pytest.approx(trial.value)  # the objective is validation accuracy
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "study_fixed_config.json"} <= parent_files
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")} >= {"optuna/optimization_history.png"}
    assert parent.data.metrics["best/val_acc"] == max(t.value for t in trials)
    assert parent.data.metrics["trials_complete"] == 3


def test_winner_file_holds_the_best_trial_and_reproduces_it(swept: Sweep) -> None:
    best = max(swept.study_trials(), key=lambda t: t.value)
    text = swept.best.read_text()
    assert text.startswith("# @package _global_")
    recorded = winner_record(swept.best)
    assert (recorded.study, recorded.trial) == (swept.study, best.number)
    if best.number < 2:  # the third trial did not win: the file was left as it was
        assert text == swept.first_winner
    values = yaml.safe_load(text)
    for key, value in best.params.items():
        section, name = key.split(".")
        assert values[section][name] == pytest.approx(value), key

    done = run_train(
        f"model=best_{swept.study}", "data=synthetic", f"hydra.searchpath=[file://{swept.root}/conf]",
        f"tracking.dir={swept.mlruns}", "tracking.log_model=false", f"hydra.run.dir={swept.root}/rerun", cwd=swept.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rerun = [r for r in swept.runs("parent") if "sweep.role" not in r.data.tags]
    assert len(rerun) == 1
    assert rerun[0].data.metrics["val/acc"] == best.value  # the same, to every digit


def test_sweep_py_leaderboard_list_and_export(swept: Sweep) -> None:
    listed = swept.sweep_py("list")
    assert listed.returncode == 0 and "test: 3 complete, 0 failed" in listed.stdout
    board = swept.sweep_py("leaderboard", "test", "--top", "2", "--all")
    assert board.returncode == 0, board.stderr
    lines = board.stdout.strip().splitlines()
    assert lines[0].startswith("| trial | state | val_acc | test_acc") and len(lines) == 4
    best = max(swept.study_trials(), key=lambda t: t.value)
    assert lines[2].startswith(f"| {best.number} | COMPLETE | {best.value:.4f}")
    assert best.user_attrs["mlflow_run_id"] in lines[2]  # joined by the run id stored on the trial
    narrow = swept.sweep_py("leaderboard", "test").stdout.strip().splitlines()
    assert narrow[0] == (
        "| trial | state | val_acc | test_acc | epochs | num_layers | layer_size | activation | dropout | lr "
        "| weight_decay | rotation | scale |"
    )
    assert max(map(len, narrow)) < 140 and len(narrow) == 5
    out = swept.root / "exported.yaml"
    export = swept.sweep_py("export", "test", "--trial", "1", "--out", str(out))
    assert export.returncode == 0, export.stderr
    trial = swept.study_trials()[1]
    values = yaml.safe_load(out.read_text())
    assert values["model"]["num_layers"] == trial.params["model.num_layers"]
    recorded = winner_record(out)
    assert (recorded.study, recorded.trial) == ("test", 1)
    missing = swept.sweep_py("leaderboard", "nope")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"error: no study 'nope' in {swept.storage}; studies there: test"
    )
    none = swept.sweep_py("leaderboard", "test", "--top", "0")
    assert none.returncode == 2 and "--top: expected a whole number >= 1, got '0'" in none.stderr
    no_trial = swept.sweep_py("export", "test", "--trial", "99", "--out", str(out))
    assert no_trial.returncode == 2 and no_trial.stderr.strip() == "error: study 'test' has no trial 99 (trials 0 to 2)"
    folder = swept.sweep_py("export", "test", "--out", str(swept.root))
    assert folder.returncode == 2 and folder.stderr.strip().startswith(f"error: cannot write {swept.root}: ")
    assert not list(swept.root.glob(".*.part"))  # no stray temporary file


def test_a_study_refuses_a_sweep_with_another_fixed_config(swept: Sweep) -> None:
    done = run_train(*swept.args(1, "data.num_train=300"), cwd=swept.root)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: study 'test' was created with another fixed config (data.num_train: study 600, now 300): "
        "its trials would not be comparable; use another hydra.sweeper.study_name"
    )
    assert len(swept.study_trials()) == 3  # nothing written


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="fail")
    sweep.run(4, "optimizer=sgd", "schedule=constant", "optimizer.lr=choice(0.01,1e30)")
    states = {t.params["optimizer.lr"]: t.state.name for t in sweep.study_trials()}
    assert states == {0.01: "COMPLETE", 1e30: "FAIL"}
    failed = [c for c in sweep.runs("child") if c.info.status == "FAILED"]
    assert failed and all("non-finite" in c.data.tags["failure_reason"] for c in failed)
    assert [t.user_attrs["failure_reason"] for t in sweep.study_trials() if t.state.name == "FAIL"][0].startswith(
        "DivergedError"
    )
    assert sweep.best.exists()  # written from the trials that completed
    # The winner was found with SGD and a constant schedule: its file selects them itself.
    from tests.helpers import compose_cfg

    assert "- override /optimizer: sgd\n" in sweep.best.read_text()
    cfg = compose_cfg(["model=best_fail", "data=synthetic", f"hydra.searchpath=[file://{tmp_path}/conf]"])
    assert (cfg.optimizer._target_, cfg.schedule._target_) == ("torch.optim.SGD", "mlp.training.constant")
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("model.layerz=choice(1,2)",), "error: hydra.sweeper.params.model.layerz"),
        (("optimizer.lr=interval(0.1, 0.01)",), "error: search space: optimizer.lr=interval(0.1, 0.01): low 0.1 is"),
        (("hydra.sweeper.storage=garbage",), "error: hydra.sweeper.storage='garbage' is not accepted: expected an"),
        (("hydra.sweeper.storage=postgresql://nobody@127.0.0.1:9/optuna",), "error: hydra.sweeper.storage='postgresql"),
        (("tracking.uri=http://127.0.0.1:9",), "error: MLflow tracking at http://127.0.0.1:9 is not usable"),
    ],
)
def test_bad_sweep_input_stops_before_anything_is_written(tmp_path: Path, extra: tuple, message: str) -> None:
    sweep = Sweep(tmp_path, study="bad")
    done = run_train(*sweep.args(2, *extra), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(message), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(sweep.storage)


def test_a_study_with_another_direction_is_refused(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="down")
    optuna.create_study(study_name="down", storage=sweep.storage, direction="minimize")
    done = run_train(*sweep.args(1), cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: study 'down' maximises/minimises differently: it was created with direction minimize")
    )
    assert not sweep.study_trials()


def test_a_sweep_where_no_trial_completes_ends_with_one_clear_line(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="none-complete")
    done = run_train(*sweep.args(1, "optimizer=sgd", "schedule=constant", "optimizer.lr=1e30"), cwd=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of study 'none-complete' completed (1 failed, 0 pruned)"), done.stderr
    assert "Traceback" not in done.stderr
    assert [t.state.name for t in sweep.study_trials()] == ["FAIL"]
    (parent,) = sweep.runs("parent")
    assert parent.info.status == "FINISHED"  # the study's parent: its sweep ran; the trial's run says FAILED
    assert not sweep.best.exists()


def test_sigint_ends_a_sweep_with_its_trial_fail_and_its_runs_killed(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="stopped")
    # As from a terminal: a shell's background job (CI may run us as one) starts with SIGINT ignored.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *sweep.args(3, "trainer.epochs=200")],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    job_dir = tmp_path / "multirun" / "0" / ".hydra"  # Hydra made the first trial's folder: it is training
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not job_dir.exists():
        time.sleep(0.2)
    time.sleep(2.0)  # into the epochs
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGINT (Ctrl-C)")
    assert "Traceback" not in stderr
    (trial,) = sweep.study_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["failure_reason"] == "interrupted"
    (child,) = sweep.runs("child")
    (parent,) = sweep.runs("parent")
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"


def test_a_timeout_stops_starting_trials(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="budget")
    done = sweep.run(50, "hydra.sweeper.timeout=0.5")
    trials = sweep.study_trials()
    assert 1 <= len(trials) < 50 and {t.state.name for t in trials} == {"COMPLETE"}
    assert "timeout of 0.5 s reached" in done.stderr + done.stdout


def test_a_new_study_starts_from_the_base_config_and_the_winner_file(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="seeded")
    sweep.best.parent.mkdir(parents=True)
    recorded = (
        "# @package _global_\n"
        "# winner: study=seeded trial=7 value=0.9999 run=abc data=synthetic val_size=100 split_seed=0\n"
        "model:\n  num_layers: 2\n  layer_size: 256\n  activation: relu\n  dropout: 0.1\n"
        "optimizer:\n  lr: 0.005\n  weight_decay: 0.001\ntrainer:\n  epochs: 10\n"
    )  # no data section: the base config's values fill in
    sweep.best.write_text(recorded)
    done = sweep.run(2, "hydra/sweeper/pruner=none")
    base, winner = sweep.study_trials()
    assert base.user_attrs["reference"] == "base config"
    assert winner.user_attrs["reference"] == "winner file best_seeded.yaml"
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
    assert f"{sweep.best} is kept: it holds trial 7 of study seeded, which scored 0.9999" in done.stderr + done.stdout
    (parent,) = sweep.runs("parent")
    assert parent.data.tags["winner.kept"] == "best_seeded.yaml: 0.9999 (study seeded, trial 7)"


def test_the_fixed_config_is_what_trials_run_with_and_older_records_still_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    """The record holds the search space's fixed values (trainer.val_every: 5 in
    conf/hydra/sweeper/optuna.yaml), not the base config's (1). A study recorded before that (the
    base config's values), or before a key existed (its shipped default), is still joined; a
    real difference is refused, in either form."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    seed_store(tmp_path / "mlruns", empty_store)

    def cfg_of(*overrides: str):
        where = [f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", f"tracking.dir={tmp_path}/mlruns"]
        with initialize_config_dir(config_dir=CONF):
            extra = ["hydra/sweeper=optuna", *TINY, "hydra.sweeper.study_name=rec", *where, *overrides]
            return compose("config", extra, return_hydra_config=True)

    cfg = cfg_of()
    plan = Plan.of(cfg, [])
    created = join(plan, cfg)
    recorded = created.study.user_attrs["fixed_config"]
    assert cfg.trainer.val_every == 1 and recorded["trainer.val_every"] == 5  # the base config's, the trials'
    older = {k: v for k, v in fixed_config(cfg, set(plan.space.distributions)).items() if k != "data.max_shift"}
    assert older["trainer.val_every"] == 1
    created.study.set_user_attr("fixed_config", older)  # a study made before: the base config's values, a key fewer
    assert join(plan, cfg).parent_id == created.parent_id
    shifted = cfg_of("data.max_shift=2")  # the key the record lacks, at another value than synthetic.yaml's 0
    with pytest.raises(UserError, match=r"\(data\.max_shift: study '-', now 2, "):
        join(Plan.of(shifted, []), shifted)
    created.study.set_user_attr("fixed_config", recorded | {"trainer.val_every": 3})
    with pytest.raises(UserError, match=r"\(trainer\.val_every: study 3, now 5\)"):
        join(plan, cfg)
