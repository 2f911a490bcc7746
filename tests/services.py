"""A real PostgreSQL server and ``mlflow server`` for tests, through scripts/services.py (not a test file). Use:

@pytest.fixture(scope="session")
def services(tmp_path_factory):
    with running_services(tmp_path_factory.mktemp("services")) as svc:
        yield svc  # {"tracking_uri", "storage_url", "pg_port", "mlflow_port"}
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services.py"


def load_script():
    """scripts/services.py as a module, loaded by path (scripts/ is no package)."""
    if (module := sys.modules.get("mlp_services_script")) is None:
        spec = importlib.util.spec_from_file_location("mlp_services_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def running_services(tmp_dir: str | Path) -> Iterator[dict]:
    """Start both services on free ports in ``tmp_dir``; always stop them and delete their data afterwards.
    Skips the test when the PostgreSQL binaries are absent and cannot be installed (not root)."""
    services = load_script()
    folder = Path(tmp_dir) / "services"
    try:
        try:
            info = services.start(folder, pg_port=0, mlflow_port=0, workers=1)
        except services.PostgresMissing as e:
            pytest.skip(f"no PostgreSQL server: {e}")
        yield info
    finally:
        services.stop(folder, purge=True)
