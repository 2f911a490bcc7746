"""Bad sweep inputs and faults: sweeper settings, study names, other people's databases,
unreachable servers, winner files that are better than the trial offered, and a sweep
interrupted while it writes its report. In process where possible (seconds), on real SQLite
files, real sockets and a real MLflow store."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlp.errors import UserError
from mlp.run import winner_files
from mlp.sweep import export, report, settings
from mlp.sweep.finish import finish
from mlp.sweep.settings import Plan
from mlp.sweep.storage import open_storage
from mlp.sweep.study import join
from tests.helpers import CONF, TINY, Sweep, compose_cfg, run_sweep_py, seed_store


def sweeper_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF):
        return compose("config", ["hydra/sweeper=optuna", *TINY, *overrides], return_hydra_config=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foreign_db(path: Path) -> Path:
    """Another application's SQLite file."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (12.5)")
    return path


# -- every sweeper setting is checked before anything runs -------------------------------

NAME_RULE = "expected 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
CORES = "1 to 2 (this machine's cores), or -1 to -2"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.sweeper.study_name="], f"hydra.sweeper.study_name='' is not accepted: {NAME_RULE}"),
        (["hydra.sweeper.study_name=null"], f"hydra.sweeper.study_name=None is not accepted: {NAME_RULE}"),
        (["hydra.sweeper.study_name='a/b'"], "hydra.sweeper.study_name='a/b' is not accepted"),
        (["hydra.sweeper.study_name='..'"], "hydra.sweeper.study_name='..' is not accepted"),
        (["hydra.sweeper.study_name='a\\b'"], "hydra.sweeper.study_name='a\\\\b' is not accepted"),  # repr: a\b
        (['hydra.sweeper.study_name="it\'s"'], 'hydra.sweeper.study_name="it\'s" is not accepted'),
        (["hydra.sweeper.study_name='two words'"], "hydra.sweeper.study_name='two words' is not accepted"),
        ([f"hydra.sweeper.study_name={'x' * 65}"], f"hydra.sweeper.study_name='{'x' * 65}' is not accepted"),
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not accepted: expected an integer >= 1"),
        (["hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1 is not accepted: expected an integer >= 1"),
        (["hydra.sweeper.timeout=0"], "hydra.sweeper.timeout=0.0 is not accepted: expected seconds > 0, or null"),
        (["hydra.sweeper.timeout=-5"], "hydra.sweeper.timeout=-5.0 is not accepted: expected seconds > 0, or null"),
        (["hydra.sweeper.heartbeat_interval=0"], "hydra.sweeper.heartbeat_interval=0.0 is not accepted: expected a"),
        (["hydra.sweeper.heartbeat_interval=nan"], "hydra.sweeper.heartbeat_interval=nan is not accepted"),
        (
            ["hydra.sweeper.grace_period=10"],
            "hydra.sweeper.grace_period=10.0 is not accepted: expected a number of seconds > heartbeat_interval (10.0)",
        ),  # fmt: skip
        (["hydra.sweeper.max_failure_rate=-1"], "hydra.sweeper.max_failure_rate=-1.0 is not accepted: expected a fr"),
        (["hydra.sweeper.max_failure_rate=1.5"], "hydra.sweeper.max_failure_rate=1.5 is not accepted"),
        (["hydra.sweeper.max_retry=-1"], "hydra.sweeper.max_retry=-1 is not accepted: expected an integer >= 0"),
        (
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1000"],
            f"hydra.launcher.n_jobs=1000 is not accepted: expected {CORES}",
        ),  # fmt: skip
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], f"hydra.launcher.n_jobs=0 is not accepted: {''}"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-3"], "hydra.launcher.n_jobs=-3 is not accepted"),
        (["hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=3"], "hydra.sweeper.n_jobs=3 is not accepted"),
        (
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "hydra.sweeper.n_jobs=2"],
            "hydra.launcher.n_jobs=1 is not accepted: expected at least hydra.sweeper.n_jobs (2), or -1: each trial",
        ),  # fmt: skip
        (["hydra.sweeper.n_jobs=2"], "hydra.sweeper.n_jobs=2 is not accepted: expected 1 with Hydra's basic launcher"),
        (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 is not accepted"),
        (
            ["hydra.sweeper.best_config=/tmp"],
            "hydra.sweeper.best_config='/tmp' is not accepted: expected a new file or a winner file, in a writable "
            "folder, or null for no winner file (it is a folder)",
        ),
        (
            ["hydra.sweeper.best_config=/etc/hostname/best.yaml"],
            "hydra.sweeper.best_config='/etc/hostname/best.yaml' is not accepted",
        ),  # fmt: skip
        (["hydra/sweeper/pruner=median", "hydra.sweeper.storage=null"], "hydra.sweeper.storage=None is not accepted"),
        (
            ["hydra.sweeper.enqueue_trials=[{model.layers:3}]"],
            "hydra.sweeper.enqueue_trials[0].model.layers=3 is not accepted: expected a searched key: model.num_layers",
        ),
        (
            ["hydra.sweeper.enqueue_trials=[{model.layer_size:100}]"],
            "hydra.sweeper.enqueue_trials[0].model.layer_size=100 is not accepted: expected model.layer_size: one of "
            "256, 512, 768, 1024",
        ),
        (["hydra.sweeper.enqueue_trials=[3]"], "hydra.sweeper.enqueue_trials[0]=3 is not accepted: expected a mapping"),
    ],
)
def test_a_bad_sweeper_setting_is_one_line_naming_its_key(
    overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the accepted n_jobs depend on the cores
    cfg = sweeper_cfg(*overrides)
    with pytest.raises(UserError) as info:
        Plan.of(cfg, [])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "n_jobs"),
    [
        ([], 1),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], 2),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-2"], 1),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2),
        (["hydra/launcher=slurm", "hydra.sweeper.n_jobs=64"], 64),  # a cluster's launcher: not this machine's cores
        (["hydra.sweeper.timeout=null", "hydra.sweeper.max_failure_rate=0", "hydra.sweeper.max_retry=0"], 1),
        (["hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=1"], 1),
    ],
)
def test_good_sweeper_settings_are_taken(overrides: list[str], n_jobs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Plan.of(sweeper_cfg(*overrides), []).n_jobs == n_jobs


def test_a_refused_setting_writes_nothing(train_py, tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="refused")
    code, _, err = train_py(*sweep.args(0))  # in process: what `python train.py -m ...` prints and returns
    assert code == 2
    assert err == [
        "error: hydra.sweeper.n_trials=0 is not accepted: expected an integer >= 1: how many trials this worker runs"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no optuna.db, no mlruns/mlflow.db, no multirun/


# -- studies stay apart ------------------------------------------------------------------


def test_distinct_study_names_never_share_a_winner_file() -> None:
    names = ["mnist-mlp", "a_b", "a-b", "A_b", "wide2", "x" * 64]
    files = [winner_files.winner_file("/c", name) for name in names]
    assert len(set(files)) == len(names)
    assert files[:2] == ["/c/model/best.yaml", "/c/model/best_a_b.yaml"]
    for bad in ["a/b", "..", "a b", "it's", "", "x" * 65, "-x"]:
        with pytest.raises(UserError, match="hydra.sweeper.study_name=.* is not accepted"):
            settings.check_study_name(bad)


# -- a study made before names were checked, and trials joined to runs by run id ---------


@pytest.fixture
def study_with_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path):
    """A study of two complete trials (val 0.5 and 0.7) with their MLflow runs and config.yaml,
    as a sweep leaves them, in a temporary SQLite store and storage; named with a quote, as a
    study made before names were checked may be."""

    def make(name: str = "it's") -> tuple[str, MlflowClient, optuna.Study]:
        uri = f"sqlite:///{seed_store(tmp_path / 'mlruns', empty_store)}/mlflow.db"  # an empty MLflow store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(uri)
        experiment = client.create_experiment("mnist-mlp", artifact_location=(tmp_path / "artifacts").as_uri())
        parent = client.create_run(experiment, tags={"sweep.study": name}).info.run_id
        storage = f"sqlite:///{tmp_path}/optuna.db"
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("mlflow_parent_run_id", parent)
        trial_cfg = compose_cfg([*TINY, "trainer.val_every=5"])  # as the default sweep's trials validate
        config = OmegaConf.to_yaml(OmegaConf.to_container(trial_cfg, resolve=True, enum_to_str=True))
        for value in (0.5, 0.7):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "sweep.study": name})
            client.log_text(run.info.run_id, config, "config.yaml")
            client.log_metric(run.info.run_id, "test/acc", value - 0.01)
            client.set_tag(run.info.run_id, "hydra.choice.data", "synthetic")
            study.add_trial(
                optuna.trial.create_trial(
                    value=value, params={}, distributions={}, user_attrs={"mlflow_run_id": run.info.run_id}
                )  # fmt: skip
            )
        return storage, client, study

    return make


