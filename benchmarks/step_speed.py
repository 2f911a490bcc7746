"""One training step of the frontier network (`python train.py model=best`: SiLU, dropout, affine +
elastic augmentation, batch 512), part by part, the old path against the new, in one run:

- the bf16 and fp32 matrix-product peaks at each path's step shape (batch x width x width),
  measured here and now, in every round (a shared machine's speed drifts);
- milliseconds of each part of a step: augmentation, forward (dropout included), dropout alone,
  backward, optimizer; and of a validation pass; old and new interleaved step by step, medians;
- an epoch of each path's config as ``model=best`` runs it (training, and its share of a
  validation pass: one every ``trainer.val_every`` epochs), old and new interleaved, medians;
- each step's GFLOP/s against the bf16 peak.

The new path is the shipped winner, ``model=best``. The old one is the winner it replaced
(``OLD``, the frontier study's trial 1 of 2026-12-01: 4x1536 wide, torch's ``nn.Dropout``, whose
masks are a float drawn per element by ``bernoulli_``, validated after every epoch).

    python benchmarks/step_speed.py            # 3 rounds of steps, 3 epochs of each path (about a minute on 2 cores)
    python benchmarks/step_speed.py --quick    # 1 round of 3 steps, an "epoch" of 2 batches: a smoke run
    python benchmarks/step_speed.py trainer.precision=fp32   # Hydra overrides on top of model=best
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from epoch_speed import matmul_gflops, set_up, training_flops
from hydra import compose, initialize_config_dir
from torch import nn

from mlp import PROJECT_ROOT
from mlp.run import data, training
from mlp.run.model import MLP, Dropout

PATHS = ("old", "new")
STEP = "step (the four above, summed per step)"
# The old path: model=best until 2026-12-07 (e06056e), the frontier study's trial 1 (docs/frontier.md).
OLD = [
    "model.num_layers=4", "model.layer_size=1536", "model.activation=silu", "model.dropout=0.21211680198501115",
    "model.dropout_masks=torch", "optimizer.lr=0.002410023542676287", "optimizer.weight_decay=0.12251661510111676",
    "trainer.epochs=200", "trainer.batch_size=512", "trainer.val_every=1", "data.max_rotation=10",
    "data.max_scale=0.07102410998625319", "data.elastic_alpha=33.74438909365753",
    "data.elastic_sigma=4.131974514443067",
]  # fmt: skip


def build(cfg, device: torch.device) -> tuple[MLP, torch.optim.Optimizer]:
    """A config's network, its dropout masks drawn as the config says, and its optimizer."""
    torch.manual_seed(cfg.trainer.seed)
    m = cfg.model
    g = torch.Generator(device).manual_seed(0)
    model = MLP(m.num_layers, m.layer_size, m.activation, m.dropout, masks=m.dropout_masks, generator=g).to(device)
    return model, training.make_optimizer(cfg.optimizer, model)


