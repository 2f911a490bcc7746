"""One process at a time: an exclusive lock on a file beside a SQLite database.

Workers started together on a new SQLite store would otherwise create its tables (MLflow
migrates its schema with alembic) at the same moment and leave it half made."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sqlite_creation_lock(url: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while opening ``url`` when it is a SQLite file; else nothing."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        yield
        return
    lock = Path(url.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
