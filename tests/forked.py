"""``python SCRIPT ARGS`` as a process of its own that starts with its libraries already imported
(not a test file). Use:

proc = start(ROOT / "train.py", args, cwd=root, env=env)  # like subprocess.Popen: pid, poll(), wait(timeout),
                                                            # send_signal(sig), communicate(timeout), returncode,
                                                            # output(): what it has written so far
done = run(ROOT / "train.py", args, cwd=root, env=env)    # like subprocess.run(capture_output=True, text=True)
server = start("-m", ["mlp.serve", ...], cwd=ROOT, env=env, log=path)  # `python -m MODULE ARGS`

The process is forked from a server that imported torch, MLflow, Hydra and Optuna once per test
process (multiprocessing's forkserver, with preloaded modules): a real process with a pid, signals,
exit status, stdout and stderr of its own, that a test can kill or run beside others, without the
seconds of imports each `python train.py` pays (on 2 cores, 6-8 s of CPU). The project's own code
is imported by the process itself, with its own environment. Where the command line as typed is
the point (its start-up, a closed pipe, a set-up error's exit code), tests run the real command
(test_cli, test_config, test_readme's `| head`, test_predict's set-up error)."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PRELOAD = [
    *("torch", "torch._dynamo", "torchvision", "mlflow", "hydra", "optuna", "matplotlib.pyplot", "tests.forked"),
    # what the project's SQLite stores load: 0.8 s of each process's imports otherwise
    *("mlflow.store.tracking.sqlalchemy_store", "optuna.storages._rdb.storage", "alembic.command", "pygments.lexers"),
]
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(PRELOAD)  # the server itself starts with the first process


def _main(script: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: what `python SCRIPT ARGS` does once its libraries are imported
    (``out`` and ``err`` may be one file)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(file, fd)
        os.close(file)
    module = args[0] if script == "-m" else None
    sys.argv = [script, *args] if module is None else [module, *args[1:]]  # runpy names the module's file
    sys.path.insert(0, cwd if module else str(Path(script).parent))
    code = 0
    try:
        if module is None:
            runpy.run_path(script, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # as the interpreter reports it
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - a traceback and exit status 1, as the interpreter gives
        import traceback

        traceback.print_exc()
        code = 1
    threading._shutdown()  # as the interpreter ends: non-daemon threads joined, then atexit's functions
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Forked:
    """One such process; its stdout and stderr (text) once it has ended, or both in ``log``."""

    def __init__(self, script: Path | str, args: list[str], cwd: Path, env: dict[str, str], log: Path | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="forked-"))
        self.out, self.err = (log, log) if log else (self.folder / "stdout", self.folder / "stderr")
        for path in {self.out, self.err}:
            path.write_text("")  # there from the start, as the files a shell redirects to
        self.args = [str(script), *args]
        self.process = FORKSERVER.Process(
            target=_main, args=(str(script), args, str(cwd), env, str(self.out), str(self.err))
        )
        self.process.start()
        self.pid = self.process.pid
        self.stdout = self.stderr = ""

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signal: int) -> None:
        os.kill(self.pid, signal)

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self.folder.exists():
            self.stdout, self.stderr = self.out.read_text(), self.err.read_text() if self.err != self.out else ""
            shutil.rmtree(self.folder)
        return self.process.exitcode

    def output(self) -> str:
        """What it has written so far: stdout, then stderr (once where both go to ``log``)."""
        return "".join(path.read_text() for path in dict.fromkeys((self.out, self.err)))

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout, self.stderr


start = Forked


def run(
    script: Path, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run it to its end (killed after ``timeout`` seconds)."""
    process = start(script, args, cwd, env)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, process.stdout, process.stderr)