def test_sweep_py_reads_a_study_whose_name_has_a_quote(study_with_runs, capsys: pytest.CaptureFixture) -> None:
    storage, _, study = study_with_runs("it's")
    code, out, err = run_sweep_py(capsys, "leaderboard", "it's", "--all", "--storage", storage)
    assert code == 0, err
    rows = out.strip().splitlines()[2:]
    assert [row.split(" | ")[2] for row in rows] == ["0.7000", "0.5000"]
    assert study.trials[1].user_attrs["mlflow_run_id"] in rows[0] and "0.6900" in rows[0]  # joined by run id
    code, _, err = run_sweep_py(capsys, "export", "it's", "--storage", storage)
    assert code == 2 and err.strip() == (
        "error: study \"it's\" has no winner file of its own (a name is 1 to 64 letters, digits, '_' or '-', "
        "starting with a letter or digit (e.g. mnist-mlp)): give --out"
    )


# -- sweep.py export follows the sweep's winner rule -------------------------------------


SYNTHETIC = "data=synthetic val_size=100 split_seed=0"  # what study_with_runs' trials were trained on


def winner_text(study: str, value: float, data: str = SYNTHETIC) -> str:
    header = f"# @package _global_\n# winner: study={study} trial=3 value={value} run=abc {data}\n"
    return header + "model:\n  num_layers: 4\n"


