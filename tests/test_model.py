import pytest
import torch
from torch import nn

from mlp.model import ACTIVATIONS, MLP, describe


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_shapes_and_layer_counts(activation: str, num_layers: int) -> None:
    model = MLP(num_layers=num_layers, layer_size=32, activation=activation)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert linears[0].in_features == 784 and linears[-1].out_features == 10
    assert all(m.out_features == 32 for m in linears[:-1])
    assert sum(isinstance(m, ACTIVATIONS[activation]) for m in model) == num_layers - 1
    assert model(torch.randn(5, 784)).shape == (5, 10)
    assert model(torch.randn(5, 28, 28)).shape == (5, 10)  # images are flattened


def test_default_is_the_write_up_network() -> None:
    model = MLP()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 512), (512, 512), (512, 10)]
    assert isinstance(model[2], nn.LeakyReLU)
    assert not any(isinstance(m, nn.Dropout) for m in model)
    assert model.flops_per_example() == 2 * (784 * 512 + 2 * 512 * 512 + 512 * 10)


def test_dropout_after_each_hidden_activation() -> None:
    model = MLP(num_layers=3, layer_size=16, dropout=0.5)
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.5]


@pytest.mark.parametrize("kwargs", [{"num_layers": 0}, {"activation": "swish"}])
def test_bad_values_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MLP(**kwargs)


def test_describe() -> None:
    assert describe(4, 512, "leaky_relu") == "mlp-4x512-leaky_relu"
