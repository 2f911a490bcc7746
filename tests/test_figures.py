"""Optuna's figures as the project saves them: every parameter name in full, tick labels that
lines do not run through, pruned trials marked (a study made in memory, no training)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import optuna
import pytest

from mlp.sweep.report import optuna_figures

SPACE = {
    "model.activation": optuna.distributions.CategoricalDistribution(["relu", "silu"]),
    "model.num_layers": optuna.distributions.IntDistribution(2, 4),
    "optimizer.weight_decay": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
}


@pytest.fixture(scope="module")
def figures() -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(12):
        trial = study.ask(SPACE)
        for epoch in range(1, 4):
            trial.report(0.9 + 0.01 * epoch + 0.001 * i, 100 * epoch // 3)
        if i % 4 == 3:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.93 + 0.001 * i)
    found = optuna_figures(study)
    yield found
    for fig in found.values():
        matplotlib.pyplot.close(fig)


def test_parallel_coordinate_names_every_axis_in_full_on_a_white_ground(figures: dict) -> None:
    fig = figures["optuna/parallel_coordinate.png"]
    base, *twins = fig.axes
    names = [label.get_text() for label in base.get_xticklabels()]
    assert names == ["Objective Value", "model.activation", "model.num_layers", "optimizer.weight_decay"]
    assert fig.get_size_inches()[0] >= 1.5 * len(names)
    ticks = [label for ax in twins if ax.get_label() != "<colorbar>" for label in ax.get_yticklabels()]
    assert ticks and all(label.get_bbox_patch() is not None for label in ticks)


def test_pruned_trials_are_marked_in_the_intermediate_values(figures: dict) -> None:
    ax = figures["optuna/intermediate_values.png"].axes[0]
    assert sorted(line.get_label() for line in ax.get_lines() if "(pruned)" in line.get_label()) == [
        "Trial11 (pruned)", "Trial3 (pruned)", "Trial7 (pruned)",
    ]  # fmt: skip


def test_param_importances_keep_the_names(figures: dict) -> None:
    ax = figures["optuna/param_importances.png"].axes[0]
    assert {label.get_text() for label in ax.get_yticklabels()} == set(SPACE)


def test_slice_log_axes_read_as_plain_numbers(figures: dict) -> None:
    fig = figures["optuna/slice.png"]
    fig.canvas.draw()
    (log_axis,) = [ax for ax in fig.axes if ax.get_xscale() == "log"]  # optimizer.weight_decay
    shown = [label.get_text() for label in log_axis.get_xticklabels() if label.get_text()]
    assert shown and set(shown) <= {"0.0001", "0.001", "0.01", "0.1"}, shown


def test_no_importances_from_no_more_trials_than_parameters() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(len(SPACE)):
        study.tell(study.ask(SPACE), 0.9 + 0.01 * i)
    found = optuna_figures(study)
    assert "optuna/param_importances.png" not in found and "optuna/optimization_history.png" in found
    study.tell(study.ask(SPACE), 0.95)  # one trial more than parameters
    assert "optuna/param_importances.png" in optuna_figures(study)
    for fig in found.values():
        matplotlib.pyplot.close(fig)
