from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from mlp.cli import one_line
from mlp.errors import ConfigError
from mlp.run.config import GROUPS, validate
from tests.helpers import ROOT, compose_cfg, run_train


def group_options() -> list[str]:
    return sorted(
        f"{path.parent.name}={path.stem}" for path in (ROOT / "conf").glob("*/*.yaml") if path.parent.name in GROUPS
    )


@pytest.mark.parametrize("option", group_options())
def test_every_group_option_composes_and_validates(option: str) -> None:
    cfg = compose_cfg([option])
    validate(cfg)
    group, name = option.split("=")
    assert cfg[group]  # the group is present and non-empty


def test_defaults_are_the_write_up() -> None:
    cfg = compose_cfg([])
    assert (cfg.model.num_layers, cfg.model.layer_size, cfg.model.activation) == (4, 512, "leaky_relu")
    assert cfg.model.dropout == 0
    assert (cfg.optimizer._target_, cfg.optimizer.weight_decay) == ("torch.optim.AdamW", 0.01)
    assert cfg.schedule._target_ == "mlp.training.onecycle"
    assert cfg.trainer.epochs == 20
    assert (cfg.data.name, cfg.data.val_size) == ("mnist", 10000)
    assert Path(cfg.data.root).is_absolute() and Path(cfg.tracking.dir).is_absolute()


BAD_VALUES = [
    ("model.num_layers=0", "model.num_layers", ">= 1"),
    ("optimizer.lr=-1", "optimizer.lr", "> 0"),
    ("trainer.epochs=0", "trainer.epochs", ">= 1"),
    ("data.val_size=60000", "data.val_size", "1 to 59999"),
    ("schedule.warmup=1.5", "schedule.warmup", "(0, 1)"),
    ("model.dropout=1.5", "model.dropout", "[0, 1)"),
    ("optimizer.lr=inf", "optimizer.lr", "a finite number > 0"),
    ("trainer.seed=100000000000000000000000", "trainer.seed", "0 to 2**63 - 1"),
    ("tracking.experiment=''", "tracking.experiment", "a non-empty MLflow experiment name"),
    ("trainer.val_every=0", "trainer.val_every", ">= 1"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay", "a finite number >= 0"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay", "a finite number >= 0"),
    ("optimizer.lr=nan", "optimizer.lr", "a finite number > 0"),
    ("optimizer.betas=[0.9]", "optimizer.betas", "two numbers in [0, 1)"),
    ("optimizer.betas=[1.0,0.999]", "optimizer.betas", "two numbers in [0, 1)"),
    ("optimizer.betas=[0.9,nan]", "optimizer.betas", "two numbers in [0, 1)"),
    ("schedule.warmup=nan", "schedule.warmup", "(0, 1)"),
]


@pytest.mark.parametrize(("override", "key", "accepted"), BAD_VALUES)
def test_bad_values_name_the_key_and_what_is_accepted(override: str, key: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg([override]))
    assert key in str(info.value) and accepted in str(info.value)


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ConfigError, match=r"^optimizer.nesterov=True is not accepted: expected false when"):
        validate(compose_cfg(["optimizer=sgd", "optimizer.momentum=0"]))
    validate(compose_cfg(["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false"]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.elastic_alpha=-1"], "data.elastic_alpha=-1.0 is not accepted: expected pixels from 0 (off) to 100"),
        (["data.elastic_alpha=inf"], "data.elastic_alpha=inf is not accepted: expected pixels from 0 (off) to 100"),
        (
            ["data.elastic_alpha=34", "data.elastic_sigma=0"],
            "data.elastic_sigma=0.0 is not accepted: expected pixels, a number > 0 and at most 28 "
            "when data.elastic_alpha > 0",
        ),
        (
            ["data=synthetic", "data.elastic_alpha=34", "data.elastic_sigma=-2"],
            "data.elastic_sigma=-2.0 is not accepted",
        ),
    ],
)
def test_bad_elastic_settings_are_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_elastic_settings_off_and_on_validate() -> None:
    cfg = compose_cfg([])
    assert (cfg.data.elastic_alpha, cfg.data.elastic_sigma) == (0, 4)  # off by default: runs reproduce
    validate(compose_cfg(["data.elastic_sigma=0"]))  # unused while alpha is 0
    validate(compose_cfg(["data.elastic_alpha=34", "data.elastic_sigma=4", "model=best"]))


