"""One run, end to end: config -> data -> model -> training -> test -> MLflow.

``run(cfg)`` is what ``train.py`` calls (once, or once per sweep trial) and what tests call
in-process; it returns the run's metrics and where it was logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mlp import config, data, plots, registry, tracking, training
from mlp.config import GROUPS
from mlp.errors import ConfigError, in_sweep
from mlp.model import MLP, DigitRecognizer, describe
from mlp.trial import TrialLink

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    val_acc: float
    test_acc: float
    run_id: str
    experiment_id: str
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    registered: registry.Registered | None = None
    not_registered: str = ""  # why a winner file's model was not registered by default

    def summary(self) -> str:
        command, link = tracking.ui_hint(self.tracking_uri, self.experiment_id, self.run_id)
        registered = self.registered.summary() if self.registered else self.not_registered
        registered = f"{registered}\n" if registered else ""
        return (
            f"validation accuracy {self.val_acc:.2%}   test accuracy {self.test_acc:.2%}\n"
            f"MLflow run {self.run_id}\n"
            f"{registered}"
            f"browse it:  {command}\n"
            f"            then open {link}"
        )


def local_rank(slot: int | None, env: Mapping[str, str] = os.environ) -> int:
    """Which of this machine's workers or parallel trials this process is: the launcher's local
    rank (torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID), else the trial's slot in its batch."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return slot or 0