class Clock:
    """Seconds since the last call (the device's queue drained first)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        self.sync()
        self.last = time.perf_counter()

    def __call__(self) -> float:
        self.sync()
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def step_parts(model, optimizer, augment, x, y, batch: int, g: torch.Generator, precision: str) -> dict[str, float]:
    """Milliseconds of each part of one step as training.train_epoch takes it."""
    model.train()  # as train_epoch: the validation passes between rounds leave it in eval mode
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    clock, ms = Clock(x.device), {}
    idx = torch.randint(len(x), (batch,), generator=g).to(x.device)
    xb, yb = x[idx], y[idx]
    if augment is not None:
        xb = augment(xb, g)
    ms["augmentation (affine + elastic)"] = clock()
    with autocast:
        loss = F.cross_entropy(model(xb), yb)
    ms["forward, dropout included"] = clock()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ms["backward"] = clock()
    optimizer.step()
    ms["optimizer step (fused AdamW)"] = clock()
    ms[STEP] = sum(ms.values())
    return {k: 1e3 * v for k, v in ms.items()}


def dropout_ms(model: MLP, batch: int, dtype: torch.dtype, device: torch.device) -> float:
    """Milliseconds of the model's dropout layers alone on one batch's activations, forward and backward."""
    layers = [m.train() for m in model if isinstance(m, nn.Dropout | Dropout)]
    h = torch.randn(batch, model[1].out_features, dtype=dtype, device=device, requires_grad=True)
    clock = Clock(device)
    for layer in layers:
        layer(h).backward(torch.ones_like(h))
    return 1e3 * clock()


def levers(model: MLP, val_x: torch.Tensor, val_y: torch.Tensor) -> dict[str, float]:
    """Milliseconds of what a step or an epoch could save in bf16: validating under autocast (runs
    validate in fp32, so that the recorded accuracies are the served model's), and the casts of the
    weights to bf16 and of their gradients back to fp32 that autocast makes every step."""
    device, ms = val_x.device, {}
    clock = Clock(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        training.evaluate(model, val_x, val_y)
    ms[f"validation pass ({len(val_x):,} images) under bf16 autocast"] = 1e3 * clock()
    for p in model.parameters():
        p.detach().to(torch.bfloat16).float()
    ms["a step's casts of the weights to bf16 and of their gradients to fp32"] = 1e3 * clock()
    return ms


def epoch_seconds(cfg, splits: data.Splits, precision: str, images: int) -> Callable[[], float]:
    """A function that trains one more epoch of ``cfg`` and validates; its seconds, the validation
    counted at its share as model=best runs it (a pass every ``trainer.val_every`` epochs)."""
    device, b = splits.train_x.device, cfg.trainer.batch_size
    x, y = splits.train_x[:images], splits.train_y[:images]
    val_x, val_y = splits.val_x[:images], splits.val_y[:images]
    model, optimizer = build(cfg, device)
    schedule = training.make_schedule(cfg.schedule, optimizer, -(-len(x) // b) * cfg.trainer.epochs)
    augment, g = data.make_augment(cfg.data, device), torch.Generator().manual_seed(cfg.trainer.seed)

    def one() -> float:
        clock = Clock(device)
        training.train_epoch(
            model, x, y, optimizer, schedule, batch_size=b, generator=g, augment=augment, precision=precision
        )
        seconds = clock()
        training.evaluate(model, val_x, val_y)
        return seconds + clock() / cfg.trainer.val_every

    return one


Series = dict[str, list[float]]  # what was measured -> its repeats


def measure_steps(cfgs, splits: data.Splits, precision: str, rounds: int, steps: int, images: int, quick: bool):
    """(each path's matmul peaks by dtype, each path's parts of a step, the levers not taken):
    ``rounds`` of the peaks, then ``steps`` steps of each path interleaved, then a validation pass of each."""
    device = splits.train_x.device
    augments = {path: data.make_augment(cfgs[path].data, device) for path in PATHS}
    models = {path: build(cfgs[path], device) for path in PATHS}
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peaks: dict[str, Series] = {path: {"bf16": [], "fp32": []} for path in PATHS}
    parts: dict[str, Series] = {path: {} for path in PATHS}
    others: Series = {}
    val_x, val_y = splits.val_x[:images], splits.val_y[:images]

    def step(path: str) -> dict[str, float]:
        """One step's parts, and the dropout layers alone on a batch of its activations."""
        b = cfgs[path].trainer.batch_size
        ms = step_parts(*models[path], augments[path], splits.train_x, splits.train_y, b, g, precision)
        ms["dropout alone (its layers, forward + backward)"] = dropout_ms(models[path][0], b, dtype, device)
        return ms

    for path in PATHS:  # untimed: first calls allocate
        step(path)
    for _ in range(rounds):
        for path in PATHS if device.type == "cpu" else ():
            b, width = cfgs[path].trainer.batch_size, cfgs[path].model.layer_size
            for name, t in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
                peaks[path][name].append(matmul_gflops(b, width, width, 0.1 if quick else 0.5, t))
        for _ in range(steps):
            for path in PATHS:
                for key, value in step(path).items():
                    parts[path].setdefault(key, []).append(value)
        for path in PATHS:
            clock = Clock(device)
            training.evaluate(models[path][0], val_x, val_y)
            parts[path].setdefault(f"validation pass ({len(val_x):,} images, fp32)", []).append(1e3 * clock())
        for key, ms in levers(models["new"][0], val_x, val_y).items():
            others.setdefault(key, []).append(ms)
    return peaks, parts, others


def print_table(parts: dict[str, Series], times: Series, others: Series, images: int) -> None:
    """Each part, old and new: best (the least contended of the repeats: a shared machine's load
    comes in bursts) and median, and their ratios; then the levers not taken."""
    table = {k: [parts[path][k] for path in PATHS] for k in parts["new"]}
    table[f"epoch of {images:,} images, with its validation share (s; {len(times['new'])} of each)"] = [
        times[path] for path in PATHS
    ]
    width = max(map(len, table)) + 2
    columns = f"{'best: old':>10}{'new':>9}{'old/new':>9}  {'median: old':>12}{'new':>9}{'old/new':>9}"
    print(f"\n{'part (ms a step)':<{width}}{columns}")
    for key, (old, new) in table.items():
        best, median = (min(old), min(new)), (statistics.median(old), statistics.median(new))
        print(f"{key:<{width}}{best[0]:10.2f}{best[1]:9.2f}{best[0] / best[1]:8.2f}x  "
              f"{median[0]:12.2f}{median[1]:9.2f}{median[0] / median[1]:8.2f}x")  # fmt: skip
    print("\nother levers, measured, not taken (ms, best and median):")
    for key, ms in others.items():
        print(f"  {key:<{width + 8}}{min(ms):9.2f}{statistics.median(ms):9.2f}")


def print_rates(cfgs, peaks: dict[str, Series], steps_ms: Series, step_gflop: dict[str, float]) -> None:
    """Each path's bf16 and fp32 peaks at its step's shape, and its step's GFLOP/s against its bf16
    peak: from the best repeats, then from the medians."""
    for stat, f in (("best", max), ("median", statistics.median)):
        pick = min if stat == "best" else statistics.median
        for path in PATHS:
            b, w = cfgs[path].trainer.batch_size, cfgs[path].model.layer_size
            bf16, fp32 = f(peaks[path]["bf16"]), f(peaks[path]["fp32"])
            n = len(peaks[path]["bf16"])
            print(f"{stat}: matmul peak GFLOP/s at {b}x{w}x{w} of {n}: bf16 {bf16:.1f}, fp32 {fp32:.1f}")
            rate = step_gflop[path] / pick(steps_ms[path]) * 1e3
            print(f"  {path} step: {rate:.0f} GFLOP/s = {rate / bf16:.0%} of the bf16 peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of peaks and steps (medians reported)")
    parser.add_argument("--steps", type=int, default=10, help="steps of each path per round, interleaved")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each path, interleaved")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 steps, an 'epoch' of 2 batches")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of model=best (and of the old path's)")
    args = parser.parse_args()
    rounds, steps, epochs = (1, 3, 1) if args.quick else (args.rounds, args.steps, args.epochs)

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf")):
        cfgs = {path: compose(config_name="config", overrides=["model=best", *pre, *args.overrides])
                for path, pre in (("old", OLD), ("new", []))}  # fmt: skip
    device, precision = set_up(cfgs["new"])
    for path, cfg in cfgs.items():
        m, t = cfg.model, cfg.trainer
        print(f"{path}: {m.num_layers}x{m.layer_size} {m.activation}, dropout {m.dropout:.3f} "
              f"({m.dropout_masks} masks), batch {t.batch_size}, {t.epochs} epochs, "
              f"validated every {t.val_every}, {precision}")  # fmt: skip
    splits = data.load_config(cfgs["new"].data, str(device))
    images = 2 * cfgs["new"].trainer.batch_size if args.quick else len(splits.train_x)
    peaks, parts, others = measure_steps(cfgs, splits, precision, rounds, steps, images, args.quick)
    trainers = {path: epoch_seconds(cfgs[path], splits, precision, images) for path in PATHS}
    times: Series = {path: [] for path in PATHS}
    for _ in range(epochs):
        for path in PATHS:
            times[path].append(trainers[path]())

    print_table(parts, times, others, images)
    best, median = (
        min(times["new"]) / min(times["old"]),
        statistics.median(times["new"]) / statistics.median(times["old"]),
    )
    print(f"\nan epoch of model=best (new) takes {best:.2f} of the old path's (best), {median:.2f} (median)")
    step_gflop = {}
    for path in PATHS:
        b = cfgs[path].trainer.batch_size
        step_gflop[path] = b * training_flops(build(cfgs[path], torch.device("cpu"))[0]) / 1e9
        print(f"{path} step: {step_gflop[path]:.1f} GFLOP (forward, weight and input gradients of the Linear layers)")
    if peaks["new"]["bf16"]:  # measured on CPUs only
        print_rates(cfgs, peaks, {path: parts[path][STEP] for path in PATHS}, step_gflop)


if __name__ == "__main__":
    main()
