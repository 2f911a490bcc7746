import pytest
import torch
from torch import nn

from mlp.run.model import ACTIVATIONS, MLP, describe, parameter_count


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


@pytest.mark.parametrize(
    ("kwargs", "named"), [({"num_layers": 0}, "num_layers"), ({"activation": "swish"}, "activation")]
)
def test_bad_values_are_refused(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MLP(**kwargs)


def test_describe() -> None:
    assert describe(4, 512, "leaky_relu") == "mlp-4x512-leaky_relu"


def test_random_shift_translates_each_image_by_its_own_offset() -> None:
    from mlp.run.data import MEAN, STD, RandomShift

    background = (0 - MEAN) / STD
    images = torch.full((400, 28, 28), background)
    images[:, 14, 14] = 5.0  # one bright pixel in the middle of each
    shifted = RandomShift(2, "cpu")(images.flatten(1), torch.Generator().manual_seed(0)).view(-1, 28, 28)
    where = (shifted == 5.0).nonzero()[:, 1:]  # [400, 2]: row and column of the pixel in each output
    assert len(where) == 400  # moved, never lost or doubled
    offsets = {tuple((w - 14).tolist()) for w in where}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # every offset up to 2 pixels
    assert ((shifted == 5.0) | (shifted == background)).all()  # the rest is background


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("onecycle", lambda lrs: max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) in (24, 25) and lrs[-1] < 1e-4),
        ("cosine", lambda lrs: lrs[0] == pytest.approx(0.1) and lrs[-1] < 1e-3 and lrs == sorted(lrs, reverse=True)),
        ("constant", lambda lrs: set(lrs) == {0.1}),
    ],
)
def test_each_schedule_config_makes_its_learning_rate_curve(schedule: str, expected) -> None:
    from mlp.run import training
    from tests.helpers import compose_cfg

    cfg = compose_cfg([f"schedule={schedule}", "optimizer=sgd", "optimizer.lr=0.1"])
    optimizer = training.make_optimizer(cfg.optimizer, nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9
    scheduler = training.make_schedule(cfg.schedule, optimizer, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert expected(lrs), lrs[:3] + lrs[-3:]


@pytest.mark.parametrize("total_steps", [1, 2, 4, 8])
def test_a_one_cycle_of_a_few_steps_still_rises_and_falls(total_steps: int) -> None:
    """warmup 0.25 of 4 steps is one step, where torch's OneCycleLR divides by zero."""
    from mlp.run import training

    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = training.onecycle(optimizer, total_steps=total_steps, warmup=0.25)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < lr <= 0.1 for lr in lrs) and lrs[-1] < 0.1 + 1e-12


def test_recognizer_takes_pixels_in_every_form_and_returns_probabilities() -> None:
    from mlp.run.data import MEAN, STD
    from mlp.run.model import DigitRecognizer

    torch.manual_seed(0)
    net = MLP(num_layers=2, layer_size=16).eval()
    recognizer = DigitRecognizer(net, MEAN, STD)
    pixels = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    expected = net((pixels.flatten(1).float() / 255 - MEAN) / STD).softmax(dim=1)  # the training data's normalisation
    for form in (pixels, pixels.flatten(1), pixels.float(), pixels.double().flatten(1)):
        probs = recognizer(form)
        assert probs.dtype == torch.float32 and probs.shape == (3, 10)
        assert torch.equal(probs, expected)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize(("num_layers", "layer_size"), [(1, 7), (2, 32), (4, 512), (6, 100)])
def test_parameter_count_is_the_built_models(num_layers: int, layer_size: int) -> None:
    model = MLP(num_layers=num_layers, layer_size=layer_size)
    assert parameter_count(num_layers, layer_size) == sum(p.numel() for p in model.parameters())
