"""The web app started as `make serve` starts it, and a browser to look at it (not a test file). Use:

with running_app(env) as url: ...        # python -m mlp.serve on a free port, until the block ends
chromium = ensure_chromium()             # /usr/bin/chromium; as root installed with apt-get when missing
with browser() as chromium: ...          # that Chromium, driven by Playwright
with running_dashboard(storage) as url:  # optuna-dashboard reading a study storage, on a free port
wait_until_up(url, process, what, output)  # until url/health answers, or the test fails with the output
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from scripts.services import APT
from tests import forked
from tests.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env: dict[str, str], *args: str, log: Path | None = None) -> Iterator[str]:
    """``python -m mlp.serve`` on a free local port (a process forked with its libraries loaded:
    tests/forked.py); yields its URL once /health answers (with or without a model). The server's
    output goes to ``log`` when given."""
    port = free_port()
    server = forked.start("-m", ["mlp.serve", "--port", str(port), *args], cwd=ROOT, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, "the web app", server.output, answers=(200, 503))
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def wait_until_up(url: str, server: subprocess.Popen, what: str, output: Callable[[], str],
                  answers: tuple[int, ...] = (200,), timeout: float = 120, path: str = "/health") -> None:  # fmt: skip
    """Until ``url``/health answers one of ``answers``; the test fails with the server's last
    output (``output()``) if it ends or takes longer than ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}{path}", timeout=10).status_code in answers:
                return
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"{what} did not start: {output()[-2000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def browser() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


@contextlib.contextmanager
def running_dashboard(storage: str) -> Iterator[str]:
    """optuna-dashboard (the Optuna project's web UI) reading ``storage``, on a free local port."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, "optuna-dashboard", lambda: server.communicate()[0] or "", path="/api/studies")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def ensure_chromium() -> str:
    """Debian's Chromium (Playwright's own browser download is not used); as root it is installed
    with apt-get when missing, as `.ci/run` needs on a fresh machine; else the test is skipped."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"no {CHROMIUM}: run `sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["install", "-y", "chromium"]
    for cmd in (install, ["update"], install):  # update only when the first install fails
        print(f"{CHROMIUM} missing: running apt-get {' '.join(cmd)}", file=sys.stderr)
        # APT: one at a time; on a fresh machine the test workers install PostgreSQL, SLURM and Chromium at once
        done = subprocess.run([*APT, *cmd], env=env, stdout=2, stderr=2, stdin=subprocess.DEVNULL)
        if cmd is install and done.returncode == 0 and os.path.exists(CHROMIUM):
            return CHROMIUM
    pytest.fail("`apt-get install -y chromium` did not provide /usr/bin/chromium (see its output above)")