def test_synthetic_val_size_is_checked_against_its_own_size() -> None:
    with pytest.raises(ConfigError, match=r"data.val_size.*1 to 599"):
        validate(compose_cfg(["data=synthetic", "data.val_size=600"]))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.layers=3", "model.layers: Key 'layers' not in 'ModelConfig'"),
        ("optimizer.momentum=0.9", "optimizer.momentum: Key 'momentum' not in 'AdamWConfig'"),
        ("model.num_layers=four", "model.num_layers: Value 'four' of type 'str' could not be converted to Integer"),
        ("trainer.precision=fp16", "trainer.precision: Invalid value 'fp16', expected one of [auto, fp32, bf16]"),
        (
            "model.dropout_masks=bernoulli",
            "model.dropout_masks: Invalid value 'bernoulli', expected one of [bits, torch]",
        ),
        (
            "model.activation=swish",
            "model.activation: Invalid value 'swish', expected one of "
            "[relu, leaky_relu, sigmoid, tanh, gelu, silu, elu]",
        ),
    ],
)
def test_unknown_keys_and_wrong_types_fail_at_composition(override: str, expected: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override])
    message = one_line(info.value)
    assert message.startswith(expected)
    assert "\n" not in message
    if "not in" in expected:
        assert "accepted keys:" in message


def test_a_group_chosen_against_the_winner_file_names_the_key_and_the_way_out(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()  # a winner found with AdamW, as a sweep writes it
    (tmp_path / "model" / "best_adamw.yaml").write_text(
        "# @package _global_\ndefaults:\n- override /optimizer: adamw\noptimizer:\n  betas: [0.9, 0.99]\n"
    )
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["optimizer=sgd", "model=best_adamw", f"hydra.searchpath=[file://{tmp_path}]"])
    assert one_line(info.value) == (
        "optimizer.betas: set by model/best_adamw, but the chosen optimizer (SGDConfig) has no such key "
        "(model/best_adamw is a winner file: it selects its own optimizer; leave optimizer=... out); "
        "accepted keys: _target_, lr, weight_decay, fused, momentum, nesterov"
    )


def test_invalid_yaml_in_a_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "broken.yaml").write_text("model:\n  num_layers: [1\n")
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever Hydra lets through, one_line must name it
        compose_cfg(["model=broken", f"hydra.searchpath=[file://{tmp_path}]"])
    assert one_line(info.value) == (
        f"invalid YAML in {tmp_path}/model/broken.yaml, line 3, column 1: did not find expected ',' or ']'"
    )


CLI_BAD_INPUT = [(o, k) for o, k, _ in BAD_VALUES[:4]] + [
    ("model.activation=swish", "model.activation"),
    ("model.layers=3", "model.layers"),
    ("model=resnet", "model/resnet"),
    ("+trainer.epoch=5", "trainer.epoch"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
    ("model.layer_size=1000000", "model.layer_size"),
]


@pytest.mark.parametrize(("override", "key"), CLI_BAD_INPUT)
def test_cli_reports_bad_input_in_one_line(train_py, override: str, key: str, tmp_path: Path) -> None:
    """train.py in process: what it prints and returns. The two kinds (refused as Hydra composes
    the config; refused by the run's own checks) cross a real process boundary below."""
    code, out, err = train_py(override)
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert not (tmp_path / "mlruns").exists()  # stopped before anything was logged


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "key"),
    [("model.activation=swish", "model.activation"), ("model.num_layers=0", "model.num_layers")],
    ids=["at composition", "by the run's checks"],
)
def test_cli_reports_bad_input_in_one_line_in_a_real_process(override: str, key: str, tmp_path: Path) -> None:
    done = run_train(override, f"tracking.dir={tmp_path}/mlruns", f"hydra.run.dir={tmp_path}/out")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "mlruns").exists()  # stopped before anything was logged
