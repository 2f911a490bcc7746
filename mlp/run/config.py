"""Typed config schema, registered in Hydra's ConfigStore, and the checks on its values.

The YAML files under conf/ extend these dataclasses, so an unknown key or a value of the
wrong type fails when the config is composed; ``validate`` then checks ranges and names
before any data is loaded. Defaults live in the YAML files, next to their comments.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mlp import PROJECT_ROOT
from mlp.errors import ConfigError, UserError, accepted_keys
from mlp.run import hydra_job
from mlp.run.data import pool_size
from mlp.run.model import ACTIVATIONS, parameter_count
from mlp.run.winner_files import chosen_winner, winner_file

GROUPS = ("model", "optimizer", "schedule", "data", "trainer")  # the config groups of one run


# The activations the model knows, as an Enum: OmegaConf refuses any other name when the
# config is composed and lists these. A StrEnum member is also its name as a str.
Activation = StrEnum("Activation", {name: name for name in ACTIVATIONS})


class Precision(StrEnum):
    auto = "auto"  # bf16 where the hardware computes in it natively (see mlp.run.device.pick_precision), else fp32
    fp32 = "fp32"  # float32 throughout
    bf16 = "bf16"  # forward pass under bfloat16 autocast; weights and updates float32


class DropoutMasks(StrEnum):
    bits = "bits"  # mlp.run.model.Dropout: 16-bit random words against a threshold (a fifth of torch's cost)
    torch = "torch"  # torch's nn.Dropout (a float per element): what winner files trained before 2026-12-06 used


@dataclass
class ModelConfig:
    num_layers: int = MISSING
    layer_size: int = MISSING
    activation: Activation = MISSING
    dropout: float = MISSING
    dropout_masks: DropoutMasks = DropoutMasks.bits


@dataclass
class OptimizerConfig:
    """A torch.optim optimizer: ``_target_`` and its arguments (the parameters come at build time)."""

    _target_: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    fused: bool = MISSING


@dataclass
class AdamWConfig(OptimizerConfig):
    betas: list[float] = MISSING


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class ScheduleConfig:
    """A function of mlp.run.training that makes a per-step scheduler: (optimizer, total_steps, ...)."""

    _target_: str = MISSING


@dataclass
class OneCycleConfig(ScheduleConfig):
    warmup: float = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    max_shift: int = MISSING
    max_rotation: float = MISSING
    max_scale: float = MISSING
    elastic_alpha: float = MISSING
    elastic_sigma: float = MISSING


@dataclass
class MnistConfig(DataConfig):
    root: str = MISSING


@dataclass
class SyntheticConfig(DataConfig):
    num_train: int = MISSING
    num_test: int = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    device: str = MISSING
    threads: int = MISSING
    deterministic: bool = MISSING
    precision: Precision = MISSING
    val_every: int = MISSING
    progress: bool = MISSING


@dataclass
class TrackingConfig:
    experiment: str = MISSING
    uri: str | None = MISSING
    dir: str = MISSING
    log_model: bool = MISSING
    register: bool | None = MISSING
    registered_model: str = MISSING
    run_name: str | None = MISSING


@dataclass
class SweepConfig:
    study: str | None = None
    trial: int | None = None
    run_id: str | None = None
    storage: str | None = None
    slot: int | None = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def _project_root() -> str:
    return str(PROJECT_ROOT)


def joblib_count(n_jobs: int) -> int:
    """Joblib's n_jobs as a count: itself when positive, -1 every core, -2 all but one, ... (0 and
    values below minus the cores give less than 1)."""
    return n_jobs if n_jobs > 0 else (os.cpu_count() or 1) + 1 + n_jobs


def _parallel_jobs(n_jobs: int) -> int:
    return max(1, joblib_count(n_jobs))


def _winner_file(study_name: str) -> str:
    return winner_file(str(PROJECT_ROOT / "conf"), study_name)


def store_schemas() -> None:
    """Put the schemas in the ConfigStore; conf/ files name them in their defaults lists."""
    OmegaConf.register_resolver("project_root", _project_root, replace=True)
    OmegaConf.register_resolver("parallel_jobs", _parallel_jobs, replace=True)
    OmegaConf.register_resolver("winner_file", _winner_file, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # At the top level, not in the groups they type: `train.py --help` lists only real options.
    # conf/<group>/*.yaml extend them with `- /<name>@_here_`.
    for name, node in (
        ("mlp_schema", ModelConfig),
        ("adamw_schema", AdamWConfig),
        ("sgd_schema", SGDConfig),
        ("schedule_schema", ScheduleConfig),
        ("onecycle_schema", OneCycleConfig),
        ("mnist_schema", MnistConfig),
        ("synthetic_schema", SyntheticConfig),
        ("trainer_schema", TrainerConfig),
    ):
        cs.store(name=name, node=node)


store_schemas()


def _check(cfg: DictConfig, key: str, ok: bool, accepted: str) -> None:
    if not ok:
        raise ConfigError(key, OmegaConf.select(cfg, key), accepted)


def _check_keys(node: DictConfig, prefix: str = "") -> None:
    """Hydra's ``+key=value`` adds a key even to a typed group (it lifts the struct flag), and
    nothing would read it: ``+trainer.epoch=5`` (a typo) would train the default epochs."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    known = {f.name for f in dataclasses.fields(schema)}
    for key, child in node.items_ex(resolve=False):
        if not prefix and key == "hydra":  # Hydra's own node (a config composed with it): Hydra checks it
            continue
        if key not in known:
            raise UserError(
                f"{prefix}{key}: Key {key!r} not in {schema.__name__!r} (added with +, it would be ignored)"
                f"{accepted_keys(schema)}"
            )
        if OmegaConf.is_dict(child):
            _check_keys(child, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range; then check that the
    run fits in memory and that its tracking folder can be written."""
    from mlp.run.tracking import check_tracking_dir  # MLflow takes seconds to load: only when a run is checked

    _check_keys(cfg)
    _check_model_and_optimizer(cfg)
    _check_trainer_and_tracking(cfg)
    pool = _check_data(cfg)
    _check_memory(cfg, pool)
    check_tracking_dir(cfg.tracking)  # the store's own checks come when the run opens it


def _check_model_and_optimizer(cfg: DictConfig) -> None:
    m, o = cfg.model, cfg.optimizer
    _check(cfg, "model.num_layers", m.num_layers >= 1, "an integer >= 1")
    _check(cfg, "model.layer_size", m.layer_size >= 1, "an integer >= 1")
    _check(cfg, "model.dropout", 0 <= m.dropout < 1, "a probability in [0, 1)")
    _check(cfg, "optimizer.lr", 0 < o.lr < math.inf, "a finite number > 0")
    _check(cfg, "optimizer.weight_decay", 0 <= o.weight_decay < math.inf, "a finite number >= 0")
    if "betas" in o:
        _check(
            cfg,
            "optimizer.betas",
            len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
    if "warmup" in cfg.schedule:
        _check(cfg, "schedule.warmup", 0 < cfg.schedule.warmup < 1, "a fraction in (0, 1)")
    if "momentum" in o:
        _check(cfg, "optimizer.momentum", 0 <= o.momentum < 1, "a number in [0, 1)")
        _check(cfg, "optimizer.nesterov", not (o.nesterov and o.momentum == 0), "false when optimizer.momentum=0")


def _check_trainer_and_tracking(cfg: DictConfig) -> None:
    t = cfg.trainer
    _check(cfg, "trainer.epochs", t.epochs >= 1, "an integer >= 1")
    _check(cfg, "trainer.seed", 0 <= t.seed < 2**63, "an integer from 0 to 2**63 - 1")
    _check(cfg, "trainer.batch_size", t.batch_size >= 1, "an integer >= 1")
    _check(cfg, "trainer.val_every", t.val_every >= 1, "an integer >= 1 (1: validate after every epoch)")
    _check(cfg, "trainer.threads", t.threads >= 0, "an integer >= 0 (0: one per core)")
    _check(
        cfg,
        "trainer.device",
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None,
        "auto, cpu, cuda, cuda:N or mps",
    )
    _check(cfg, "tracking.experiment", bool(cfg.tracking.experiment.strip()), "a non-empty MLflow experiment name")
    _check(
        cfg,
        "tracking.register",
        not (cfg.tracking.register and not cfg.tracking.log_model),
        "false or null when tracking.log_model=false (only a logged model can be registered)",
    )
    _check(
        cfg,
        "tracking.registered_model",
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.tracking.registered_model) is not None,
        "a name of letters, digits, '_', '.', '-' (models:/<name>@champion)",
    )


def _check_data(cfg: DictConfig) -> int:
    """The data group's values in range; returns the number of training images it draws from."""
    d = cfg.data
    kind = "synthetic" if "num_train" in d else "mnist"
    if d.name != kind:
        _check_winner_data(d.name, kind)
    _check(cfg, "data.name", d.name == kind, f"{kind!r} for this data group (choose another with data=...)")
    if kind == "mnist":
        _check(cfg, "data.root", bool(str(d.root).strip()), "a folder for the MNIST files, e.g. the project's data/")
    _check(cfg, "data.split_seed", 0 <= d.split_seed < 2**63, "an integer from 0 to 2**63 - 1")
    pool = pool_size(d.name, d.get("num_train", 0))
    if kind == "synthetic":
        _check(cfg, "data.num_train", d.num_train >= 2, "an integer >= 2")
        _check(cfg, "data.num_test", d.num_test >= 1, "an integer >= 1")
    _check(cfg, "data.max_shift", 0 <= d.max_shift <= 8, "an integer from 0 (off) to 8 pixels")
    _check(cfg, "data.max_rotation", 0 <= d.max_rotation <= 45, "degrees from 0 (off) to 45")
    _check(cfg, "data.max_scale", 0 <= d.max_scale < 0.5, "a fraction from 0 (off) to below 0.5")
    _check(cfg, "data.elastic_alpha", 0 <= d.elastic_alpha <= 100, "pixels from 0 (off) to 100 (Simard: 34)")
    if d.elastic_alpha > 0:
        _check(
            cfg,
            "data.elastic_sigma",
            0 < d.elastic_sigma <= 28,
            "pixels, a number > 0 and at most 28 when data.elastic_alpha > 0 (Simard: 4)",
        )
    _check(cfg, "data.val_size", 1 <= d.val_size < pool, f"an integer from 1 to {pool - 1} ({pool} training images)")
    return pool


def _check_winner_data(name: str, kind: str) -> None:
    """A winner file beside another data group (``model=best data=synthetic``) sets data values of
    its own: say so, rather than that data.name does not fit the group."""
    found = chosen_winner(hydra_job.chosen("model"), hydra_job.config_folders())
    if found is None or found[1].trained_on is None or found[1].trained_on.data != name:
        return
    path = found[0]
    raise UserError(
        f"data={kind} does not fit model={path.stem}: {path} is a winner file, which selects its own data "
        f"(data.name: {name}, with the values its trial was scored on); leave data=... out"
    )


def _machine_memory(device: str) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a run on ``device`` lives in: the GPU's on CUDA (the
    smallest GPU's for auto), else RAM; None where unknown."""
    if torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        count = torch.cuda.device_count()
        indices = range(count) if device == "auto" else [int(device[5:] or 0)]
        if max(indices) >= count:
            return None  # a GPU the machine lacks: pick_device reports it
        return min(torch.cuda.get_device_properties(i).total_memory for i in indices), "GPU memory"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM"
    except (ValueError, OSError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _check_memory(cfg: DictConfig, pool: int) -> None:
    """Sizes that cannot fit are one line before anything is allocated (not an allocation error
    minutes later). The estimates are lower bounds, so a run that fits is never refused."""
    m, o, t, d = cfg.model, cfg.optimizer, cfg.trainer, cfg.data
    states = 2 if "betas" in o else int(o.get("momentum", 0) > 0)  # AdamW's two moments, SGD's momentum
    num_test = d.get("num_test", 10_000)
    parts = {  # what holds memory at once: keys that set its size, bytes, description
        "model": (
            f"model.num_layers={m.num_layers} model.layer_size={m.layer_size}",
            parameter_count(m.num_layers, m.layer_size) * 4 * (2 + states),
            "weights with their gradients and optimizer state",
        ),
        "batch": (
            f"trainer.batch_size={t.batch_size}",
            min(t.batch_size, pool - d.val_size) * m.layer_size * (m.num_layers - 1) * 4,
            "a batch's activations",
        ),
        "data": (
            f"data.num_train={pool} data.num_test={num_test}" if "num_test" in d else "data",
            (pool + num_test) * 28 * 28 * 5,
            "images as uint8 and float32",
        ),
    }
    need = sum(size for _, size, _ in parts.values())
    memory = _machine_memory(t.device)
    if memory is None or need <= memory[0]:
        return
    keys, _, _ = max(parts.values(), key=lambda part: part[1])
    detail = ", ".join(f"{what} {_gb(size)}" for _, size, what in parts.values())
    raise UserError(
        f"{keys} is not accepted: the run needs at least {_gb(need)} ({detail}), more than this machine's "
        f"{_gb(memory[0])} of {memory[1]}; expected smaller sizes"
    )
