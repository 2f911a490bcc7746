"""Winner files: a study's best trial as a config group option, conf/model/best.yaml for the
default study (``python train.py model=best``) and best_<study>.yaml for others. A sweep
writes them (mlp.sweep.export); here is what a run reads of them: the file's name and the
``# winner:`` line that says which study and trial it holds, its score and what that score was
made on (``TrainedOn``: only scores made on the same data and split are compared, for winner
files as for the registry's champion)."""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mlp import PROJECT_ROOT
from mlp.errors import ConfigError

WINNER_LINE = re.compile(
    r"^# winner: study=(?P<study>\S+) trial=(?P<trial>\d+) value=(?P<value>\S+)(?: run=\S+)?"
    r"(?: data=(?P<data>\S+) val_size=(?P<val_size>\d+) split_seed=(?P<split_seed>\d+))?",
    re.M,
)


@dataclass(frozen=True)
class TrainedOn:
    """What a model was trained and scored on: the data set and its train/validation split."""

    data: str
    val_size: int
    split_seed: int

    @classmethod
    def of(cls, data: Any) -> TrainedOn:
        """From a run's ``data`` config, or its params/tags (``data.name``, ``data.val_size``, ``data.split_seed``)."""
        if isinstance(data, dict):
            return cls(str(data["data.name"]), int(data["data.val_size"]), int(data["data.split_seed"]))
        return cls(str(data.name), int(data.val_size), int(data.split_seed))

    @property
    def canonical(self) -> bool:
        return self == canonical_split()

    def tags(self) -> dict[str, str]:
        return {
            "data.name": self.data,
            "data.val_size": str(self.val_size),
            "data.split_seed": str(self.split_seed),
            "champion_eligible": str(self.canonical).lower(),
        }

    def __str__(self) -> str:
        split = f"val_size {self.val_size}, split_seed {self.split_seed}"
        if self.canonical:
            return f"MNIST's canonical split ({split})"
        return f"MNIST with {split}" if self.data == "mnist" else f"data={self.data}"


@functools.cache
def canonical_split() -> TrainedOn:
    """data=mnist with conf/data/mnist.yaml's own val_size and split_seed (10000, 0): the split every
    champion was validated on, whatever a run overrides."""
    defaults = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / "mnist.yaml")
    return TrainedOn(str(defaults.name), int(defaults.val_size), int(defaults.split_seed))


@dataclass(frozen=True)
class WinnerRecord:
    """A winner file's ``# winner:`` line: the study and trial it holds, the trial's validation
    accuracy, and what that accuracy was made on (None: not recorded, so never comparable)."""

    study: str
    trial: int
    value: float
    trained_on: TrainedOn | None

    def line(self, run_id: str) -> str:
        """The ``# winner:`` line of a file that holds this trial (read back by ``winner_record``)."""
        line = f"# winner: study={self.study} trial={self.trial} value={self.value!r} run={run_id or 'unknown'}"
        if (t := self.trained_on) is not None:
            line += f" data={t.data} val_size={t.val_size} split_seed={t.split_seed}"
        return line


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


def winner_record(path: Path) -> WinnerRecord | None:
    """What a winner file's ``# winner:`` line records, or None (no file, not a winner file). A
    file written before the line named its data takes it from its own ``data`` section: the
    values its trial ran with."""
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        if match := WINNER_LINE.search(path.read_text()):
            if match["data"] is not None:
                trained_on = TrainedOn(match["data"], int(match["val_size"]), int(match["split_seed"]))
            else:
                trained_on = _data_section(path)
            return WinnerRecord(match["study"], int(match["trial"]), float(match["value"]), trained_on)
    return None


def _data_section(path: Path) -> TrainedOn | None:
    with contextlib.suppress(Exception):  # any file that does not say is unrecorded
        return TrainedOn.of(OmegaConf.load(path).data)
    return None


def chosen_winner(options: list[str], folders: list[str]) -> tuple[Path, WinnerRecord] | None:
    """The first winner file among a run's model options (``model=best``, ``model=[mlp,best]``) in
    the config folders Hydra searched, with what its ``# winner:`` line records."""
    for option in options:
        for folder in folders:
            if (record := winner_record(path := Path(folder) / "model" / f"{option}.yaml")) is not None:
                return path, record
    return None


def winner_origin(choices: dict[str, str], sources: list[str]) -> dict[str, str] | None:
    """{"study", "trial"} when the run's model group is a winner file (model=best, model=best_<study>)
    with its ``# winner:`` line; ``sources`` are the config folders Hydra searched."""
    choice = choices.get("hydra.choice.model")
    found = chosen_winner([choice] if choice else [], sources)
    return None if found is None else {"study": found[1].study, "trial": str(found[1].trial)}
