"""The sweep's building blocks, in process: the search space read from Hydra's override
grammar, the per-trial sampler seed, the device a parallel trial takes, public APIs only."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlp.errors import UserError
from mlp.run.device import pick_device
from mlp.sweep.sampler import PerTrialSampler, trial_seed
from mlp.sweep.space import SearchSpace
from tests.helpers import ROOT, Sweep


def test_the_grammar_becomes_optunas_distributions() -> None:
    space = SearchSpace.parse(
        [
            "model.num_layers=range(2, 6)",
            "trainer.epochs=range(5, 21, step=5)",
            "model.activation=choice(relu, silu)",
            "model.dropout=interval(0.0, 0.3)",
            "optimizer.lr=tag(log, interval(5e-4, 1e-2))",
            "trainer.batch_size=256",
        ]
    )
    assert space.distributions == {
        "model.num_layers": IntDistribution(2, 5),
        "trainer.epochs": IntDistribution(5, 20, step=5),
        "model.activation": CategoricalDistribution(["relu", "silu"]),
        "model.dropout": FloatDistribution(0.0, 0.3),
        "optimizer.lr": FloatDistribution(5e-4, 1e-2, log=True),
    }
    assert space.fixed == ["trainer.batch_size=256"]
    assert space.contains({"model.num_layers": 4, "trainer.epochs": 20, "model.activation": "relu",
                           "model.dropout": 0.0, "optimizer.lr": 2e-3})  # fmt: skip
    assert not space.contains({"model.num_layers": 4, "trainer.epochs": 12, "model.activation": "relu",
                               "model.dropout": 0.0, "optimizer.lr": 2e-3})  # fmt: skip


def test_a_fixed_value_on_the_command_line_wins_over_the_search_space() -> None:
    space = SearchSpace.parse(["model.num_layers=range(2, 6)", "model.num_layers=3"])
    assert space.distributions == {} and space.fixed == ["model.num_layers=3"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("model.num_layers=interval(768, 128)", "low 768 is not below high 128"),
        ("optimizer.lr=interval(0.01, 0.01)", "low 0.01 is not below high 0.01"),
        ("model.num_layers=range(6, 2)", "an empty range"),
        ("optimizer.lr=tag(log, interval(0, 1))", "a log interval needs low > 0"),
        ("model.activation=choice(", "search space: "),
    ],
)
def test_a_bad_range_is_one_clear_error(line: str, why: str) -> None:
    with pytest.raises(UserError, match=r"search space: .*") as info:
        SearchSpace.parse([line])
    assert why in str(info.value) and "\n" not in str(info.value)


def test_suggested_overrides_use_the_public_suggest_api() -> None:
    space = SearchSpace.parse(["model.layer_size=choice(128, 256)", "optimizer.lr=tag(log, interval(1e-4, 1e-2))"])
    trial = optuna.create_study().ask()
    overrides = space.suggest(trial)
    assert overrides[0] in ("model.layer_size=128", "model.layer_size=256")
    assert float(overrides[1].split("=")[1]) == trial.params["optimizer.lr"]  # repr: every digit kept


def _asked(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    params = []
    for _ in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("c", ["a", "b", "c", "d"])
        study.tell(trial, trial.params["x"])
        params.append(trial.params)
    return params


def test_each_trial_has_its_own_seed_so_no_two_workers_ask_alike() -> None:
    make = lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)  # noqa: E731
    first, again = _asked(PerTrialSampler(make, 0), 6), _asked(PerTrialSampler(make, 0), 6)
    assert first == again  # reproducible per study
    assert len({p["x"] for p in first}) == 6  # never the same point twice
    # A process that starts a new sampler with the same seed (a resumed sweep, a second
    # worker) proposes trial 0's point only for trial 0: the seed follows the trial number.
    assert trial_seed(0, 0) != trial_seed(0, 1) and trial_seed(0, 1) != trial_seed(1, 1)
    fixed = _asked(make(0), 3)
    assert _asked(make(0), 3) == fixed  # what a fixed per-process seed does: the same points again


@pytest.mark.parametrize(
    ("name", "slot", "env", "count", "expected"),
    [
        ("auto", None, {}, 0, "cpu"),
        ("auto", None, {}, 1, "cuda"),
        ("auto", 3, {}, 2, "cuda:1"),  # the 4th trial of a parallel batch on a 2-GPU machine
        ("auto", 0, {"LOCAL_RANK": "2"}, 4, "cuda:2"),  # a worker per GPU, started by torchrun & co
        ("auto", None, {"SLURM_LOCALID": "5"}, 4, "cuda:1"),  # SLURM tasks on one node
        ("cpu", 1, {"LOCAL_RANK": "1"}, 4, "cpu"),  # an explicit device is kept
    ],
)
def test_each_worker_or_parallel_trial_takes_its_own_gpu(monkeypatch, name, slot, env, count, expected) -> None:
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert str(pick_device(name, slot, cuda_count=count)) == expected


LIBRARIES = ("hydra", "hydra_plugins.hydra_optuna_sweeper", "optuna", "mlflow")
# Public names that their library makes for you and documents as not to be built by hand.
INTERNAL_CONSTRUCTORS = {"optuna.trial.Trial", "optuna.Trial", "Trial"}


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def private_names(path: Path) -> list[str]:
    """Private (leading underscore, not dunder) names a file imports from those libraries, or
    reaches as attributes of anything."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIBRARIES):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [f"from {node.module} import {n.rsplit('.', 1)[1]}" for n in names if is_private(n)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(LIBRARIES) and is_private(a.name)]
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in INTERNAL_CONSTRUCTORS:
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_no_private_names_of_hydra_optuna_or_mlflow_in_the_project() -> None:
    files = [
        *(ROOT / "mlp").rglob("*.py"),
        *(ROOT / "hydra_plugins").rglob("*.py"),
        ROOT / "sweep.py",
        ROOT / "train.py",
    ]
    assert len(files) > 10
    assert {str(f.relative_to(ROOT)): private_names(f) for f in files if private_names(f)} == {}


