"""What elastic distortions (data.elastic_alpha > 0) cost, measured in one run:

- seconds per training epoch of a 4x1024 net (conf/model/mlp.yaml with model.layer_size=1024,
  the default trainer's batch size and precision) over MNIST's 50,000-image training split, with
  no augmentation, today's shift, the affine one (shift, rotation, scale) and the affine one
  composed with Simard's elastic field (alpha 34, sigma 4); epochs interleaved in rounds, each
  variant's best (least contended) and median epoch, and the best's ratio to the best without;
- each augmentation alone, milliseconds per batch, and times an epoch's batches as a share of the
  epoch without (robust on a shared machine, where whole epochs drift);
- four ways to make the field: noise on the blur's strongest directions (data.RandomElastic),
  Simard's per-pixel noise blurred by two matrix products or by two 1-D convolutions, and noise
  drawn at 14x14 (sigma 2) and upsampled; with the field's rms and smoothness, to show whether
  they look the same.

    python benchmarks/elastic.py                    # 3 rounds of 4 epochs (a few minutes on 2 cores)
    python benchmarks/elastic.py --images 10000     # epochs over the first 10,000 training images
    python benchmarks/elastic.py data=synthetic --rounds 1   # a smoke run, no MNIST needed
    python benchmarks/elastic.py --figure docs/elastic.png   # only draw distorted test digits
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from epoch_speed import set_up
from hydra import compose, initialize_config_dir

from mlp import PROJECT_ROOT
from mlp.run import data, training
from mlp.run.model import MLP

ALPHA, SIGMA = 34.0, 4.0  # Simard et al. (2003)
SHIFT, ROTATION, SCALE = 2, 10.0, 0.1


def variants(device: torch.device) -> dict[str, data.Augmentation | None]:
    return {
        "none": None,
        f"shift {SHIFT} px (RandomShift)": data.RandomShift(SHIFT, device),
        f"affine: shift {SHIFT}, rotation {ROTATION:g}, scale {SCALE:g}": data.RandomAffine(SHIFT, ROTATION, SCALE),
        f"affine + elastic alpha {ALPHA:g}, sigma {SIGMA:g}": data.RandomElastic(SHIFT, ROTATION, SCALE, ALPHA, SIGMA),
    }


def epochs(cfg, device: torch.device, precision: str, images: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each variant's training epochs; the variants interleaved (their order rotated
    each round), so a shared machine's drift falls on all of them alike, after a few untimed
    batches of each (first calls allocate)."""
    splits = data.load_config(cfg.data, str(device))
    x, y = splits.train_x[:images], splits.train_y[:images]
    b = cfg.trainer.batch_size
    warm = min(len(x), 3 * b)
    steps = -(-len(x) // b)
    runs = {}
    for name, augment in variants(device).items():
        torch.manual_seed(cfg.trainer.seed)
        m = cfg.model
        model = MLP(m.num_layers, m.layer_size, m.activation, m.dropout).to(device)
        optimizer = training.make_optimizer(cfg.optimizer, model)
        schedule = training.make_schedule(cfg.schedule, optimizer, steps * rounds + -(-warm // b))
        generator = torch.Generator().manual_seed(cfg.trainer.seed)
        training.train_epoch(
            model, x[:warm], y[:warm], optimizer, schedule, batch_size=b, generator=generator, augment=augment,
            precision=precision,
        )  # fmt: skip
        runs[name] = (model, optimizer, schedule, augment, generator)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, optimizer, schedule, augment, generator = runs[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            training.train_epoch(
                model, x, y, optimizer, schedule, batch_size=b, generator=generator, augment=augment,
                precision=precision,
            )  # fmt: skip
            times[name].append(time.perf_counter() - start)  # train_epoch ends with .item(): synchronised
    return times


def per_call_ms(f: Callable[[], object], device: torch.device, calls: int = 10, repeats: int = 5) -> float:
    """Best of ``repeats`` averages over ``calls`` calls: the least contended measurement."""
    f()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            f()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / calls * 1e3)
    return best


def blur_alternatives(b: int, device: torch.device, g: torch.Generator) -> dict[str, Callable[[], torch.Tensor]]:
    """[2b, 28, 28] smoothed noise in pixels, three ways (the noise drawn on the CPU generator)."""
    elastic = data.RandomElastic(0, 0, 0.0, ALPHA, SIGMA)
    radius = int(4 * SIGMA)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(taps**2) / (2 * SIGMA**2))
    k = (k / k.sum()).to(device)
    half = data.gaussian_matrix(SIGMA / 2, 14).to(device)

    def noise(side: int) -> torch.Tensor:
        return (torch.rand(2 * b, 1, side, side, generator=g) * 2 - 1).to(device)

    def conv() -> torch.Tensor:
        rows = F.conv2d(noise(28), k.view(1, 1, 1, -1), padding=(0, radius))
        return F.conv2d(rows, k.view(1, 1, -1, 1), padding=(radius, 0))[:, 0] * ALPHA

    def low() -> torch.Tensor:
        smooth = half @ noise(14)[:, 0] @ half.T
        return F.interpolate(smooth[:, None], size=28, mode="bilinear", align_corners=False)[:, 0] * ALPHA

    blur = data.gaussian_matrix(SIGMA).to(device)

    def per_pixel() -> torch.Tensor:
        return blur @ noise(28)[:, 0] @ blur.T * ALPHA

    return {
        "strongest directions (used)": lambda: elastic.field(b, device, g).permute(0, 3, 1, 2).reshape(-1, 28, 28) * 14,
        "per pixel, matrix products": per_pixel,
        "per pixel, two 1-D convolutions": conv,
        "14x14, sigma 2, upsampled": low,
    }


def field_stats(field: torch.Tensor) -> tuple[float, float]:
    """(rms at the centre in pixels, correlation of displacements 3 pixels apart)."""
    centre = field[:, 12:16, 12:16]
    near = torch.stack([field[:, 14, 12].flatten(), field[:, 14, 15].flatten()]).float()
    return centre.pow(2).mean().sqrt().item(), torch.corrcoef(near)[0, 1].item()


def draw_figure(path: str, root: str) -> None:
    """MNIST's first test digits, then three elastic distortions of each (alpha 34, sigma 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    _, _, test_images, _ = data.read_mnist(root)
    x = ((test_images[:8].float() / 255 - data.MEAN) / data.STD).flatten(1)
    elastic = data.RandomElastic(0, 0, 0.0, ALPHA, SIGMA)
    g = torch.Generator().manual_seed(0)
    rows = [x, *(elastic(x, g) for _ in range(3))]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(len(x) * 0.75, len(rows) * 0.8))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r, c].imshow(image.view(28, 28) * data.STD + data.MEAN, cmap="gray_r", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel("original" if r == 0 else f"draw {r}", fontsize=7)
    fig.suptitle(f"data.elastic_alpha={ALPHA:g} data.elastic_sigma={SIGMA:g} (no shift, rotation or scale)", fontsize=8)
    fig.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    Image.open(buffer).convert("L").save(path, optimize=True)  # grey levels only: a small file
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each variant, interleaved (median reported)")
    parser.add_argument("--images", type=int, default=0, help="train on the first N training images (0: all)")
    parser.add_argument("--figure", metavar="PNG", help="only draw distorted MNIST test digits into this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.precision=fp32")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf")):
        cfg = compose(config_name="config", overrides=["model.layer_size=1024", *args.overrides])
    if args.figure:
        draw_figure(args.figure, cfg.data.root)
        return
    device, precision = set_up(cfg)
    m, b = cfg.model, cfg.trainer.batch_size
    pool = data.pool_size(cfg.data.name, cfg.data.get("num_train", 0)) - cfg.data.val_size
    images = min(args.images or pool, pool)
    print(
        f"model {m.num_layers}x{m.layer_size} {m.activation}, batch {b}, {precision}; "
        f"data={cfg.data.name}: {images:,} training images per epoch, {args.rounds} rounds of interleaved epochs"
    )

    times = epochs(cfg, device, precision, images, args.rounds)
    none = min(times["none"])
    width = max(len(name) for name in times)
    print(f"\n{'augmentation':<{width}}  {'epoch s, best':>13}  {'median':>6}  {'best vs none':>12}")
    for name, ts in times.items():
        print(f"{name:<{width}}  {min(ts):13.2f}  {statistics.median(ts):6.2f}  {min(ts) / none:11.2f}x")
    affine, elastic = (min(ts) for ts in list(times.values())[2:])
    print(f"elastic's own cost, (affine + elastic - affine) / none, best epochs: {(elastic - affine) / none:.1%}")

    g = torch.Generator().manual_seed(0)
    x = data.load_config(cfg.data, str(device)).train_x[:b]
    batches = -(-images // b)
    print(
        f"\naugmentation alone (ms per batch of {len(x)}, best of 5 x 10 calls; x {batches} batches / best epoch none)"
    )
    alone = {}
    for name, augment in variants(device).items():
        if augment is not None:
            alone[name] = ms = per_call_ms(lambda a=augment: a(x, g), device)
            print(f"  {name:<{width}}  {ms:7.2f}  {ms * batches / 1e3 / none:6.1%}")
    affine_ms, elastic_ms = list(alone.values())[1:]
    print(f"elastic's own cost so measured: {(elastic_ms - affine_ms) * batches / 1e3 / none:.1%} of the epoch without")
    print("the elastic field alone (ms per batch, noise included; rms px at the centre; corr. 3 px apart)")
    for name, f in blur_alternatives(len(x), device, g).items():
        rms, corr = field_stats(torch.cat([f() for _ in range(4)]))
        print(f"  {name:<{width}}  {per_call_ms(f, device):7.2f}  {rms:5.2f} px  {corr:5.2f}")


if __name__ == "__main__":
    main()
