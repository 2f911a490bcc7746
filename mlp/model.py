"""The multi-layer perceptron: plain torch, built from plain values."""

from __future__ import annotations

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


class MLP(nn.Sequential):
    """``num_layers`` Linear layers: num_layers-1 hidden layers of ``layer_size``, then the
    10-way output. Takes [B, 784] or [B, 28, 28] (flattened) and returns [B, 10] logits."""

    def __init__(
        self,
        num_layers: int = 4,
        layer_size: int = 512,
        activation: str = "leaky_relu",
        dropout: float = 0.0,
        in_features: int = IN_FEATURES,
        num_classes: int = NUM_CLASSES,
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
                layers.append(nn.Dropout(dropout))
            width = layer_size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)

    def flops_per_example(self) -> int:
        """Multiply-adds x2 of one forward pass (the Linear layers; activations are noise)."""
        return sum(2 * m.in_features * m.out_features for m in self if isinstance(m, nn.Linear))


def describe(num_layers: int, layer_size: int, activation: str) -> str:
    """A short name for runs, e.g. ``mlp-4x512-leaky_relu``."""
    return f"mlp-{num_layers}x{layer_size}-{activation}"
