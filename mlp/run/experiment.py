"""One run, end to end: config -> data -> model -> training -> test -> MLflow.

``run(cfg)`` is what ``train.py`` calls (once, or once per sweep trial) and what tests call
in-process; it returns the run's metrics and where it was logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mlp.run import config, data, hydra_job, plots, registry, tracking, training, winner_files
from mlp.run.device import cpu_model, pick_device, pick_precision
from mlp.run.model import MLP, DigitRecognizer, describe
from mlp.sweep import protocol

log = logging.getLogger(__name__)


class EpochJudge(Protocol):
    """Told each epoch's validation accuracy, says whether the run stops there: the job's side
    of a pruned sweep trial (mlp.sweep.job.TrialLink), which train.py hands to ``run``."""

    def should_stop(self, epoch: int, epochs: int, val_acc: float) -> bool: ...


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


def _set_up_torch(trainer: DictConfig) -> torch.Generator:
    if trainer.threads > 0:
        torch.set_num_threads(trainer.threads)
    if trainer.deterministic:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(trainer.seed)
    return torch.Generator().manual_seed(trainer.seed)


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
    return tqdm(total=total, leave=False, unit="batch", dynamic_ncols=True)


@dataclass
class Setup:
    """What one run trains: the model and how (built before its MLflow run opens, so that a bad
    optimizer or schedule setting fails with nothing logged)."""

    model: MLP
    optimizer: torch.optim.Optimizer
    schedule: Any
    augment: Any
    steps_per_epoch: int

    @classmethod
    def of(cls, cfg: DictConfig, splits: data.Splits, device: torch.device, generator: torch.Generator) -> Setup:
        m, t = cfg.model, cfg.trainer
        # The dropout masks' own generator, on the device, seeded from the run's (without dropout the
        # run's stream is left as it was).
        masks = None
        if m.dropout > 0 and m.dropout_masks == "bits":
            masks = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        model = MLP(m.num_layers, m.layer_size, m.activation, m.dropout, masks=m.dropout_masks, generator=masks).to(
            device
        )
        optimizer = training.make_optimizer(cfg.optimizer, model)
        steps_per_epoch = -(-len(splits.train_x) // t.batch_size)
        schedule = training.make_schedule(cfg.schedule, optimizer, t.epochs * steps_per_epoch)
        return cls(model, optimizer, schedule, data.make_augment(cfg.data, device), steps_per_epoch)


def run(cfg: DictConfig, judge: EpochJudge | None = None) -> RunResult:
    """Train and test one MLP as ``cfg`` says, logging everything to MLflow; ``judge`` (a pruned
    sweep trial's) hears every epoch's validation accuracy and may stop the run early."""
    config.validate(cfg)
    t = cfg.trainer
    device = pick_device(t.device, cfg.sweep.slot)
    precision = pick_precision(t.precision, device)
    generator = _set_up_torch(t)
    clock = Phases()
    with clock("data"):
        splits = data.load_config(cfg.data, str(device))
    setup = Setup.of(cfg, splits, device, generator)
    name, tags = _name_and_tags(cfg, str(device))
    tags["precision"] = precision  # what trainer.precision (auto) resolved to on this machine
    tags["cpu"] = cpu_model()  # which machine gave the run's time/* figures
    sizes = (len(splits.train_x), len(splits.val_x), len(splits.test_x))
    log.info("%s on %s (%s): %d train / %d val / %d test images", name, device, precision, *sizes)

    with tracking.start_run(cfg, name, tags, run_id=cfg.sweep.run_id) as active:
        history = _train(cfg, setup, splits, generator, precision, judge)
        if len(history) < t.epochs:  # pruned: what follows describes the model where it stopped
            val_acc = 100 * history[-1]["val/acc"]
            log.info("%s: pruned after epoch %d/%d (val acc %.2f%%)", name, len(history), t.epochs, val_acc)
            tracking.tag_pruned(len(history))
        final, model_uri = _test_and_report(cfg, setup.model, splits, history, clock)
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


def _train(
    cfg: DictConfig,
    setup: Setup,
    splits: data.Splits,
    generator: torch.Generator,
    precision: str,
    judge: EpochJudge | None,
) -> list[dict[str, float]]:
    """The training loop with its progress bar (on a terminal, outside sweeps); the history."""
    t = cfg.trainer
    bar = _progress_bar(t.progress and not hydra_job.in_sweep(), setup.steps_per_epoch)
    try:
        return training.fit(
            setup.model,
            splits,
            setup.optimizer,
            setup.schedule,
            epochs=t.epochs,
            batch_size=t.batch_size,
            generator=generator,
            augment=setup.augment,
            on_epoch=_epoch_reporter(t.epochs, bar, judge),
            on_batch=bar.update if bar else None,
            val_every=1 if judge is not None else t.val_every,  # a pruner judges every epoch
            precision=precision,
        )
    finally:
        if bar is not None:
            bar.close()


def _name_and_tags(cfg: DictConfig, device: str) -> tuple[str, dict[str, str]]:
    """The run's name (e.g. mlp-4x512-leaky_relu; trial-017 mlp-... in a sweep) and its tags."""
    m = cfg.model
    name = cfg.tracking.run_name or describe(m.num_layers, m.layer_size, m.activation)
    tags = {
        **tracking.run_tags(hydra_job.task_overrides(), device, cfg.trainer.seed),
        **hydra_job.group_choices(config.GROUPS),
    }
    if cfg.sweep.trial is not None:  # a sweep trial: its run was opened by the sweeper, nested under the study's
        name = f"trial-{cfg.sweep.trial:03d} {name}"
        tags[protocol.TAG_DIR] = hydra_job.sweep_dir()
    return name, tags


def _epoch_reporter(epochs: int, bar: Any, judge: EpochJudge | None) -> Callable[[dict[str, float]], bool]:
    """What happens after each epoch: metrics to MLflow, a log line (DEBUG in a sweep), the
    pruner's verdict (True: stop)."""
    level = logging.DEBUG if hydra_job.in_sweep() else logging.INFO

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
        return judge is not None and judge.should_stop(int(metrics["epoch"]), epochs, metrics["val/acc"])

    return on_epoch


def _test_and_report(
    cfg: DictConfig, model: MLP, splits: data.Splits, history: list[dict[str, float]], clock: Phases
) -> tuple[dict[str, float], str | None]:
    """Test once, then log the final metrics, tables, figures, the model and the time each took;
    return the final metrics and the logged model's URI (None when not logged)."""
    epochs_run = len(history)
    with clock("test"):
        test = training.evaluate(model, splits.test_x, splits.test_y)
    served = DigitRecognizer(model, data.MEAN, data.STD)  # what the recognizer runs: its cost per image
    final = {
        "test/loss": test.loss,
        "test/acc": test.acc,
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "epochs_run": epochs_run,
        protocol.METRIC_PARAMS: float(sum(p.numel() for p in model.parameters())),
        protocol.METRIC_LATENCY: training.latency_ms(served, splits.test_images[:1]),
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


def _register(
    cfg: DictConfig, model_uri: str | None, run_id: str, val_acc: float, test_acc: float
) -> registry.Registered | str | None:
    """Register the model when ``tracking.register`` says so (null: when the model group is a
    winner file, as in ``python train.py model=best``, and the data is MNIST's canonical split);
    the version's tags name its run, what it was trained on, and the study and trial it
    reproduces. A str says why a winner's model was not registered."""
    origin = winner_files.winner_origin(hydra_job.group_choices(config.GROUPS), hydra_job.config_folders())
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
