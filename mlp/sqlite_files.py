"""SQLite files: their path in a URL, a read-only look inside, and one process at a time
(an exclusive lock on a file beside the database).

Workers started together on a new SQLite store would otherwise create its tables (MLflow
migrates its schema with alembic) at the same moment and leave it half made."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (MLflow's and Optuna's); None for any other URL."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix("sqlite:///"))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A SQLite file opened read-only: checks of someone's database never change it."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        yield db


def table_names(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@contextlib.contextmanager
def sqlite_creation_lock(url: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while opening ``url`` when it is a SQLite file; else nothing."""
    if (path := sqlite_file(url)) is None:
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
