"""The Optuna study storage: a database URL checked before Optuna opens it (another
application's database is left alone), and opened by one process at a time when it is new."""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

import optuna
import sqlalchemy

from mlp.errors import ConfigError, UserError, first_line
from mlp.sqlite_files import read_only, sqlite_creation_lock, sqlite_file, table_names

CONNECT_TIMEOUT = 10  # seconds a database server may take to answer before it counts as unreachable


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments for a storage URL: SQLite waits for a lock (several processes
    share the file); a PostgreSQL server that does not answer fails within seconds, not minutes."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return {}


def storage_tables(url: str) -> set[str] | None:
    """The tables of the database at ``url``, read without creating or changing anything; None
    when there is no database yet (a SQLite file that does not exist or is empty)."""
    if (path := sqlite_file(url)) is not None:
        for attempt in range(CREATION_ATTEMPTS):
            if not path.exists() or (path.is_file() and path.stat().st_size == 0):
                return None
            try:
                with read_only(path) as db:
                    return table_names(db)
            except sqlite3.OperationalError as e:
                # While another worker creates the tables, a read-only look may meet its journal and
                # fail with "attempt to write a readonly database": a moment later the file is whole.
                if "readonly" not in str(e) or attempt == CREATION_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 + random.random())
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


STORAGE_CHOICES = "an Optuna RDB storage URL, e.g. sqlite:////abs/path/optuna.db or postgresql://user@host:5432/db"
OPTUNA_TABLES = {"studies", "version_info"}  # what every Optuna RDB storage has


def check_storage(url: str, key: str = "hydra.sweeper.storage") -> bool:
    """Refuse a database that holds another application's tables (Optuna would add its own to
    it) or that cannot be read, before Optuna opens it. True when it is an Optuna storage,
    False when there is no database or no table yet."""
    if (path := sqlite_file(url)) is not None and path.is_dir():
        raise UserError(f"{key}: {path} is a folder; a SQLite storage is a file (e.g. {path}/optuna.db)")
    try:
        tables = storage_tables(url)
    except ModuleNotFoundError as e:  # the URL is fine: SQLAlchemy's driver for it is not installed
        raise UserError(
            f"{key}: {url} needs the Python module {e.name!r}, which is not installed: install the database "
            f"driver SQLAlchemy names for this URL (psycopg2-binary for postgresql:// is pinned here)"
        ) from e
    except Exception as e:  # a bad URL, a damaged file, a server that does not answer
        raise ConfigError(key, url, f"{STORAGE_CHOICES} ({first_line(e)})") from e
    if tables and not OPTUNA_TABLES <= tables:
        raise UserError(
            f"{key}: {url} holds another application's tables ({', '.join(sorted(tables)[:5])}), not an Optuna "
            "study storage: it is left as it is; point the storage at a new or an Optuna database"
        )
    return bool(tables)


def open_storage(url: str, **heartbeat: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``. A new database is created by one process at a time. On a
    server, workers that start together may create the same new tables at once: the losers open
    it again."""
    kwargs = {"engine_kwargs": engine_kwargs(url)}
    for attempt in range(CREATION_ATTEMPTS):
        try:
            with sqlite_creation_lock(url):
                storage = optuna.storages.RDBStorage(url, **kwargs, **heartbeat)
            if sqlite_file(url) is not None:
                write_lock_first(storage.engine)
            return storage
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == CREATION_ATTEMPTS - 1 or not any(s in str(e) for s in ("already exists", "duplicate key")):
                raise
            time.sleep(0.1 + random.random())  # another worker is creating the tables: look again
    raise AssertionError("unreachable")


CREATION_ATTEMPTS = 5


def write_lock_first(engine: sqlalchemy.engine.Engine) -> None:
    """Every transaction on a SQLite storage takes the file's write lock as it begins (BEGIN
    IMMEDIATE, SQLAlchemy's recipe for pysqlite). SQLite has no SELECT ... FOR UPDATE: two workers
    could both read a waiting trial (the base config, a retry) as WAITING, then both set it RUNNING
    and run it; read and claim are now one step, as on PostgreSQL."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN (before writes only) off

    @sqlalchemy.event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections made before these hooks
