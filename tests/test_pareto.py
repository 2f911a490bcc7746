"""Multi-objective studies (hydra/sweeper=optuna_pareto): bad settings stop in one line before any
trial; the front, the winner file and the compact pick follow mlp.sweep.front's rule; a real sweep
on MNIST puts the front on its parent run, tags every trial's run, and moves the alias compact only
to a front trial within the stated distance."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import requests
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from mlp.errors import UserError
from mlp.sweep import front, protocol
from mlp.sweep.settings import Plan
from mlp.sweep.study import join
from tests.helpers import CONF, ROOT, TINY, Sweep, run_sweep_py
from tests.web import browser, running_dashboard

SCREENSHOT = ROOT / "outputs" / "browser" / "optuna_dashboard.png"  # docs/optuna_dashboard.png: a real study's


def pareto_cfg(preset: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF):
        return compose("config", [f"hydra/sweeper={preset}", *TINY, *overrides], return_hydra_config=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra/sweeper/pruner=median"], "hydra.sweeper.pruner='optuna.pruners.MedianPruner' is not accepted: "
         "expected none with several objectives: Optuna prunes single-objective studies only"),
        (["hydra.sweeper.direction=[maximize,minimize,minimize]"], "hydra.sweeper.direction=['maximize', 'minimize', "
         "'minimize'] is not accepted: expected one direction per objective: hydra.sweeper.objectives names 2"),
        (["hydra.sweeper.objectives=[val_acc,speed]"], "hydra.sweeper.objectives=['val_acc', 'speed'] is not "
         "accepted: expected distinct names among val_acc, params, latency_ms, train_seconds"),
        (["hydra.sweeper.objectives=[params,latency_ms]"], "hydra.sweeper.objectives=['params', 'latency_ms'] is not "
         "accepted: expected val_acc among them, maximized"),
        (["hydra.sweeper.direction=[minimize,minimize]"], "hydra.sweeper.objectives=['val_acc', 'latency_ms'] is not "
         "accepted: expected val_acc among them, maximized"),
        (["hydra.sweeper.compact_within=2"], "hydra.sweeper.compact_within=2.0 is not accepted: expected a "
         "validation accuracy distance from 0 to 1"),
        (["hydra.sweeper.direction=sideways"], "hydra.sweeper.direction=['sideways'] is not accepted: expected "
         "maximize or minimize"),
    ],
)  # fmt: skip
def test_a_bad_multi_objective_setting_is_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError) as info:
        Plan.of(pareto_cfg("optuna_pareto", *overrides), [])
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_the_default_sweep_keeps_one_objective() -> None:
    plan = Plan.of(pareto_cfg("optuna"), [])
    assert plan.objectives == ["val_acc"] and plan.directions == [optuna.study.StudyDirection.MAXIMIZE]
    with pytest.raises(UserError, match="one direction per objective: hydra.sweeper.objectives names 1 "):
        Plan.of(pareto_cfg("optuna", "hydra.sweeper.direction=[maximize,minimize]"), [])


@pytest.mark.parametrize(
    ("first", "then", "said"),
    [
        ("optuna_pareto", ["hydra.sweeper.objectives=[val_acc,params]"],
         "has other objectives: it was created with val_acc, latency_ms, this sweep asks val_acc, params (use "),
        ("optuna", ["hydra/sweeper=optuna_pareto"],
         "maximises/minimises differently: it was created with direction maximize, this sweep asks maximize, minimize"),
        ("optuna_pareto", ["hydra.sweeper.direction=[maximize,maximize]"],
         "it was created with direction maximize, minimize, this sweep asks maximize, maximize (use another "),
    ],
)  # fmt: skip
def test_a_resumed_study_with_other_objectives_stops_before_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, then: list[str], said: str
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    where = [f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=s",
             f"tracking.dir={tmp_path}/mlruns"]  # fmt: skip
    cfg = pareto_cfg(first, *where)
    join(Plan.of(cfg, []), cfg)
    cfg = pareto_cfg(first, *where, *then) if not then[0].startswith("hydra/") else pareto_cfg("optuna_pareto", *where)
    with pytest.raises(UserError) as info:
        join(Plan.of(cfg, []), cfg)
    assert str(info.value).startswith("study 's' ") and said in str(info.value) and "\n" not in str(info.value)
    assert not optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials


def made_study(points: list[tuple[float, float]]) -> optuna.Study:
    """A study of validation accuracy (max) against latency (min) with these trials."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "latency_ms"])
    for i, values in enumerate(points):
        study.add_trial(create_trial(values=list(values), params={"i": i}, distributions={"i": IntDistribution(0, 99)}))
    return study


def test_the_rule_winner_most_accurate_compact_cheapest_within_the_distance() -> None:
    #                     0: best       1: close, cheap  2: dominated  3: cheapest, far  4: close, cheaper still
    study = made_study([(0.990, 1.0), (0.9885, 0.30), (0.980, 0.9), (0.950, 0.05), (0.9881, 0.20)])
    assert [t.number for t in front.front(study)] == [0, 1, 4, 3]  # most accurate first; 2 is dominated
    assert front.most_accurate(study).number == 0
    assert front.compact_pick(study, 0.002).number == 4  # the cheapest within 0.2 points
    assert front.compact_pick(study, 0.0015).number == 1  # 4 is 0.19 points below: out
    assert front.compact_pick(study, 0.0).number == 0  # none may give anything up: the best itself
    assert front.compact_pick(study, 0.05).number == 3
    assert "not on the study's Pareto front (trials 0, 1, 4, 3)" in front.why_not_compact(study, study.trials[2], 0.002)
    assert "more than 0.002 below the front's best, 0.9900" in front.why_not_compact(study, study.trials[3], 0.002)
    assert front.why_not_compact(study, study.trials[4], 0.002) is None


