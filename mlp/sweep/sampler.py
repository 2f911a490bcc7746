"""The sampler of a study: the configured Optuna sampler (hydra.sweeper.sampler), made anew for
each trial with a seed derived from the study's seed and the trial's number, so that workers
never ask the same point twice and a study is reproducible trial by trial."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig

from mlp.errors import UserError, first_line
from mlp.sweep.kill_points import reach
from mlp.sweep.space import SearchSpace


def trial_seed(study_seed: int, number: int) -> int:
    """A trial's sampler seed: a function of the study's seed and the trial number only."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


class PerTrialSampler(optuna.samplers.BaseSampler):
    """The configured sampler, made anew for each trial with ``trial_seed(seed, number)``.

    Optuna samplers keep what they learn in the study storage, so a fresh one sees every
    worker's trials; only its random state is per trial. With one fixed seed per process,
    two workers (or a resumed sweep) would propose the same points."""

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None):
        self.make, self.seed = make, seed
        self.current = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reach("ask")  # called inside study.ask(), once the trial exists
        self.current = self.make(None if self.seed is None else trial_seed(self.seed, trial.number))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # Optuna's signature
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        reach("sampler")
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        reach("sampler")
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def sampler_factory(spec: DictConfig, space: SearchSpace) -> Callable[[int | None], optuna.samplers.BaseSampler]:
    """Build the sampler of ``hydra.sweeper.sampler`` (the official configs) with a given seed."""

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        sampler = instantiate(
            spec, seed=seed, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        )
        return sampler(space.grid()) if callable(sampler) else sampler  # the grid sampler is a partial

    try:
        make(0)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"hydra.sweeper.sampler: cannot make {spec.get('_target_')} ({first_line(e)})") from e
    return make
