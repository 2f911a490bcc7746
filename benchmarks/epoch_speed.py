"""How fast one training epoch of the default model is, measured in one run:

- this repo's loop (MNIST held as tensors on the device, batches taken by index, the default
  config's batch size and augmentation), seconds per epoch and images per second;
- its achieved training GFLOP/s next to this machine's fp32 matrix-product peak, measured
  here and now with square products of several sizes just before each timed epoch (a
  shared machine's speed drifts; each epoch is compared with the peak of its moment);
- the same epochs with the forward pass under bfloat16 autocast (trainer.precision=bf16);
- the same model trained for one epoch by the conventional pipeline: torchvision MNIST with
  ToTensor + Normalize, DataLoader with batch 64; and the speed-up of ours over it.

    python benchmarks/epoch_speed.py            # 3 timed epochs of ours, 1 conventional (about a minute)
    python benchmarks/epoch_speed.py --quick    # 1 epoch each, smaller peak measurement
    python benchmarks/epoch_speed.py --accuracy # ...and a whole default run in fp32 and in bf16 (about 2 minutes more)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import mlp.run.config
from mlp import PROJECT_ROOT
from mlp.run import data, training
from mlp.run.device import cpu_model, pick_device, pick_precision
from mlp.run.model import MLP


def matmul_gflops(m: int, k: int, n: int, seconds: float, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of [m, k] x [k, n] products in ``dtype`` on the CPU with torch's threads, over ``seconds``."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b  # warm up
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * m * k * n * reps / elapsed / 1e9


def matmul_peak(sizes: tuple[int, ...], seconds: float) -> float:
    """Best fp32 GFLOP/s of square products on the CPU with torch's threads."""
    return max(matmul_gflops(n, n, n, seconds) for n in sizes)


def set_up(cfg) -> tuple[torch.device, str]:
    """Check a composed config, take its device, precision and threads as a run does, and print them."""
    mlp.run.config.validate(cfg)
    device = pick_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU: {cpu_model()}")
    return device, pick_precision(cfg.trainer.precision, device)


def training_flops(model: MLP) -> int:
    """Per image: forward, weight gradients (as many), input gradients (all but the first layer)."""
    first = next(m for m in model if isinstance(m, torch.nn.Linear))
    return 3 * model.flops_per_example() - 2 * first.in_features * first.out_features


def build(cfg, device: torch.device) -> tuple[MLP, torch.optim.Optimizer]:
    torch.manual_seed(cfg.trainer.seed)
    m = cfg.model
    model = MLP(m.num_layers, m.layer_size, m.activation, m.dropout).to(device)
    return model, training.make_optimizer(cfg.optimizer, model)


def ours(
    cfg, device: torch.device, epochs: int, peak: Callable[[], float], precision: str = "fp32"
) -> tuple[list[float], list[float], int, int]:
    """Seconds of each training epoch (validation excluded), the matmul peak measured just
    before each (the machine's speed drifts: each epoch is compared with its own), images
    per epoch, FLOPs per image."""
    d = cfg.data
    splits = data.load_config(d, str(device))
    model, optimizer = build(cfg, device)
    steps = -(-len(splits.train_x) // cfg.trainer.batch_size)
    schedule = training.make_schedule(cfg.schedule, optimizer, steps * epochs)
    augment = data.make_augment(d, device)
    generator = torch.Generator().manual_seed(0)
    times, peaks = [], []
    for _ in range(epochs):
        peaks.append(peak())
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        training.train_epoch(
            model,
            splits.train_x,
            splits.train_y,
            optimizer,
            schedule,
            batch_size=cfg.trainer.batch_size,
            generator=generator,
            augment=augment,
            precision=precision,
        )
        times.append(time.perf_counter() - start)  # train_epoch ends with .item(): synchronised
    return times, peaks, len(splits.train_x), training_flops(model)


def conventional(cfg, device: torch.device) -> float:
    """One epoch of the textbook pipeline over the same training images."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import MNIST

    d = cfg.data
    data.ensure_mnist(d.root)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((data.MEAN,), (data.STD,))])
    full = MNIST(d.root, train=True, transform=tf)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(d.split_seed))
    loader = DataLoader(Subset(full, order[d.val_size :].tolist()), batch_size=64, shuffle=True)
    model, optimizer = build(cfg, device)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss.item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of our loop (median is reported)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each and a shorter peak measurement")
    parser.add_argument("--accuracy", action="store_true", help="also train a whole run in fp32 and in bf16")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.batch_size=256")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf")):
        cfg = compose(config_name="config", overrides=args.overrides)
    device, _ = set_up(cfg)
    m = cfg.model
    print(
        f"model {m.num_layers}x{m.layer_size} {m.activation}, batch {cfg.trainer.batch_size}, "
        f"max_shift {cfg.data.max_shift}"
    )

    def peak() -> float:
        return matmul_peak((512, 1024, 2048), 0.3 if args.quick else 0.6) if device.type == "cpu" else float("nan")

    times, peaks, images, flops = ours(cfg, device, epochs, peak)
    epoch = statistics.median(times)
    achieved = images * flops / epoch / 1e9
    ratio = statistics.median(images * flops / t / 1e9 / p for t, p in zip(times, peaks, strict=True))
    bf16_times, _, _, _ = ours(cfg, device, epochs, lambda: float("nan"), precision="bf16")
    bf16_epoch = statistics.median(bf16_times)
    base = conventional(cfg, device) if cfg.data.name == "mnist" else float("nan")  # torchvision's MNIST only

    rows = [
        (f"our epoch (s, median of {len(times)})", f"{epoch:.2f}"),
        ("our images / s", f"{images / epoch:,.0f}"),
        ("training GFLOP/s achieved", f"{achieved:.1f}"),
        (f"fp32 matmul peak GFLOP/s (measured, median of {len(peaks)})", f"{statistics.median(peaks):.1f}"),
        ("achieved / peak (median over epochs, each vs its own peak)", f"{ratio:.0%}"),
        (f"bf16 autocast epoch (s, median of {len(bf16_times)})", f"{bf16_epoch:.2f}"),
        ("bf16 speed-up over fp32", f"{epoch / bf16_epoch:.2f}x"),
        ("conventional epoch (s, DataLoader batch 64)", f"{base:.2f}" if base == base else "n/a (MNIST only)"),
        ("speed-up (conventional / ours)", f"{base / epoch:.1f}x" if base == base else "n/a"),
    ]
    if args.accuracy:  # whole runs, as train.py does them, in each precision
        import tempfile

        from mlp.run.experiment import run

        with tempfile.TemporaryDirectory() as tmp:  # one MLflow store for both runs
            for precision in ("fp32", "bf16"):
                extra = [f"trainer.precision={precision}", f"tracking.dir={tmp}", "tracking.log_model=false"]
                with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf")):
                    result = run(compose(config_name="config", overrides=[*args.overrides, *extra]))
                rows.append((f"{precision}: test accuracy of a whole run", f"{result.test_acc:.2%}"))
                rows.append((f"{precision}: training seconds of that run", f"{result.metrics['train_seconds']:.1f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>16}")


if __name__ == "__main__":
    main()
