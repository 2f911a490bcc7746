"""What Hydra says about the job this process runs (nothing when it runs outside Hydra, as in
tests that call ``run(cfg)``): whether it is a sweep trial, its overrides, the group options it
was composed from, its sweep folder and the config folders Hydra searched."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode


def in_sweep() -> bool:
    """True inside a Hydra multirun job (a sweep trial)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def group_choices(groups: tuple[str, ...]) -> dict[str, str]:
    """The options of ``groups`` (mlp.run.config.GROUPS) this run was composed from
    (``hydra.choice.optimizer``: sgd, ...), so a winner file written from its record selects the
    same groups."""
    if not HydraConfig.initialized():
        return {}
    chosen = HydraConfig.get().runtime.choices
    return {f"hydra.choice.{g}": str(chosen[g]) for g in groups if chosen.get(g) is not None}


def chosen(group: str) -> list[str]:
    """The options of ``group`` as this run chose them: a list for ``model=[mlp,best]`` (which
    Hydra's record of choices leaves out), else the one option, or none outside Hydra."""
    if not HydraConfig.initialized():
        return []
    for override in reversed(OverridesParser.create().parse_overrides(task_overrides())):
        if override.key_or_group == group and not override.is_delete():
            value = override.value()
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    choice = HydraConfig.get().runtime.choices.get(group)
    return [] if choice is None else [str(choice)]


def sweep_dir() -> str:
    return str(HydraConfig.get().sweep.dir) if HydraConfig.initialized() else ""


def config_folders() -> list[str]:
    """The folders Hydra searched for config files (conf/, and any --config-dir)."""
    if not HydraConfig.initialized():
        return []
    return [s["path"] for s in HydraConfig.get().runtime.config_sources if s["schema"] == "file"]
