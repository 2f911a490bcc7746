"""A real one-node SLURM cluster for tests, through scripts/cluster.py (not a test file). Use:

@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster  # {"SLURM_CONF": ..., "folder": Path}
"""

from __future__ import annotations

import contextlib
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster.py"
CPUS = 8  # job slots: held jobs (a shell waiting, no CPU) must not keep the others waiting


@contextlib.contextmanager
def running_cluster(folder: Path) -> Iterator[dict]:
    """munged, slurmctld and slurmd in ``folder``; always stopped afterwards. Skips the test in one
    line only where SLURM is absent and cannot be installed (not root, no apt-get)."""
    cluster = runpy.run_path(str(SCRIPT))
    try:
        try:
            env = cluster["start"](folder, cpus=CPUS)
        except cluster["NotInstalled"] as e:  # any other failure to start fails the tests
            pytest.skip(f"no SLURM cluster: {e}")
        yield {**env, "folder": folder}
    finally:
        cluster["stop"](folder)
