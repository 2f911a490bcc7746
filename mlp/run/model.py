"""The multi-layer perceptron: plain torch, built from plain values."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}

IN_FEATURES, NUM_CLASSES = 28 * 28, 10


class Dropout(nn.Module):
    """Dropout whose masks cost what random bits cost: int64 draws viewed as 16-bit words, each
    element kept when its word reaches a threshold, so the kept fraction is ``1 - p`` rounded to
    1/65536 and the kept elements are scaled by exactly its inverse (the mean is preserved). On a
    CPU this is about a sixth of ``nn.Dropout``'s time, whose ``bernoulli_`` draws a float per
    element (benchmarks/step_speed.py). ``generator`` (on the input's device) supplies the bits,
    so that a seeded run repeats them; None: torch's default generator. Eval mode is the identity."""

    def __init__(self, p: float, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p, self.generator = p, generator
        # A word w, uniform over the int16 range, is kept iff w >= threshold.
        dropped = round(p * 65536)
        self.threshold, self.scale = dropped - 32768, 65536 / (65536 - dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty(-(-n // 4), dtype=torch.int64, device=x.device)
        words = bits.random_(-(2**63), None, generator=self.generator).view(torch.int16)[:n].view(x.shape)
        return x * (words >= self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Sequential):
    """``num_layers`` Linear layers: num_layers-1 hidden layers of ``layer_size``, then the
    10-way output. Takes [B, 784] or [B, 28, 28] (flattened) and returns [B, 10] logits.
    ``generator`` draws the dropout masks (see ``Dropout``); ``masks="torch"``: torch's
    ``nn.Dropout`` instead, as runs before 2026-12-06 used (a winner file trained with it says so)."""

    def __init__(
        self,
        num_layers: int = 4,
        layer_size: int = 512,
        activation: str = "leaky_relu",
        dropout: float = 0.0,
        in_features: int = IN_FEATURES,
        num_classes: int = NUM_CLASSES,
        masks: str = "bits",
        generator: torch.Generator | None = None,
    ):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, layer_size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(Dropout(dropout, generator) if masks == "bits" else nn.Dropout(dropout))
            width = layer_size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)

    def flops_per_example(self) -> int:
        """Multiply-adds x2 of one forward pass (the Linear layers; activations are noise)."""
        return sum(2 * m.in_features * m.out_features for m in self if isinstance(m, nn.Linear))


def parameter_count(num_layers: int, layer_size: int, in_features: int = IN_FEATURES) -> int:
    """Weights and biases of ``MLP(num_layers, layer_size)``, counted without building it."""
    widths = [in_features] + [layer_size] * (num_layers - 1) + [NUM_CLASSES]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))


def describe(num_layers: int, layer_size: int, activation: str) -> str:
    """A short name for runs, e.g. ``mlp-4x512-leaky_relu``."""
    return f"mlp-{num_layers}x{layer_size}-{activation}"


class DigitRecognizer(nn.Module):
    """A trained network with MNIST's preprocessing in front and softmax behind: the model
    that MLflow logs. Takes pixel values 0-255 (a light digit on a dark ground, as MNIST),
    uint8 or float, [N, 28, 28] or [N, 784]; returns the 10 class probabilities [N, 10].

    ``mean`` and ``std`` are those the network was trained with (of pixels scaled to [0, 1])."""

    def __init__(self, network: nn.Module, mean: float, std: float):
        super().__init__()
        self.network = network
        self.mean, self.std = mean, std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The same float32 operations as the training data's normalisation, so that the
        # probabilities and hence the accuracy are those the run measured.
        x = pixels.flatten(1).to(torch.float32)
        return self.network((x / 255 - self.mean) / self.std).softmax(dim=1)
