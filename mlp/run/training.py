"""The training loop and evaluation: plain torch on tensors already on the device."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mlp.errors import ConfigError, DivergedError, first_line

EVAL_BATCH = 4096
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # batch -> transformed batch


@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: torch.Tensor  # [N] predicted class
    confidence: torch.Tensor  # [N] softmax probability of the predicted class


def make_optimizer(spec: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer an ``optimizer`` config names (``_target_`` + arguments) over the model's
    parameters: a new optimizer is a new YAML file. One that cannot be made with these arguments
    (torch.optim.LBFGS takes no weight_decay, nor steps without a closure) is one line."""
    try:
        return instantiate(spec, params=model.parameters(), _execution_whitelist_="torch.optim.*")
    except Exception as e:
        cause = first_line(e.__cause__ or e)
        accepted = f"a torch.optim optimizer taking lr, weight_decay and fused, as conf/optimizer/*.yaml do ({cause})"
        raise ConfigError("optimizer._target_", spec.get("_target_"), accepted) from e


def make_schedule(spec: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """The per-step learning-rate scheduler a ``schedule`` config names (one of the functions
    below, or any with the same first two arguments)."""
    return instantiate(
        spec,
        optimizer=optimizer,
        total_steps=total_steps,
        _execution_whitelist_=("mlp.training.*", "mlp.run.training.*"),
    )


def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> LRScheduler:
    """Rise to the optimizer's lr over the first ``warmup`` of the steps, then anneal."""
    peak = optimizer.param_groups[0]["lr"]
    if warmup * total_steps == 1:  # torch divides by the warm-up's length in steps minus one: half a step more
        warmup = 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=warmup)


def cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    model.eval()
    logits = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    confidence, preds = logits.softmax(dim=1).max(dim=1)
    return Evaluation(
        loss=F.cross_entropy(logits, y).item(),
        acc=(preds == y).sum().item() / len(y),  # a count over a total: exact, not float32's 0.96410000324...
        preds=preds,
        confidence=confidence,
    )


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    on_batch: Callable[[], None] | None = None,
    precision: str = "fp32",
) -> tuple[float, float]:
    """One pass over (x, y) in shuffled batches taken by index; returns (mean loss, accuracy).
    ``precision="bf16"``: the forward pass under bfloat16 autocast (weights, optimizer state
    and the update stay float32)."""
    model.train()
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, generator)
        with autocast:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        # Accumulate on the device: no host sync per batch.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(dim=1) == yb).sum()
        if on_batch is not None:
            on_batch()
    mean_loss = loss_sum.item() / n
    if not math.isfinite(mean_loss):
        raise DivergedError(
            f"training loss became {mean_loss} (non-finite): the run diverged; try a lower optimizer.lr"
        )
    return mean_loss, correct.item() / n


def confusion_matrix(y: torch.Tensor, preds: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """[true, predicted] counts."""
    flat = y.to(torch.long) * num_classes + preds.to(torch.long)
    return torch.bincount(flat.cpu(), minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_metrics(cm: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 of each class from a [true, predicted] confusion matrix."""
    cm = cm.double()
    hits = cm.diag()
    precision = hits / cm.sum(dim=0).clamp(min=1)
    recall = hits / cm.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def fit(
    model: nn.Module,
    splits: Any,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    on_epoch: Callable[[dict[str, float]], bool | None] = lambda metrics: None,
    on_batch: Callable[[], None] | None = None,
    val_every: int = 1,
    precision: str = "fp32",
) -> list[dict[str, float]]:
    """Train on ``splits.train_x/train_y`` for ``epochs``; after each, call ``on_epoch`` with
    that epoch's metrics (with the loss and accuracy on ``splits.val_x/val_y`` after every
    ``val_every``-th epoch and the last).
    ``on_epoch`` returning True stops training there (a pruned sweep trial)."""
    history = []
    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model, splits.train_x, splits.train_y, optimizer, schedule,
            batch_size=batch_size, generator=generator, augment=augment, on_batch=on_batch, precision=precision,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        metrics = {"epoch": epoch, "train/loss": train_loss, "train/acc": train_acc, "lr": lr, "epoch_seconds": seconds}
        if epoch % val_every == 0 or epoch == epochs:
            start = time.perf_counter()
            val = evaluate(model, splits.val_x, splits.val_y)
            metrics.update({"val/loss": val.loss, "val/acc": val.acc, "val_seconds": time.perf_counter() - start})
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()) or not math.isfinite(
            metrics.get("val/loss", 0.0)
        ):
            raise DivergedError(
                f"after epoch {epoch} the weights or the validation loss are non-finite: the run diverged; "
                "try a lower optimizer.lr"
            )
        history.append(metrics)
        if on_epoch(metrics):
            break
    return history


LATENCY_REPEATS = 200  # single-image passes timed (after 20 untimed): the median is stable to a few percent


def latency_ms(model: nn.Module, pixels: torch.Tensor, repeats: int = LATENCY_REPEATS) -> float:
    """Milliseconds the model takes for one image, as the recognizer serves it: a copy on the
    CPU in float32, one image at a time, one thread; the median of ``repeats`` passes. Measured
    the same way in every run, so that runs (and a multi-objective study's trials) compare."""
    served = copy.deepcopy(model).to("cpu", torch.float32).eval()
    one = pixels[:1].to("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.inference_mode():
            for i in range(20 + repeats):
                start = time.perf_counter()
                served(one)
                if i >= 20:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1000 * sorted(times)[len(times) // 2]
