"""Errors a user can fix (each shown as one line by mlp.cli), and ``first_line``: the one
helper that gives an exception's first line, used everywhere."""

from __future__ import annotations

import dataclasses
import errno
import os
import sqlite3
import tempfile
import traceback
from pathlib import Path
from typing import Any


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


def interrupted(ex: BaseException) -> bool:
    """Whether ``ex`` is Ctrl-C or SIGTERM (KeyboardInterrupt) or was raised while handling one: a
    library may turn an interrupt into an error of its own (torch.export, into an AssertionError)."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(ex))


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


def written_by(ex: BaseException) -> str | None:
    """Whose write ``ex`` interrupted: "optuna" or "mlflow" (each wraps its database's errors in
    exceptions of its own), "hydra" (its own files: raised in its code), else None."""
    chain = _chain(ex)
    for e in reversed(chain):  # the wrapper nearest the database's own error decides
        if (package := type(e).__module__.split(".")[0]) in ("optuna", "mlflow"):
            return package
    raised_in = [traceback.extract_tb(e.__traceback__)[-1].filename for e in chain if e.__traceback__]
    return "hydra" if any(f"{os.sep}hydra{os.sep}" in f for f in raised_in) else None


def no_space_line(path: str | Path | None, why: str, setting: str | None = "tracking.dir") -> str:
    """A full disk in one line: what was being written and the ``setting`` that puts it there."""
    way_out = f"free space or point {setting} elsewhere" if setting else "free space on its disk"
    return f"no space left ({why}) while writing {path or 'a file'}: {way_out}"
