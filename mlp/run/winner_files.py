"""Winner files: a study's best trial as a config group option, conf/model/best.yaml for the
default study (``python train.py model=best``) and best_<study>.yaml for others. A sweep
writes them (mlp.sweep.export); here is what a run reads of them: the file's name and the
``# winner:`` line that says which study and trial it holds."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from mlp.errors import ConfigError

WINNER_LINE = re.compile(r"^# winner: study=(?P<study>\S+) trial=(?P<trial>\d+) value=(?P<value>\S+)", re.M)

# A study name is also a file name (best_<study>.yaml), a Hydra override value and an MLflow tag:
# letters, digits, '_' and '-' only, so that distinct names never share a winner file.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
STUDY_NAME_RULE = "1 to 64 letters, digits, '_' or '-', starting with a letter or digit (e.g. mnist-mlp)"


def check_study_name(name: Any, key: str = "hydra.sweeper.study_name") -> str:
    """The study name, or ConfigError naming ``key`` and the rule."""
    if not isinstance(name, str) or STUDY_NAME.fullmatch(name) is None:
        raise ConfigError(key, name, STUDY_NAME_RULE)
    return name


def winner_file(conf_dir: str, study_name: str, default_study: str = "mnist-mlp") -> str:
    """A study's winner file: conf/model/best.yaml for the default study, else best_<study>.yaml,
    the name as it is, so distinct studies never share a file. (Names are checked where they come
    in, with check_study_name: the sweeper's settings, sweep.py export.)"""
    if study_name == default_study:
        return str(Path(conf_dir) / "model" / "best.yaml")
    return str(Path(conf_dir) / "model" / f"best_{study_name}.yaml")


def recorded_winner(path: Path) -> tuple[str, int] | None:
    """(study, trial) that a winner file says it holds, or None."""
    recorded = winner_record(path)
    return None if recorded is None else recorded[:2]


def winner_record(path: Path) -> tuple[str, int, float] | None:
    """(study, trial, value) from a winner file's ``# winner:`` line, or None."""
    with contextlib.suppress(OSError, ValueError):
        if match := WINNER_LINE.search(path.read_text()):
            return match["study"], int(match["trial"]), float(match["value"])
    return None


def winner_origin(choices: dict[str, str], sources: list[str]) -> dict[str, str] | None:
    """{"study", "trial"} when the run's model group is a winner file (model=best, model=best_<study>)
    with its ``# winner:`` line; ``sources`` are the config folders Hydra searched."""
    choice = choices.get("hydra.choice.model")
    for folder in sources if choice else []:
        if (record := winner_record(Path(folder) / "model" / f"{choice}.yaml")) is not None:
            return {"study": record[0], "trial": str(record[1])}
    return None