def test_a_single_objective_study_has_no_compact_pick() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.9, params={"i": 0}, distributions={"i": IntDistribution(0, 9)}))
    assert front.compact_pick(study, 0.5) is None and front.most_accurate(study).number == 0
    assert "has one objective" in front.why_not_compact(study, study.trials[0], 0.5)


# Three trials of known standing on real MNIST (1 epoch): 0, a linear model (7,850 weights, ~86%);
# 1, 2x64 ReLU (50,890, ~93%); 2, 3x64 sigmoid at lr 1e-5 (55,050, chance): dominated by both.
ENQUEUED = (
    "hydra.sweeper.enqueue_trials=[{model.num_layers:1,model.layer_size:16,model.activation:relu,optimizer.lr:0.01},"
    "{model.num_layers:2,model.layer_size:64,model.activation:relu,optimizer.lr:0.01},"
    "{model.num_layers:3,model.layer_size:64,model.activation:sigmoid,optimizer.lr:1e-5}]"
)


@pytest.mark.slow
def test_a_pareto_sweep_shows_its_front_and_moves_compact_only_by_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, train_py, empty_store: Path
) -> None:
    s = Sweep(tmp_path, "pareto", empty_store)
    args = [
        a.replace("hydra/sweeper=optuna", "hydra/sweeper=optuna_pareto") for a in s.args(3) if a != "data=synthetic"
    ]
    code, _, err = train_py(  # in process: the command line's own tests are test_sweep_inputs'
        *args, "trainer.device=cpu", "hydra.sweeper.objectives=[val_acc,params]", "model.num_layers=range(1,4)",
        "model.layer_size=choice(16,64)", "model.activation=choice(relu,sigmoid)",
        "optimizer.lr=tag(log,interval(1e-5,1e-2))", ENQUEUED,
    )  # fmt: skip
    assert code == 0, err[-30:]
    study = optuna.load_study(study_name="pareto", storage=s.storage)
    assert [t.params["model.num_layers"] for t in study.trials] == [1, 2, 3]  # as enqueued
    assert [t.number for t in front.front(study)] == [1, 0]
    assert study.trials[0].values[1] == 7850 and study.trials[1].values[1] == 50890

    client = s.client()
    (parent,) = s.runs("parent")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"front.csv", "front.md", "leaderboard.md"} <= artifacts
    assert "optuna/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert parent.data.tags["mlflow.note.content"].startswith("**Pareto front** of val_acc, params: 2 trials")
    tags = {int(r.data.tags[protocol.TAG_TRIAL]): r.data.tags.get(protocol.TAG_ON_FRONT) for r in s.runs("child")}
    assert tags == {0: "true", 1: "true", 2: "false"}
    assert "trial=1 " in s.best.read_text().splitlines()[1]  # the winner file: the most accurate trial

    # the alias compact: the pick within 0.002 is trial 1 itself; never a dominated trial, nor one too far below
    version = client.get_model_version_by_alias("mnist-mlp", "compact")
    assert (version.tags["trial"], version.run_id) == ("1", study.trials[1].user_attrs[protocol.ATTR_RUN_ID])
    # sweep.py in process (its command line is tests/test_sweep_inputs.py's): what it reads and moves is the point
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    code, out, _ = run_sweep_py(capsys, "front", "pareto", "--storage", s.storage)
    assert code == 0 and "compact pick (within 0.002 of the best validation accuracy): trial 1" in out
    for trial, within, why in ((2, "0.5", "is not on the study's Pareto front"), (0, "0.002", "more than 0.002 below")):
        code, _, err = run_sweep_py(capsys, "compact", "pareto", "--trial", str(trial), "--within", within,
                                    "--storage", s.storage)  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and why in err, err
        assert client.get_model_version_by_alias("mnist-mlp", "compact").version == version.version
    code, _, err = run_sweep_py(capsys, "compact", "pareto", "--trial", "0", "--within", "0.1", "--storage", s.storage)
    assert code == 0, err
    now = client.get_model_version_by_alias("mnist-mlp", "compact")
    assert now.version != version.version and now.tags["trial"] == "0"
    assert (
        MlflowClient(client.tracking_uri).get_model_version_by_alias("mnist-mlp", "compact").run_id
        == (study.trials[0].user_attrs[protocol.ATTR_RUN_ID])
    )
    assert yaml.safe_load(s.best.read_text())["model"]["num_layers"] == 2

    # optuna-dashboard, reading the study's storage, shows the front under the objectives' names
    with running_dashboard(s.storage) as url, browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        listed = requests.get(f"{url}/api/studies", timeout=30).json()["study_summaries"]
        (study_id,) = [found["study_id"] for found in listed if found["study_name"] == "pareto"]
        page.goto(f"{url}/dashboard/studies/{study_id}")
        page.get_by_text("Objective Values").first.wait_for(timeout=60_000)  # the study loaded: its best trials
        text = page.inner_text("body")
        assert "Pareto Front\nObjective X:\nval_acc" in text and "Objective Y:\nparams" in text
        assert sorted(re.findall(r"Trial (\d+)\s+Objective Values", text)) == ["0", "1"]  # the front, not trial 2
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
