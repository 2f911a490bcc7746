"""The real command line where the process is the point: a run's output in a subprocess, as a user
runs it; a signal to a process of its own (tests/forked.py); its one-line errors in process
(train.py run as __main__)."""

import logging
import re
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlp.cli import run_cli
from mlp.run import data, tracking
from tests import forked
from tests.helpers import ROOT, run_train, subprocess_env


@pytest.mark.slow
def test_train_py_runs_logs_and_prints_the_summary(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    done = run_train(
        "data=synthetic",
        "trainer.epochs=1",
        "tracking.log_model=false",
        f"tracking.dir={mlruns}",
        f"hydra.run.dir={tmp_path}/out",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", done.stdout).group(1)
    assert re.search(r"validation accuracy \d+\.\d\d%\s+test accuracy \d+\.\d\d%", done.stdout)
    assert f"mlflow ui --backend-store-uri sqlite:///{mlruns}/mlflow.db" in done.stdout
    assert f"runs/{run_id}?workflowType=machine_learning" in done.stdout
    run = MlflowClient(f"sqlite:///{mlruns}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["hydra.overrides"].startswith("data=synthetic trainer.epochs=1")
    assert (mlruns / "artifacts").is_dir()  # artifacts beside the DB, not in the working directory
    assert not (tmp_path / "mlruns" / "0").exists()


def test_corrupt_data_file_is_one_line_and_kept(train_py, tmp_path: Path) -> None:
    raw = data.raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0" * 1000)
    code, _, lines = train_py(f"data.root={tmp_path}/data")
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train-images-idx3-ubyte is corrupt" in lines[0]
    assert (raw / "train-images-idx3-ubyte").read_bytes() == b"\0" * 1000


def test_conflicting_hydra_flags_are_one_line(train_py) -> None:
    code, _, lines = train_py("-m", "--cfg", "job")
    assert code == 2
    assert lines == [
        "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified "
        "(python train.py --help lists the flags)"
    ]


@pytest.mark.slow
def test_sigterm_ends_a_single_run_killed_with_one_line(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    args = ["data=synthetic", "trainer.epochs=500", f"tracking.dir={mlruns}", f"hydra.run.dir={tmp_path}/out"]
    proc = forked.start(ROOT / "train.py", args, cwd=tmp_path, env=subprocess_env())  # a process of its own
    log = tmp_path / "out" / "train.log"  # Hydra's log of the run: the epochs are under way once it has one
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and "epoch  1/" not in (log.read_text() if log.exists() else "")
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("error: stopped by SIGTERM; the MLflow run(s) it had open ended KILLED")
    (run,) = MlflowClient(f"sqlite:///{mlruns}/mlflow.db").search_runs(["1"])
    # Seen once under load (3 test workers on 2 cores): RUNNING, with the line and status right.
    why = f"{run.info.status} {run.data.tags.get('failure_reason')!r}\n{stderr[-2000:]}\n{log.read_text()[-3000:]}"
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith("interrupted"), why


def test_an_interrupt_a_library_made_its_own_error_ends_the_run_killed_with_one_line(
    train_py, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.export, interrupted while it traces the model, may raise an AssertionError instead:
    the run still ends KILLED and the command with the interrupt's line (not FAILED, a traceback)."""

    def export_interrupted(*args: object) -> None:
        try:
            raise KeyboardInterrupt  # SIGTERM or Ctrl-C, in the middle of the export
        except KeyboardInterrupt:
            raise AssertionError from None  # what torch.export made of it (its context is still the interrupt)

    monkeypatch.setattr(tracking, "log_model", export_interrupted)
    code, _, lines = train_py("data=synthetic", "trainer.epochs=1", "trainer.device=cpu")
    assert code == 128 + signal.SIGINT
    assert lines[-1] == "error: stopped by SIGINT (Ctrl-C); the MLflow run(s) it had open ended KILLED"
    (run,) = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").search_runs(["1"])
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith("interrupted")


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: what any entry point does when Ctrl-C reaches it (a sweep's worker ends its
    trials and runs KILLED first: tests/test_worker.py)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")  # unset, and so again afterwards (run_cli sets it)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)  # run_cli sets it too
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # run_cli's SIGTERM handler: not for pytest's process

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_cli(interrupted)
    assert info.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == "error: stopped by SIGINT (Ctrl-C); the MLflow run(s) it had open ended KILLED\n"