def pick_device(name: str, slot: int | None = None, cuda_count: int | None = None) -> torch.device:
    """``auto``: CUDA when there is one; with several GPUs visible, each worker or parallel trial
    on the machine takes its own (rank modulo the GPU count), else the CPU."""
    if name == "auto":
        count = torch.cuda.device_count() if cuda_count is None else cuda_count
        if count == 0:
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank(slot) % count}" if count > 1 else "cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: MPS is not available on this machine")
    return device


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (timings are only comparable on one kind of machine)."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), flags=re.M)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def native_bf16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or an x86
    CPU with AVX512-BF16 or AMX (elsewhere bf16 autocast is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = set(re.findall(r"[a-z0-9_]+", _cpuinfo() if cpu_flags is None else cpu_flags))
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 (2.6x faster epochs at the same test accuracy, benchmarks/epoch_speed.py
    --accuracy) where the hardware has it, else fp32."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return str(name)


def _set_up_torch(trainer: DictConfig) -> torch.Generator:
    if trainer.threads > 0:
        torch.set_num_threads(trainer.threads)
    if trainer.deterministic:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(trainer.seed)
    return torch.Generator().manual_seed(trainer.seed)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _choices() -> dict[str, str]:
    """The group options this run was composed from (``hydra.choice.optimizer``: sgd, ...), so a
    winner file written from its record selects the same groups."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {f"hydra.choice.{g}": str(choices[g]) for g in GROUPS if choices.get(g) is not None}


def _sweep_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().sweep.dir) if HydraConfig.initialized() else ""


class Phases:
    """Seconds spent in the named parts of a run besides training (logged as ``time/*``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _progress_bar(enabled: bool, total: int):
    """A tqdm bar over one epoch's batches on a terminal, else None."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, leave=False, unit="batch", dynamic_ncols=True)


def run(cfg: DictConfig) -> RunResult:
    """Train and test one MLP as ``cfg`` says, logging everything to MLflow."""
    config.validate(cfg)
    t, m, d = cfg.trainer, cfg.model, cfg.data
    device = pick_device(t.device, cfg.sweep.slot)
    precision = pick_precision(t.precision, device)
    generator = _set_up_torch(t)
    clock = Phases()
    with clock("data"):
        splits = data.load_config(d, str(device))
    model = MLP(m.num_layers, m.layer_size, m.activation, m.dropout).to(device)
    optimizer = training.make_optimizer(cfg.optimizer, model)
    steps_per_epoch = -(-len(splits.train_x) // t.batch_size)
    schedule = training.make_schedule(cfg.schedule, optimizer, t.epochs * steps_per_epoch)
    augment = data.make_augment(d, device)
    link = TrialLink.open(cfg.sweep.storage, cfg.sweep.study, cfg.sweep.trial)  # None unless pruning
    name, tags = _name_and_tags(cfg, str(device))
    tags["precision"] = precision  # what trainer.precision (auto) resolved to on this machine
    tags["cpu"] = cpu_model()  # which machine gave the run's time/* figures
    sizes = (len(splits.train_x), len(splits.val_x), len(splits.test_x))
    log.info("%s on %s (%s): %d train / %d val / %d test images", name, device, precision, *sizes)

    with tracking.start_run(cfg, name, tags, run_id=cfg.sweep.run_id) as active:
        bar = _progress_bar(t.progress and not in_sweep(), steps_per_epoch)
        try:
            history = training.fit(
                model,
                splits,
                optimizer,
                schedule,
                epochs=t.epochs,
                batch_size=t.batch_size,
                generator=generator,
                augment=augment,
                on_epoch=_epoch_reporter(t.epochs, bar, link),
                on_batch=bar.update if bar else None,
                val_every=1 if link is not None else t.val_every,  # a pruner judges every epoch
                precision=precision,
            )
        finally:
            if bar is not None:
                bar.close()
        if len(history) < t.epochs:  # pruned: what follows describes the model where it stopped
            val_acc = 100 * history[-1]["val/acc"]
            log.info("%s: pruned after epoch %d/%d (val acc %.2f%%)", name, len(history), t.epochs, val_acc)
            tracking.mark_pruned(len(history))
        final, model_uri = _test_and_report(cfg, model, splits, history, clock)
        registered = _register(cfg, model_uri, active.info.run_id, history[-1]["val/acc"], final["test/acc"])

    last = history[-1]
    log.info("%s: val acc %.2f%%, test acc %.2f%%", name, 100 * last["val/acc"], 100 * final["test/acc"])
    return RunResult(
        val_acc=last["val/acc"],
        test_acc=final["test/acc"],
        run_id=active.info.run_id,
        experiment_id=active.info.experiment_id,
        tracking_uri=tracking.tracking_uri(cfg.tracking),
        metrics={**last, **final},
        registered=None if isinstance(registered, str) else registered,
        not_registered=registered if isinstance(registered, str) else "",
    )


def _name_and_tags(cfg: DictConfig, device: str) -> tuple[str, dict[str, str]]:
    """The run's name (e.g. mlp-4x512-leaky_relu; trial-017 mlp-... in a sweep) and its tags."""
    m = cfg.model
    name = cfg.tracking.run_name or describe(m.num_layers, m.layer_size, m.activation)
    tags = {**tracking.run_tags(_overrides(), device, cfg.trainer.seed), **_choices()}
    if cfg.sweep.trial is not None:  # a sweep trial: its run was opened by the sweeper, nested under the study's
        name = f"trial-{cfg.sweep.trial:03d} {name}"
        tags["sweep.dir"] = _sweep_dir()
    return name, tags


def _epoch_reporter(epochs: int, bar: Any, link: TrialLink | None) -> Callable[[dict[str, float]], bool]:
    """What happens after each epoch: metrics to MLflow, a log line (DEBUG in a sweep), the
    pruner's verdict (True: stop)."""
    level = logging.DEBUG if in_sweep() else logging.INFO

    def on_epoch(metrics: dict[str, float]) -> bool:
        tracking.log_epoch(metrics)
        if bar is not None:
            bar.reset()
        val = f"val loss {metrics['val/loss']:.4f} acc {100 * metrics['val/acc']:.2f}%" if "val/acc" in metrics else ""
        log.log(
            level,
            "epoch %2d/%d  train loss %.4f acc %.2f%%  %s  lr %.2e  %.1fs",
            metrics["epoch"], epochs, metrics["train/loss"], 100 * metrics["train/acc"], val, metrics["lr"],
            metrics["epoch_seconds"],
        )  # fmt: skip
        return link is not None and link.should_stop(int(metrics["epoch"]), epochs, metrics["val/acc"])

    return on_epoch


def _test_and_report(
    cfg: DictConfig, model: MLP, splits: data.Splits, history: list[dict[str, float]], clock: Phases
) -> tuple[dict[str, float], str | None]:
    """Test once, then log the final metrics, tables, figures, the model and the time each took;
    return the final metrics and the logged model's URI (None when not logged)."""
    epochs_run = len(history)
    with clock("test"):
        test = training.evaluate(model, splits.test_x, splits.test_y)
    final = {
        "test/loss": test.loss,
        "test/acc": test.acc,
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "epochs_run": epochs_run,
    }
    tracking.log_epoch({"epoch": epochs_run, **final})
    cm = training.confusion_matrix(splits.test_y, test.preds)
    per_class = training.per_class_metrics(cm)  # a table (per_class_metrics.csv), not 30 one-point charts
    tracking.log_table(
        [{"true": r, **{f"pred_{c}": int(cm[r, c]) for c in range(10)}} for r in range(10)], "confusion_matrix.csv"
    )
    tracking.log_table(
        [{"digit": k, **{m: round(per_class[m][k], 6) for m in per_class}} for k in range(10)], "per_class_metrics.csv"
    )
    with clock("figures"):
        tracking.log_figure(plots.confusion_matrix_figure(cm), "confusion_matrix.png")
        tracking.log_figure(plots.learning_curves_figure(history), "learning_curves.png")
        wrong = plots.misclassified_figure(
            splits.test_images, splits.test_y.cpu(), test.preds.cpu(), test.confidence.cpu()
        )
        tracking.log_figure(wrong, "misclassified.png")
    model_uri = None
    if cfg.tracking.log_model:
        with clock("model"):  # the network with its preprocessing: takes 0-255 pixels, returns probabilities
            model_uri = tracking.log_model(DigitRecognizer(model, data.MEAN, data.STD), splits.test_images[:4].numpy())
    clock.seconds["validation"] = sum(h.get("val_seconds", 0.0) for h in history)
    timings = {f"time/{k}_seconds": v for k, v in clock.seconds.items()}
    tracking.log_epoch({"epoch": epochs_run, **timings})
    return {**final, **timings}, model_uri


def _config_folders() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [s["path"] for s in HydraConfig.get().runtime.config_sources if s["schema"] == "file"]


def _register(
    cfg: DictConfig, model_uri: str | None, run_id: str, val_acc: float, test_acc: float
) -> registry.Registered | str | None:
    """Register the model when ``tracking.register`` says so (null: when the model group is a
    winner file, as in ``python train.py model=best``, and the data is MNIST's canonical split);
    the version's tags name its run, what it was trained on, and the study and trial it
    reproduces. A str says why a winner's model was not registered."""
    origin = registry.winner_origin(_choices(), _config_folders())
    trained_on = registry.TrainedOn.of(cfg.data)
    if cfg.tracking.register is None and origin is not None and not trained_on.canonical:
        return (
            f"not registered: this winner was trained on {trained_on}, and only models trained on "
            f"{registry.canonical_split()} are registered by default (tracking.register=true registers it "
            f"without making it {registry.CHAMPION})"
        )
    wanted = cfg.tracking.register if cfg.tracking.register is not None else origin is not None
    if not wanted or model_uri is None:
        return None
    tags = {"test_acc": repr(test_acc), **(origin or {})}
    if cfg.sweep.study is not None:  # a sweep trial that logs its model
        tags.update(study=cfg.sweep.study, trial=str(cfg.sweep.trial))
    registered = registry.register(model_uri, cfg.tracking.registered_model, run_id, val_acc, tags, trained_on)
    log.debug("%s", registered.summary())  # train.py prints it in the summary
    return registered
