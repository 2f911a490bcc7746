"""Start and stop a real PostgreSQL server and a real ``mlflow server`` to try out multi-machine sweeps locally.

PostgreSQL (Debian's ``postgresql`` package binaries, no system service) runs from a data folder of its own on a
local port and holds two databases: ``mlflow`` (the backend store of ``mlflow server``, which also serves the
artifacts, kept in ``<dir>/artifacts``) and ``optuna`` (the Optuna study storage). Run from the repository root::

    .venv/bin/python scripts/services.py start          # start both (again: report them); prints export lines
    eval "$(.venv/bin/python scripts/services.py start)"  # ...and use them in this shell
    .venv/bin/python scripts/services.py status         # one line per service; exit 0 if both run, 3 otherwise
    eval "$(.venv/bin/python scripts/services.py env)"    # the export lines of the running services
    .venv/bin/python scripts/services.py stop           # stop both, keep the data (a later start reuses it)
    .venv/bin/python scripts/services.py stop --purge   # stop both and delete <dir>

    python train.py -m hydra/sweeper=optuna hydra.sweeper.storage=$OPTUNA_STORAGE   # a sweep using both

The export lines look like::

    export MLFLOW_TRACKING_URI=http://127.0.0.1:5001
    export OPTUNA_STORAGE=postgresql://postgres@127.0.0.1:5433/optuna

Options: ``--dir DIR`` (default ``<repo>/.services``, or $SERVICES_DIR), ``--pg-port N`` (default 5433 or the next
free port, or $PG_PORT; 0 = any free port), ``--mlflow-port N`` (default 5001 or the next free one, or $MLFLOW_PORT),
``--host ADDR`` (default 127.0.0.1, or $SERVICES_HOST). ``start`` needs the PostgreSQL server binaries
(``ls -d /usr/lib/postgresql/*/bin``); as root it installs them with ``apt-get install -y postgresql``.

Workers on other machines: start the services on a machine they can reach, listening on all interfaces::

    .venv/bin/python scripts/services.py stop            # if they run on 127.0.0.1 only
    .venv/bin/python scripts/services.py start --host 0.0.0.0

then on each worker (``head`` = that machine's name or address, as printed in the ``# other machines`` lines)::

    export MLFLOW_TRACKING_URI=http://head:5001
    export OPTUNA_STORAGE=postgresql://postgres@head:5433/optuna
    python train.py -m hydra/sweeper=optuna hydra.sweeper.storage=$OPTUNA_STORAGE

With ``--host`` other than 127.0.0.1, PostgreSQL accepts any user without a password from the machine's own subnets
(``host all all samenet trust`` in ``pg_hba.conf``) and MLflow accepts the machine's name besides localhost and
private addresses as Host header ($MLFLOW_SERVER_ALLOWED_HOSTS overrides that): a try-out on a trusted network only.

Importable (also loaded by path with importlib): ``start(dir, pg_port=None, mlflow_port=None) -> dict`` with keys
tracking_uri, storage_url, pg_port, mlflow_port, and ``stop(dir, purge=False)``. Errors a user can fix raise
``ServiceError`` (``PostgresMissing`` when the binaries are absent and cannot be installed).

Files in ``<dir>``: services.json (ports, host, PostgreSQL data folder), mlflow.log, mlflow.pid, artifacts/, pg/
(PostgreSQL's data, its socket and its log postgres.log). As root, PostgreSQL runs as the ``postgres`` user; when
that user cannot reach ``<dir>`` (a parent folder without o+x, e.g. pytest's tmp folders) the data goes to
``/tmp/mlp-services-<hash>/pg`` instead, recorded in services.json and removed by ``stop --purge``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".services"
DEFAULT_PG_PORT, DEFAULT_MLFLOW_PORT = 5433, 5001
DATABASES = ("mlflow", "optuna")
HEALTH_TIMEOUT = 120.0
PG_USER = "postgres"
# MLflow's default allowed Host headers (localhost, private addresses), extended by the machine's names for --host.
DEFAULT_ALLOWED_HOSTS = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*", "10.*"]
DEFAULT_ALLOWED_HOSTS += ["192.168.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*"]

_children: dict[int, subprocess.Popen] = {}  # mlflow servers started by this process, reaped by stop()


class ServiceError(RuntimeError):
    """A problem the user can fix: printed as one ``error:`` line by the command line."""


class PostgresMissing(ServiceError):
    """The PostgreSQL server binaries are absent and cannot be installed (not root)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # stdout carries only the export lines


