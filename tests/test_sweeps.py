"""One sweep through the real command line (`python train.py -m hydra/sweeper=optuna`, real jobs
on tiny synthetic data, MLflow and the study in a temporary folder): what the jobs log, the
winner file rerun with model=best, and sweep.py reading the study. The worker's logic runs in
process in tests/test_worker.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import Sweep, run_sweep_py, winner_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Sweep:
    """A study of 2 trials."""
    sweep = Sweep(tmp_path_factory.mktemp("sweep"), store=empty_store)
    sweep.run(2)
    return sweep


def test_one_parent_run_per_study_and_a_child_per_trial(swept: Sweep) -> None:
    trials = swept.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    (parent,) = [r for r in swept.runs("parent") if r.data.tags.get("sweep.role") == "parent"]
    assert parent.info.status == "FINISHED"
    children = {c.info.run_id: c for c in swept.runs("child")}
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    client = swept.client()
    for trial in trials:
        child = children[trial.user_attrs["mlflow_run_id"]]  # the trial knows its run; the job resumed it
        assert child.info.status == "FINISHED" and child.info.run_name.startswith(f"trial-{trial.number:03d} mlp-")
        assert {"confusion_matrix.png", "confusion_matrix.csv"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)
        }
        assert child.data.metrics["val/acc"] == pytest.approx(trial.value)  # the objective is validation accuracy
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")} >= {"optuna/optimization_history.png"}
    assert parent.data.metrics["best/val_acc"] == max(t.value for t in trials)


def test_the_winner_file_reproduces_the_best_trial(swept: Sweep, train_py) -> None:
    best = max(swept.study_trials(), key=lambda t: t.value)
    text = swept.best.read_text()
    assert text.startswith("# @package _global_") and winner_of(swept.best) == (swept.study, best.number)
    values = yaml.safe_load(text)
    for key, value in best.params.items():
        section, name = key.split(".")
        assert values[section][name] == pytest.approx(value), key

    code, _, err = train_py(  # in process: the README's test reruns its smoke winner as a command
        f"model=best_{swept.study}", "data=synthetic", f"hydra.searchpath=[file://{swept.root}/conf]",
        f"tracking.dir={swept.mlruns}", "tracking.log_model=false", f"hydra.run.dir={swept.root}/rerun",
    )  # fmt: skip
    assert code == 0, err[-30:]
    rerun = [r for r in swept.runs("parent") if "sweep.role" not in r.data.tags]
    assert len(rerun) == 1
    assert rerun[0].data.metrics["val/acc"] == best.value  # the same, to every digit


def test_sweep_py_lists_exports_and_refuses_in_one_line(
    swept: Sweep, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = swept.sweep_py("leaderboard", "test", "--top", "1", "--all")  # the command line itself, once
    assert board.returncode == 0, board.stderr
    lines = board.stdout.strip().splitlines()
    assert lines[0].startswith("| trial | state | val_acc | test_acc") and len(lines) == 3
    best = max(swept.study_trials(), key=lambda t: t.value)
    assert lines[2].startswith(f"| {best.number} | COMPLETE | {best.value:.4f}")
    assert best.user_attrs["mlflow_run_id"] in lines[2]  # joined by the run id stored on the trial

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{swept.mlruns}/mlflow.db")
    sweep_py = lambda *args: run_sweep_py(capsys, *args, "--storage", swept.storage)  # noqa: E731
    code, out, _ = sweep_py("list")
    assert code == 0 and "test: 2 complete, 0 failed" in out
    narrow = sweep_py("leaderboard", "test")[1].strip().splitlines()
    assert narrow[0] == (
        "| trial | state | val_acc | test_acc | epochs | num_layers | layer_size | activation | dropout | lr "
        "| weight_decay | rotation | scale |"
    )
    assert max(map(len, narrow)) < 140 and len(narrow) == 4
    out_file = swept.root / "exported.yaml"
    code, _, err = sweep_py("export", "test", "--trial", "1", "--out", str(out_file))
    assert code == 0, err
    trial = swept.study_trials()[1]
    assert yaml.safe_load(out_file.read_text())["model"]["num_layers"] == trial.params["model.num_layers"]
    assert winner_of(out_file) == ("test", 1)
    assert sweep_py("leaderboard", "nope")[::2] == (
        2,
        f"error: no study 'nope' in {swept.storage}; studies there: test\n",
    )
    code, _, err = sweep_py("leaderboard", "test", "--top", "0")
    assert code == 2 and "--top: expected a whole number >= 1, got '0'" in err
    assert sweep_py("export", "test", "--trial", "99", "--out", str(out_file))[::2] == (
        2, "error: study 'test' has no trial 99 (trials 0 to 1)\n"
    )  # fmt: skip
    code, _, err = sweep_py("export", "test", "--out", str(swept.root))
    assert code == 2 and err.startswith(f"error: cannot write {swept.root}: ")
    assert not list(swept.root.glob(".*.part"))  # no stray temporary file
    assert len(optuna.load_study(study_name="test", storage=swept.storage).trials) == 2  # nothing written
