"""Process trees through psutil: the jobs a sweep worker's parallel launchers started (joblib's
and submitit's processes), stopped when the worker is interrupted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection

import psutil


def descendants(pid: int | None = None) -> set[psutil.Process]:
    """The processes under ``pid`` (this process by default), however deep."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return set(psutil.Process(pid).children(recursive=True))
    return set()


def job_processes(pid: int | None = None, spared: Collection[psutil.Process] = ()) -> list[psutil.Process]:
    """The processes under ``pid`` but those in ``spared`` and joblib's resource tracker: it
    ends by itself with its parent (killed, it warns of leaks)."""
    found = []
    for process in descendants(pid) - set(spared):
        with contextlib.suppress(psutil.Error):
            if not any("resource_tracker" in part for part in process.cmdline()):
                found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    """Not ended, nor a zombie waiting for its parent to read its exit status."""
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def stop(processes: Collection[psutil.Process], patience: float = 3.0) -> None:
    """SIGTERM ``processes``, then SIGKILL those still running after ``patience`` seconds
    (submitit's jobs ignore SIGTERM)."""
    left = list(processes)
    for send in (psutil.Process.terminate, psutil.Process.kill):
        for process in left:
            with contextlib.suppress(psutil.Error):
                send(process)
        deadline = time.monotonic() + patience
        while (left := [p for p in left if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
