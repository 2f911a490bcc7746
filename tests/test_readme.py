"""The README's `python train.py ...` commands compose as written: every group, key and value
they name exists (the config is composed with Hydra's compose API and validated, the
sweeper's settings included), and the error examples fail with the line the README shows."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from mlp.config import validate
from mlp.errors import one_line
from tests.conftest import CONF, ROOT

COMMAND = re.compile(r"^\s+(\$ )?(?:\.venv/bin/)?python train\.py(.*)$")


def readme_commands() -> list[tuple[str, list[str], str | None]]:
    """(line, overrides, expected error or None) for each train.py command in a code block."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if not (match := COMMAND.match(line)):
            continue
        words = shlex.split(match[2].split(" #")[0].rstrip(" \\"))
        if "$" in match[2] or any(w.startswith(("--", ">")) or w == "&" for w in words):
            continue  # shell variables, redirections, flags: not config
        expected = lines[i + 1].strip() if match[1] else None  # "$ command" is followed by its output
        found.append((line.strip(), words, expected))
    return found


def compose_command(words: list[str]):
    sweep = "-m" in words
    overrides = [w for w in words if w != "-m"]
    if sweep:  # sweep values (choice(...), interval(...)) are the sweeper's to parse, not the composer's
        overrides = [o for o in overrides if "(" not in o]
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", overrides, return_hydra_config=sweep)
    validate(cfg)
    return cfg


def test_the_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 15 and sum(e is not None for _, _, e in commands) == 2


@pytest.mark.parametrize(
    ("line", "words", "expected"), readme_commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_readme_command_composes_as_written(line: str, words: list[str], expected: str | None) -> None:
    if expected is None:
        cfg = compose_command(words)
        if "-m" in words:
            assert cfg.hydra.sweeper.study_name and cfg.hydra.sweeper.params
        return
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever it is, its one line is the README's
        compose_command(words)
    assert f"error: {one_line(info.value)}" == expected
