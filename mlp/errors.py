"""Errors a user can fix, and the entry-point wrapper that shows each as one line."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn


class UserError(Exception):
    """A problem with the input (config, files, environment), not a bug: shown as one line."""


class ConfigError(UserError):
    def __init__(self, key: str, value: Any, accepted: str):
        super().__init__(f"{key}={value!r} is not accepted: expected {accepted}")


class DataError(UserError):
    pass


class DivergedError(UserError):
    pass


def accepted_keys(object_type: Any) -> str:
    if dataclasses.is_dataclass(object_type):
        return "; accepted keys: " + ", ".join(f.name for f in dataclasses.fields(object_type))
    return ""


def first_line(ex: BaseException) -> str:
    """An exception's first line of text, or its type's name when it has none."""
    text = str(ex).strip()
    return text.splitlines()[0] if text else type(ex).__name__


# Hydra reports a bad combination of its flags (e.g. -m with --cfg) as a ValueError naming them.
HYDRA_FLAG_ERROR = re.compile(r"--(run|multirun|cfg|info|resolve|shell.completion|experimental-rerun|config-name)\b")


def _raised_by_hydras_command_line(ex: BaseException) -> bool:
    return type(ex) is ValueError and HYDRA_FLAG_ERROR.search(str(ex)) is not None


# A config file setting a key that the group option chosen beside it lacks, e.g. `optimizer=sgd model=best`
# with a winner found with AdamW (Hydra reports it as text, without the OmegaConf error as its cause).
FILE_KEY_ERROR = re.compile(r"In '([^']+)': ConfigKeyError raised while composing config:\s*"
                            r"Key '[^']+' not in '(\w+)'\s*full_key: (\S+)")  # fmt: skip


def _key_from_a_file(source: str, schema: str, key: str) -> str:
    from mlp import config

    group = key.split(".")[0]
    accepted = accepted_keys(getattr(config, schema, None))
    hint = (
        f" ({source} is a winner file: it selects its own {group}; leave {group}=... out)"
        if source.startswith("model/best")
        else ""
    )
    return f"{key}: set by {source}, but the chosen {group} ({schema}) has no such key{hint}{accepted}"


def check_writable_folder(key: str, folder: str | Path) -> None:
    """``folder`` (made later) can be made and written: the nearest part of it that exists is a
    folder we can write in. Probed with a temporary file, so nothing is left behind."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(key, str(folder), f"a writable folder ({existing} is a file)")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(key, str(folder), f"a writable folder (cannot write in {existing}: {e.strerror})") from e


NO_SPACE = {errno.ENOSPC: "ENOSPC", errno.EFBIG: "EFBIG", errno.EDQUOT: "EDQUOT"}  # full disk, file size limit, quota


def _chain(ex: BaseException) -> list[BaseException]:
    """``ex`` and every exception it came from or was raised while handling."""
    found: list[BaseException] = []
    todo = [ex]
    while todo:
        if (e := todo.pop()) is not None and all(e is not f for f in found):
            found.append(e)
            todo += [e.__context__, e.__cause__]
    return found


def out_of_space(ex: BaseException) -> tuple[str | None, str] | None:
    """(the file being written where known, why) when ``ex`` comes from a full disk (or a file
    size limit or quota), be it a file's write or SQLite's; else None."""
    files = [e for e in _chain(ex) if isinstance(e, OSError) and e.errno in NO_SPACE]
    # A failed write of a file is often followed by failed writes to the database (MLflow
    # recording the failure): the file is what filled the disk.
    for e in sorted(files, key=lambda e: e.filename is None):
        # A copy names (source, destination): the destination is what could not be written.
        return e.filename2 or e.filename, f"{e.strerror}, {NO_SPACE[e.errno]}"
    for e in _chain(ex):
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return None, str(e)
    return None


def no_space_line(path: str | None, why: str) -> str:
    return f"no space left ({why}) while writing {path or 'a file'}: free space or point tracking.dir elsewhere"


def one_line(ex: BaseException) -> str | None:
    """The message for an error a user can fix, or None for anything else (a bug)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(ex, UserError):
        return str(ex)
    if (full := out_of_space(ex)) is not None:
        return no_space_line(*full)
    if isinstance(ex, OSError) and ex.filename is not None:  # e.g. Hydra making hydra.run.dir in a file or /proc
        return (
            f"cannot use {ex.filename}: {ex.strerror} (an output folder must be a folder you can write in: "
            "check hydra.run.dir, hydra.sweep.dir and tracking.dir)"
        )
    if isinstance(ex, yaml.YAMLError):  # a config file that is not YAML (Hydra lets the parser's error through)
        mark = getattr(ex, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
        return f"invalid YAML in {where}: {getattr(ex, 'problem', None) or first_line(ex)}"
    if _raised_by_hydras_command_line(ex):
        return f"{ex} (python train.py --help lists the flags)"
    cause = ex.__cause__ if isinstance(ex.__cause__, OmegaConfBaseException) else ex
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
        if isinstance(cause, ConfigKeyError | ConfigAttributeError):
            msg += accepted_keys(getattr(cause, "object_type", None))
        return f"{key}: {msg}" if key else msg
    if isinstance(ex, HydraException) and (bad := FILE_KEY_ERROR.search(str(ex))):
        return _key_from_a_file(*bad.groups())
    if isinstance(ex, HydraException):
        text = re.sub(r"\s*Config search path:.*", "", str(ex), flags=re.S)
        return re.sub(r"\s*\n\s*", " ", text).strip()
    return None


def in_sweep() -> bool:
    """True inside a Hydra multirun job (a sweep trial)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """In a single run, a UserError ends the process with its one line (Hydra would print
    its own banner first). In a sweep it propagates: the trial fails, the sweep goes on."""
    try:
        yield
    except UserError as ex:
        if in_sweep():
            raise
        _exit(str(ex))


@contextlib.contextmanager
def closed_pipe_quietly() -> Iterator[None]:
    """Output piped into a reader that stops early (`| head`) ends the program quietly with
    status 1, not with a BrokenPipeError traceback (the recipe in Python's signal docs)."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(1)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a Hydra entry point; show errors a user can fix as one line and exit 2.

    HYDRA_FULL_ERROR=1 makes Hydra raise instead of printing its own multi-line report;
    a user who sets it themselves gets the full traceback.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A log line that cannot be written (stdout closed by `| head`) is dropped, not a
    # "--- Logging error ---" traceback per line; closed_pipe_quietly ends the program.
    logging.raiseExceptions = False
    try:
        with closed_pipe_quietly():
            main()
    except KeyboardInterrupt:
        print(f"error: stopped by {_signal_name[0]}; the MLflow run(s) it had open ended KILLED", file=sys.stderr)
        sys.exit(128 + _signal_number[0])
    except Exception as ex:  # noqa: BLE001 - sorted into user errors and bugs below
        message = one_line(ex)
        if message is None:
            raise
        _exit(message)


_signal_name, _signal_number = ["SIGINT (Ctrl-C)"], [signal.SIGINT.value]


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler's stop, `kill`) ends a run as Ctrl-C does: the code under way sees
    KeyboardInterrupt, ends its MLflow run KILLED and its Optuna trial FAIL."""
    _signal_name[0], _signal_number[0] = "SIGTERM", signum
    raise KeyboardInterrupt