def test_export_never_replaces_a_better_winner_without_replace(
    study_with_runs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    storage, client, study = study_with_runs("smoke")
    best = tmp_path / "conf" / "model" / "best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text(winner_text("tpe-1", 0.9922))
    before = sha256(best)
    code, out, err = run_sweep_py(capsys, "export", "smoke", "--out", str(best), "--storage", storage)
    assert code == 2 and err.count("\n") == 1 and not out
    assert err == (
        f"error: {best} is kept: it holds trial 3 of study tpe-1, which scored 0.9922; trial 1 of study smoke "
        "scored 0.7000, no better (--replace replaces it)\n"
    )
    assert sha256(best) == before and not list(best.parent.glob(".*.part"))

    code, out, err = run_sweep_py(capsys, "export", "smoke", "--out", str(best), "--replace", "--storage", storage)
    assert code == 0, err
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert out == (
        f"wrote {best}: trial 1, validation accuracy 0.7000; the version it replaced is artifact "
        f"previous/best.yaml of MLflow run {parent}\n"
    )
    recorded = winner_files.winner_record(best)
    assert (recorded.study, recorded.trial) == ("smoke", 1)
    assert recorded.trained_on == winner_files.TrainedOn("synthetic", 100, 0)
    kept = Path(client.download_artifacts(parent, "previous/best.yaml", str(tmp_path / "dl")))
    assert sha256(kept) == before  # the old version, byte for byte
    written = yaml.safe_load(best.read_text())
    assert {"override /data": "synthetic"} in written["defaults"] and written["data"]["name"] == "synthetic"
    assert written["trainer"]["val_every"] == 5  # model=best validates when its trial did

    code, out, _ = run_sweep_py(capsys, "export", "smoke", "--out", str(best), "--storage", storage)
    assert code == 0 and out == f"{best} already holds trial 1 of study smoke\n"
    code, _, err = run_sweep_py(capsys, "export", "smoke", "--trial", "0", "--out", str(best), "--storage", storage)
    assert code == 2 and "scored 0.7000; trial 0 of study smoke scored 0.5000, no better" in err  # worse: refused


def test_a_sweep_keeps_a_better_winner_file(study_with_runs, tmp_path: Path) -> None:
    _, client, study = study_with_runs("smoke")
    path = tmp_path / "best.yaml"
    path.write_text(winner_text("mnist-mlp", 0.9903))
    with pytest.raises(export.WinnerKept) as info:
        export.update_winner(study, study.best_trial, client, None, path)
    assert info.value.tag == "best.yaml: 0.9903 (study mnist-mlp, trial 3)"
    assert str(info.value).endswith("(hydra.sweeper.replace_winner=true replaces it)")
    assert path.read_text() == winner_text("mnist-mlp", 0.9903)


# -- other people's files are left as they are ---------------------------------------------


def test_another_applications_database_is_refused_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = foreign_db(tmp_path / "app.db")
    before = sha256(foreign)
    url = f"sqlite:///{foreign}"
    code, _, err = run_sweep_py(capsys, "list", "--storage", url)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --storage: {url} holds another application's tables (invoices), not an Optuna")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = sweeper_cfg(f"hydra.sweeper.storage={url}", f"tracking.dir={tmp_path}/mlruns")
    with pytest.raises(UserError, match=r"hydra\.sweeper\.storage: .* holds another application's tables"):
        join(Plan.of(cfg, []), cfg)
    assert sha256(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no tracking store made either


def test_mlflows_own_database_is_not_a_study_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    mlflow_db = seed_store(tmp_path / "mlruns", empty_store) / "mlflow.db"  # a store MLflow made, with its tables
    before = sha256(mlflow_db)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = sweeper_cfg(f"hydra.sweeper.storage=sqlite:///{mlflow_db}", f"tracking.dir={tmp_path}/elsewhere")
    with pytest.raises(UserError, match=r"holds another application's tables \(alembic_version, "):
        join(Plan.of(cfg, []), cfg)
    assert sha256(mlflow_db) == before


def test_read_only_commands_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for command in (["list"], ["leaderboard"], ["plots", "--out", str(tmp_path / "plots")], ["export"]):
        code, _, err = run_sweep_py(capsys, *command, "--storage", storage)
        assert code == 2 and err == f"error: no study storage at {storage}: run a sweep first " \
                                    "(python train.py -m hydra/sweeper=optuna)\n"  # fmt: skip
    (tmp_path / "optuna.db").touch()  # an empty file: no tables, and none made
    code, _, _ = run_sweep_py(capsys, "list", "--storage", storage)
    assert code == 2 and (tmp_path / "optuna.db").stat().st_size == 0
    (tmp_path / "optuna.db").unlink()
    optuna.create_study(study_name="s", storage=storage).add_trial(
        optuna.trial.create_trial(value=0.5, params={}, distributions={})
    )
    code, out, err = run_sweep_py(capsys, "leaderboard", "s", "--storage", storage)
    assert code == 0 and "| 0 | COMPLETE | 0.5000" in out
    assert err == f"(no MLflow tracking store at sqlite:///{tmp_path}/mlruns/mlflow.db: validation accuracy only)\n"
    code, _, err = run_sweep_py(capsys, "export", "s", "--out", str(tmp_path / "x.yaml"), "--storage", storage)
    assert code == 2 and err.startswith(f"error: no MLflow tracking store at sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]  # no mlruns/, no x.yaml


# -- unreachable servers: one line within seconds -----------------------------------------


def test_an_unreachable_tracking_server_is_one_line_at_once(
    study_with_runs, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _, _ = study_with_runs("s")
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    began = time.monotonic()
    code, _, err = run_sweep_py(capsys, "leaderboard", "s", "--storage", storage)
    assert time.monotonic() - began < 5
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: MLflow tracking at {uri} is not usable: its /health does not answer")


def test_a_storage_server_that_never_answers_fails_within_its_connect_timeout(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlp.sweep.storage.CONNECT_TIMEOUT", 1)
    with socket.socket() as server:  # accepts connections (the kernel does) and never says a word
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"postgresql://nobody@127.0.0.1:{server.getsockname()[1]}/optuna"
        began = time.monotonic()
        code, _, err = run_sweep_py(capsys, "list", "--storage", url)
        assert time.monotonic() - began < 8
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --storage='{url}' is not accepted: expected an Optuna RDB storage URL")


# -- interrupted or failing at the end: the parent run ends, the winner file stays whole ----


@pytest.fixture
def opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path):
    """A study joined (its parent run made) with two complete trials, its plan, and a winner file
    that records a better trial: what a sweep has when it reaches its end."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    best = tmp_path / "best_end.yaml"
    best.write_text(winner_text("end", 0.99))
    cfg = sweeper_cfg(
        "hydra.sweeper.study_name=end", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweeper.best_config={best}", f"tracking.dir={tmp_path}/mlruns",
    )  # fmt: skip
    plan = Plan.of(cfg, [])
    seed_store(tmp_path / "mlruns", empty_store)
    joined = join(plan, cfg)
    for value in (0.5, 0.4):
        joined.study.tell(joined.study.ask(), value)
    return joined, plan, best


def test_parameters_are_shown_at_a_readable_precision() -> None:
    assert report.shown(0.003996262389277941) == "0.003996" and report.shown(1e-05) == "1e-05"
    assert report.shown(512) == "512" and report.shown("leaky_relu") == "leaky_relu" and report.shown(0.0) == "0"


def test_the_parent_page_links_each_trial_to_its_run() -> None:
    """The leaderboard and the front on the parent's page: a trial with a run links to it; one
    without (its run lost) shows its number."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "params"])
    study.add_trials([optuna.trial.create_trial(values=[0.92 - i / 100, 10 - i]) for i in range(2)])
    info = SimpleNamespace(run_name="brave-owl", run_id="f" * 32, start_time=0, end_time=None)
    runs = {1: SimpleNamespace(info=info, data=SimpleNamespace(metrics={}, params={}))}
    page = report.description(study, report.leaderboard(study, runs), runs, "7")
    link = f"[brave-owl](#/experiments/7/runs/{'f' * 32})"
    assert page.count(link) == 2  # in the front and in the leaderboard
    assert "| 0 | 0.9200 |" in page and "| 1 | 0 | complete |" in page


def test_a_new_study_names_its_objective(opened) -> None:
    joined, _, _ = opened
    assert joined.study.metric_names == ["val_acc"]  # what optuna-dashboard shows instead of "Objective 0"


def test_interrupted_while_writing_the_report_ends_the_parent_killed(opened, monkeypatch: pytest.MonkeyPatch) -> None:
    joined, plan, best = opened
    before = sha256(best)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finish(joined, plan, "FINISHED")
    assert joined.client.get_run(joined.parent_id).info.status == "KILLED"
    assert sha256(best) == before and winner_files.winner_record(best).value == 0.99


def test_a_winner_file_that_cannot_be_written_ends_the_parent_failed(opened, tmp_path: Path) -> None:
    joined, plan, best = opened
    best.unlink()
    best.mkdir()  # became a folder while the sweep ran
    with pytest.raises(UserError, match=f"cannot write {best}: it is a folder"):
        finish(joined, plan, "FINISHED")
    assert joined.client.get_run(joined.parent_id).info.status == "FAILED"


def test_a_sqlite_storage_takes_the_write_lock_as_a_transaction_begins(tmp_path: Path) -> None:
    """Two workers cannot both read the same waiting trial as WAITING and both claim it: a
    transaction that only reads, so far, already holds the file's write lock."""
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    with storage.engine.begin() as reading:
        reading.execute(sqlalchemy.text("SELECT count(*) FROM trials"))
        other = sqlite3.connect(tmp_path / "optuna.db", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")  # another worker's claim waits for this one
        other.close()
    optuna.create_study(storage=storage, study_name="after")  # and Optuna works through it as before