def is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------- PostgreSQL binaries and the postgres user


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with pg_ctl (or $PG_BIN, or pg_ctl on PATH)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"]) if (Path(os.environ["PG_BIN"]) / "pg_ctl").exists() else None
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").exists()]
    if found:
        return max(found, key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")])
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and (Path(on_path).parent / "initdb").exists() else None


def ensure_pg_bin() -> Path:
    """Find the server binaries; as root install Debian's ``postgresql`` package when they are missing."""
    if found := find_pg_bin():
        return found
    if not is_root() or not shutil.which("apt-get"):
        raise PostgresMissing(
            "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "run `sudo apt-get install -y postgresql` (or set PG_BIN to the folder holding them)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "postgresql"]
    for cmd in (install, ["apt-get", "update"], install):  # update only when the first install fails
        log(f"PostgreSQL binaries missing: running {' '.join(cmd)}")
        done = subprocess.run(cmd, env=env, stdout=2, stderr=2, stdin=subprocess.DEVNULL)  # its output to stderr
        if cmd is install and done.returncode == 0 and (found := find_pg_bin()):
            return found
    raise ServiceError("`apt-get install -y postgresql` did not provide initdb and pg_ctl (see its output above)")


def as_pg(cmd: list[str]) -> list[str]:
    """Run a PostgreSQL server command as the postgres user when we are root (initdb and postgres refuse root)."""
    if not is_root():
        return cmd
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServiceError(f"no `{PG_USER}` user: install Debian's postgresql package, which creates it") from None
    return ["runuser", "-u", PG_USER, "--", *cmd]


def pg_run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(as_pg(cmd), cwd="/", capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ServiceError(f"{what} failed: {' | '.join(last) or f'exit status {done.returncode}'}")
    return done


def pg_can_reach(path: Path) -> bool:
    """Whether the postgres user can traverse every folder down to ``path`` (root only)."""
    if not is_root():
        return True
    return subprocess.run(["runuser", "-u", PG_USER, "--", "test", "-x", str(path)], cwd="/").returncode == 0


def pg_data_dir(base: Path) -> Path:
    """``<dir>/pg``, or ``/tmp/mlp-services-<hash>/pg`` when postgres cannot reach ``<dir>`` or its socket path
    would be too long (Unix sockets take about 107 characters)."""
    data = base / "pg"
    if pg_can_reach(base) and len(str(data)) < 80:
        return data
    fallback = Path("/tmp") / f"mlp-services-{hashlib.sha1(str(base).encode()).hexdigest()[:12]}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    if fallback.stat().st_uid != os.getuid():
        raise ServiceError(
            f"{fallback} belongs to another user: remove it or use --dir in a folder {PG_USER} can reach"
        )
    return fallback / "pg"


# ---------------------------------------------------------------- state, ports, processes


def load_state(base: Path) -> dict:
    try:
        return json.loads((base / "services.json").read_text())
    except (OSError, ValueError):
        return {}


def save_state(base: Path, state: dict) -> None:
    tmp = base / "services.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(base / "services.json")


@contextlib.contextmanager
def locked(base: Path):
    """One start/stop at a time per folder."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def port_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    if host != "127.0.0.1":
        return port_free(port, "127.0.0.1")
    return True


def any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose_port(name: str, given: int | None, previous: int | None, default: int, host: str, avoid=()) -> int:
    """The given port (must be free), else the previous run's, else ``default`` or the next free one."""
    if given == 0:
        return any_free_port(host)
    if given is not None:
        if not port_free(given, host) or given in avoid:
            raise ServiceError(f"port {given} ({name}) is busy with something else: choose another or leave it out")
        return given
    for port in ([previous] if previous else []) + list(range(default, default + 100)):
        if port not in avoid and port_free(port, host):
            return port
    raise ServiceError(f"no free port for {name} in {default}..{default + 99}: pass --{name}-port")


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process from /proc, None if it is gone or there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap it
            _children.pop(pid, None)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = proc_stat(pid)
    return stat is None or stat[0] != "Z"


def group_alive(pid: int) -> bool:
    """Whether the process group led by ``pid`` (the server and its workers) still has a member."""
    if alive(pid):  # also reaps the leader if it is our own child
        return True
    if Path("/proc/self/stat").exists():  # members other than zombies
        return any(
            (st := proc_stat(int(p.name))) and st[1] == pid and st[0] != "Z" for p in Path("/proc").glob("[0-9]*")
        )
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def mlflow_pid(base: Path) -> int | None:
    """The pid in mlflow.pid if that process is still an mlflow server."""
    try:
        pid = int((base / "mlflow.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if alive(pid) and b"mlflow" in cmdline else None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def local_addr(host: str) -> str:
    """The address this machine's clients use for a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "127.0.0.1", "localhost", "") else host


def urls(state: dict) -> dict:
    addr = local_addr(state["host"])
    return {
        "tracking_uri": f"http://{addr}:{state['mlflow_port']}",
        "storage_url": f"postgresql://{PG_USER}@{addr}:{state['pg_port']}/optuna",
        "pg_port": state["pg_port"],
        "mlflow_port": state["mlflow_port"],
    }


def machine_names() -> list[str]:
    """Names other machines may use for this one: its host name (first unless it resolves to loopback only) and
    the address of its default route."""
    name = socket.gethostname()
    try:
        loopback = all(a[4][0].startswith("127.") for a in socket.getaddrinfo(name, None, socket.AF_INET))
    except OSError:
        loopback = True
    addr = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # UDP: sends nothing, picks the outgoing interface
        addr = [s.getsockname()[0]]
    return [*addr, name] if loopback and addr else [name, *addr]


def export_lines(state: dict) -> str:
    info = urls(state)
    lines = [f"export MLFLOW_TRACKING_URI={info['tracking_uri']}", f"export OPTUNA_STORAGE={info['storage_url']}"]
    if state["host"] != "127.0.0.1":
        name = machine_names()[0]
        lines.append(f"# other machines: MLFLOW_TRACKING_URI=http://{name}:{state['mlflow_port']}")
        lines.append(f"# other machines: OPTUNA_STORAGE=postgresql://{PG_USER}@{name}:{state['pg_port']}/optuna")
    return "\n".join(lines)


# ---------------------------------------------------------------- PostgreSQL


def pg_running(pg_bin: Path, data: Path) -> int | None:
    """The port of the PostgreSQL server running from ``data``, or None."""
    if not (data / "PG_VERSION").exists():
        return None
    if pg_run([str(pg_bin / "pg_ctl"), "status", "-D", str(data)], "pg_ctl status", check=False).returncode != 0:
        return None
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def pg_init(pg_bin: Path, data: Path, host: str) -> None:
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if is_root():
            shutil.chown(data, PG_USER, PG_USER)
        log(f"initdb: PostgreSQL data in {data}")
        cmd = [str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-locale"]
        pg_run(cmd, "initdb")
    if host != "127.0.0.1":  # workers on other machines: trust the machine's own subnets
        hba = data / "pg_hba.conf"
        line = "host all all samenet trust  # added by scripts/services.py --host"
        if line not in hba.read_text():
            with hba.open("a") as fh:
                fh.write(f"\n{line}\n")


def pg_start(pg_bin: Path, data: Path, port: int, host: str) -> None:
    listen = "*" if host in ("0.0.0.0", "*") else ("127.0.0.1" if host == "127.0.0.1" else f"127.0.0.1,{host}")
    # Every sweep worker holds a few connections (its study, its trials' jobs, MLflow's server
    # pool): more than the default 100, so that tens of workers fit.
    opts = f"-p {port} -k '{data}' -c listen_addresses='{listen}' -c max_connections=500"
    cmd = [str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(data / "postgres.log"), "-o", opts, "-w", "-t", "60"]
    log(f"PostgreSQL: starting on {host}:{port}")
    done = pg_run([*cmd, "start"], "pg_ctl start", check=False)
    if done.returncode != 0:
        raise ServiceError(f"PostgreSQL did not start on port {port}: {tail(data / 'postgres.log', 3)!r}")


def psql(pg_bin: Path, port: int, sql: str, db: str = "postgres") -> str:
    cmd = [str(pg_bin / "psql"), "-X", "-q", "-tA", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", db]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    done = subprocess.run([*cmd, "-c", sql], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ServiceError(f"psql on port {port} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def pg_create_databases(pg_bin: Path, port: int) -> None:
    existing = set(psql(pg_bin, port, "SELECT datname FROM pg_database").split())
    for name in DATABASES:
        if name not in existing:
            log(f"PostgreSQL: creating database {name}")
            psql(pg_bin, port, f"CREATE DATABASE {name}")


# ---------------------------------------------------------------- MLflow server


def mlflow_exe() -> Path:
    """The venv's ``mlflow`` (next to this python), else the one on PATH."""
    exe = Path(sys.executable).parent / "mlflow"
    if exe.exists():
        return exe
    if not shutil.which("mlflow"):
        raise ServiceError(f"no `mlflow` next to {sys.executable} nor on PATH: run this with the venv's python")
    return Path(shutil.which("mlflow"))


def mlflow_start(base: Path, state: dict) -> None:
    exe = mlflow_exe()
    port, host = state["mlflow_port"], state["host"]
    cmd = [str(exe), "server", "--backend-store-uri", f"postgresql://{PG_USER}@127.0.0.1:{state['pg_port']}/mlflow"]
    cmd += [
        "--serve-artifacts",
        "--artifacts-destination",
        str(base / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
    ]
    cmd += ["--workers", str(state.get("workers", 2))]
    if host != "127.0.0.1" and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        names = [*machine_names(), socket.getfqdn()]
        allowed = DEFAULT_ALLOWED_HOSTS + [f"{n}{p}" for n in names for p in ("", ":*")]
        cmd += ["--allowed-hosts", ",".join(dict.fromkeys(allowed))]
    (base / "artifacts").mkdir(exist_ok=True)
    log(f"MLflow: starting server on {host}:{port} (log {base / 'mlflow.log'})")
    with open(base / "mlflow.log", "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _children[proc.pid] = proc
    (base / "mlflow.pid").write_text(f"{proc.pid}\n")
    url = urls(state)["tracking_uri"]
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with status {proc.returncode}"
                if proc.poll() is not None
                else f"no answer in {HEALTH_TIMEOUT:.0f} s"
            )
            mlflow_stop(base)
            _children.pop(proc.pid, None)
            this_run = tail(base / "mlflow.log", 1000).split("\n==== ")[-1].splitlines()[1:]  # after the marker
            last = " | ".join(line for line in this_run[-6:] if line.strip()) or "(empty)"
            raise ServiceError(f"mlflow server at {url} {why}; last lines of {base / 'mlflow.log'}: {last}")
        time.sleep(0.3)


def mlflow_stop(base: Path, grace: float = 15.0) -> bool:
    """SIGTERM the server's process group, wait, then SIGKILL. True if one was running."""
    pid = mlflow_pid(base)
    if pid is None:
        (base / "mlflow.pid").unlink(missing_ok=True)
        return False
    log(f"MLflow: stopping server (pid {pid})")
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_alive(pid):
            break
    if proc := _children.pop(pid, None):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    (base / "mlflow.pid").unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- the commands


def start(
    dir: str | os.PathLike,
    pg_port: int | None = None,
    mlflow_port: int | None = None,
    host: str = "127.0.0.1",
    workers: int = 2,
) -> dict:
    """Start PostgreSQL and mlflow server (or find them running); returns tracking_uri, storage_url and the ports."""
    base = Path(dir).expanduser().resolve()
    mlflow_exe()
    pg_bin = ensure_pg_bin()
    with locked(base):
        (base / ".gitignore").write_text("*\n")  # never committed, wherever it lies
        state = load_state(base)
        data = Path(state["pg_data"]) if state.get("pg_data") else pg_data_dir(base)
        running_port = pg_running(pg_bin, data)
        running_host = state.get("host", "127.0.0.1")
        if running_port is not None and (host != running_host or pg_port not in (None, 0, running_port)):
            raise ServiceError(
                f"PostgreSQL already runs on {running_host}:{running_port} from {data}: stop it first to change that"
            )
        state.update(host=host, pg_data=str(data), pg_bin=str(pg_bin), workers=workers)
        if running_port is None:
            state["pg_port"] = choose_port("pg", pg_port, state.get("pg_port"), DEFAULT_PG_PORT, host)
            pg_init(pg_bin, data, host)
            pg_start(pg_bin, data, state["pg_port"], host)
        else:
            state["pg_port"] = running_port
            log(f"PostgreSQL: already running on {host}:{running_port} (data {data})")
        save_state(base, state)
        pg_create_databases(pg_bin, state["pg_port"])

        pid = mlflow_pid(base)
        if pid and state.get("mlflow_port") and healthy(urls(state)["tracking_uri"]):
            if mlflow_port not in (None, 0, state["mlflow_port"]):
                raise ServiceError(f"mlflow server already runs on port {state['mlflow_port']}: stop it first")
            log(f"MLflow: already running at {urls(state)['tracking_uri']} (pid {pid})")
        else:
            if pid:
                mlflow_stop(base)  # alive but not answering: restart it
            avoid = (state["pg_port"],)
            state["mlflow_port"] = choose_port(
                "mlflow", mlflow_port, state.get("mlflow_port"), DEFAULT_MLFLOW_PORT, host, avoid
            )
            save_state(base, state)
            mlflow_start(base, state)
        save_state(base, state)
        return urls(state)


def stop(dir: str | os.PathLike, purge: bool = False) -> None:
    """Stop mlflow server and PostgreSQL; with ``purge`` also delete ``dir`` (and PostgreSQL's data elsewhere)."""
    base = Path(dir).expanduser().resolve()
    if not base.exists():
        return
    with locked(base):
        state = load_state(base)
        if not mlflow_stop(base):
            log("MLflow: not running")
        data = Path(state["pg_data"]) if state.get("pg_data") else base / "pg"
        pg_bin = Path(state["pg_bin"]) if state.get("pg_bin") and Path(state["pg_bin"]).exists() else find_pg_bin()
        if pg_bin and pg_running(pg_bin, data) is not None:
            log("PostgreSQL: stopping (pg_ctl stop -m fast)")
            pg_run([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
        else:
            log("PostgreSQL: not running")
        if purge:
            if data.parent.name.startswith("mlp-services-") and data.parent.parent == Path("/tmp"):
                shutil.rmtree(data.parent, ignore_errors=True)
            shutil.rmtree(base, ignore_errors=True)
            log(f"removed {base}")


def status(dir: str | os.PathLike) -> tuple[bool, bool, list[str]]:
    base = Path(dir).expanduser().resolve()
    state = load_state(base)
    data = Path(state["pg_data"]) if state.get("pg_data") else base / "pg"
    pg_bin = find_pg_bin()
    port = pg_running(pg_bin, data) if pg_bin else None
    pg_line = f"postgresql: running on port {port} (data {data})" if port else f"postgresql: stopped (data {data})"
    pid = mlflow_pid(base)
    url = urls(state)["tracking_uri"] if state.get("mlflow_port") else None
    ml_ok = bool(pid and url and healthy(url))
    ml_line = f"mlflow: running at {url} (pid {pid})" if ml_ok else "mlflow: stopped"
    if pid and not ml_ok:
        ml_line = f"mlflow: process {pid} runs but {url}/health does not answer (log {base / 'mlflow.log'})"
    return port is not None, ml_ok, [pg_line, ml_line]


def main(argv: list[str] | None = None) -> int:
    env_int = lambda name: int(os.environ[name]) if os.environ.get(name) else None  # noqa: E731
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--dir", default=os.environ.get("SERVICES_DIR") or str(DEFAULT_DIR), help="state folder")
    parser.add_argument("--pg-port", type=int, default=env_int("PG_PORT"), help="default 5433 or next free; 0 any")
    parser.add_argument("--mlflow-port", type=int, default=env_int("MLFLOW_PORT"), help="default 5001 or next free")
    parser.add_argument("--host", default=os.environ.get("SERVICES_HOST", "127.0.0.1"), help="0.0.0.0: all machines")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes (default 2)")
    parser.add_argument("--purge", action="store_true", help="stop: also delete --dir and the PostgreSQL data")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            began = time.monotonic()
            start(args.dir, args.pg_port, args.mlflow_port, args.host, args.workers)
            where = "" if Path(args.dir).resolve() == DEFAULT_DIR else f" --dir {args.dir}"
            log(f"services ready in {time.monotonic() - began:.1f} s; stop them with: {sys.argv[0]} stop{where}")
            print(export_lines(load_state(Path(args.dir).expanduser().resolve())))
        elif args.command == "stop":
            stop(args.dir, purge=args.purge)
        else:
            pg_ok, ml_ok, lines = status(args.dir)
            if args.command == "status":
                print("\n".join(lines))
                return 0 if pg_ok and ml_ok else 3
            if not (pg_ok and ml_ok):
                log("error: services are not running (" + "; ".join(lines) + "): run `scripts/services.py start`")
                return 3
            print(export_lines(load_state(Path(args.dir).expanduser().resolve())))
    except ServiceError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