def test_the_private_name_check_finds_them(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides\n"
        "from optuna.storages import _CachedStorage\nimport mlflow._x\ntrial._trial_id\nobj.__class__\n"
        "optuna.trial.Trial(study, 3)\n"
    )
    assert private_names(sample) == [
        "from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides",
        "from optuna.storages import _CachedStorage",
        "mlflow._x",
        "line 4: ._trial_id",
        "line 6: optuna.trial.Trial(...)",
    ]


@pytest.mark.slow
def test_a_configuration_the_study_has_is_not_run_again(tmp_path: Path, train_py, empty_store: Path) -> None:
    """A real sweep (train.py in process) over 2 configurations (every other key fixed), asked for 3
    trials: each runs once, proposals of a known configuration are skipped (FAIL), then the worker
    sees the space exhausted and starts no repeat. (The worker's logic case by case, with scripted
    jobs: tests/test_worker.py.)"""

    sweep = Sweep(tmp_path, "tiny-space", empty_store)
    space = ["model.num_layers=choice(2,3)", "model.layer_size=16", "model.activation=relu", "model.dropout=0.0",
             "optimizer.lr=0.002", "optimizer.weight_decay=0.01", "trainer.epochs=1", "data.max_rotation=0",
             "data.max_scale=0.0"]  # fmt: skip
    code, out, err = train_py(*sweep.args(3, *space))
    assert code == 0, err[-30:]
    trials = sweep.study_trials()
    ran = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["model.num_layers"] for t in ran) == [2, 3]  # each configuration once, no repeat
    skipped = [t for t in trials if t not in ran]
    assert all(t.state.name == "FAIL" and t.user_attrs["failure_reason"].startswith("duplicate of") for t in skipped)
    assert "every configuration of the search space has run: no new trial" in out + "\n".join(err)


@pytest.mark.parametrize(
    ("overrides", "study", "winner"),
    [
        ([], "mnist-mlp", "conf/model/best.yaml"),  # the default study owns best.yaml
        (["data=synthetic"], "synthetic-mlp", "conf/model/best_synthetic-mlp.yaml"),  # a smoke run never touches it
        (["hydra.sweeper.study_name=wide_2"], "wide_2", "conf/model/best_wide_2.yaml"),
        (["hydra.sweeper.study_name=wide-2"], "wide-2", "conf/model/best_wide-2.yaml"),  # another name, another file
    ],
)
def test_each_study_has_its_own_winner_file(overrides: list[str], study: str, winner: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        sweeper = compose("config", ["hydra/sweeper=optuna", *overrides], return_hydra_config=True).hydra.sweeper
    assert (sweeper.study_name, sweeper.best_config) == (study, str(ROOT / winner))
