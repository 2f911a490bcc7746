"""The search space: Hydra's sweep grammar (``choice``, ``range``, ``interval``, ``tag(log, ...)``)
read with Hydra's public override parser and turned into Optuna distributions.

    space = SearchSpace.parse(["model.num_layers=range(2, 6)", "optimizer.lr=tag(log, interval(1e-4, 1e-2))"])
    overrides = space.suggest(trial)   # ["model.num_layers=4", "optimizer.lr=0.0031", ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from mlp.errors import UserError, first_line

GRAMMAR = "choice(a, b, ...), range(start, stop[, step]), interval(low, high) or tag(log, interval(low, high))"


def _bad(override: Override | str, why: str) -> UserError:
    line = override if isinstance(override, str) else override.input_line
    return UserError(f"search space: {line}: {why}; expected {GRAMMAR} with low < high")


def _choices(override: Override) -> list[Any]:
    return list(override.sweep_iterator(transformer=Transformer.encode))


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``key=choice(...)`` and the like)."""
    value = override.value()
    if override.is_choice_sweep():
        choices = _choices(override)
        if not choices:
            raise _bad(override, "no choices")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        if value.step == 0:
            raise _bad(override, "step 0")
        values = list(value.range())
        if not values:
            raise _bad(override, "an empty range (stop is exclusive)")
        if value.shuffle or not all(isinstance(v, int) for v in values):
            return CategoricalDistribution(_choices(override) if value.shuffle else [float(v) for v in values])
        low, high = sorted((values[0], values[-1]))
        return IntDistribution(low, high, step=abs(value.step))
    if override.is_interval_sweep():
        low, high, log = value.start, value.end, "log" in value.tags
        if not low < high:
            raise _bad(override, f"low {low:g} is not below high {high:g}")
        if log and low <= 0:
            raise _bad(override, "a log interval needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise _bad(override, "not a sweep the Optuna sampler can search")


def _as_override_value(value: Any) -> str:
    if isinstance(value, float | Decimal):
        return repr(float(value))
    return str(value)


@dataclass
class SearchSpace:
    """Searched keys with their distributions, and overrides that every trial gets as they are."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: list[str]) -> SearchSpace:
        try:
            overrides = OverridesParser.create().parse_overrides(lines)
        except HydraException as e:
            raise UserError(f"search space: {first_line(e)}") from e
        space = cls()
        for override in overrides:
            key = override.get_key_element()
            if override.is_sweep_override():
                space.distributions[key] = distribution(override)
            else:
                space.fixed = [f for f in space.fixed if not f.startswith(key + "=")] + [override.input_line]
                space.distributions.pop(key, None)  # a fixed value on the command line wins over params
        return space

    def suggest(self, trial: Any) -> list[str]:
        """Ask the trial for a value of each searched key (Optuna's public suggest API); the
        trial's overrides, including any that a custom search space added to the trial."""
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return self.overrides(trial.params)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        return [f"{k}={_as_override_value(v)}" for k, v in params.items()] + self.fixed

    def contains(self, params: dict[str, Any]) -> bool:
        """Whether every searched key has a value inside its distribution."""
        return all(name in params and self.contains_value(name, params[name]) for name in self.distributions)

    def contains_value(self, name: str, value: Any) -> bool:
        dist = self.distributions[name]
        if value is None:
            return False
        if isinstance(dist, CategoricalDistribution):
            return value in dist.choices
        if isinstance(value, bool) or not isinstance(value, int | float) or not dist.low <= value <= dist.high:
            return False
        return not (isinstance(dist, IntDistribution) and (value - dist.low) % dist.step)

    def exhausted(self, params: list[dict[str, Any]]) -> bool:
        """Whether ``params`` (the study's trials' parameters) hold every configuration of the space,
        when it has finitely many (choices and integer ranges only): a new trial could only repeat one."""
        size = 1
        for dist in self.distributions.values():
            if isinstance(dist, CategoricalDistribution):
                size *= len(dist.choices)
            elif isinstance(dist, IntDistribution):
                size *= len(range(dist.low, dist.high + 1, 1 if dist.log else dist.step))
            else:
                return False  # an interval of floats
        return (
            len(
                {tuple(sorted(p.items())) for p in params if self.contains(p) and p.keys() == self.distributions.keys()}
            )
            >= size
        )

    def describe(self, name: str) -> str:
        """The key's range in words, for messages."""
        dist = self.distributions[name]
        if isinstance(dist, CategoricalDistribution):
            return f"{name}: one of {', '.join(map(str, dist.choices))}"
        step = f" in steps of {dist.step}" if getattr(dist, "step", None) and dist.step != 1 else ""
        kind = "an integer" if isinstance(dist, IntDistribution) else "a number"
        return f"{name}: {kind} from {dist.low} to {dist.high}{step}"

    def grid(self) -> dict[str, list[Any]]:
        """The values of each key, for Optuna's GridSampler (discrete spaces only)."""
        grid = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[name] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise UserError(f"search space: {name}: the grid sampler needs choice(...) or range(...) values")
        return grid
