"""A local PostgreSQL (the Optuna study storage) and `mlflow server` on it, for multi-worker sweeps:
`make services` starts both (or reports them) and prints what to export; `make services-stop` stops them
(ARGS=--purge: and deletes their data). PostgreSQL is a cluster of Debian's postgresql-common named after
the folder (--dir, default .services/): as root a system cluster (apt-get installs PostgreSQL if missing),
else one in the folder; databases optuna and mlflow (the server's store; artifacts in <dir>/artifacts)."""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

LOCAL, SERVERS = "127.0.0.1", Path("/usr/lib/postgresql")
APT = ["flock", "/tmp/mlp-apt.lock", "apt-get", "-o", "DPkg::Lock::Timeout=600"]  # one apt-get at a time, ours or not


class ServiceError(RuntimeError):
    """A problem the user can fix: one `error:` line on the command line."""


def pg(*cmd: str, base: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **({} if os.geteuid() == 0 else {"PG_CLUSTER_CONF_ROOT": str(base / "etc")})}
    done = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode:
        raise ServiceError(f"{' '.join(cmd[:3])}: " + " | ".join((done.stderr or done.stdout).splitlines()[-4:]))
    return done


def pg_version() -> str:
    """The newest PostgreSQL server installed; as root, apt-get installs one when there is none."""
    if os.geteuid() == 0 and not list(SERVERS.glob("*/bin/initdb")):
        for cmd in (["update"], ["install", "-y", "postgresql"]):  # output to stderr
            subprocess.run([*APT, *cmd], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=2, check=False)
    if not (found := [p.parts[-3] for p in SERVERS.glob("*/bin/initdb")]) or not shutil.which("pg_createcluster"):
        raise ServiceError("PostgreSQL (with Debian's postgresql-common) is missing: apt-get install -y postgresql")
    return max(found, key=float)


def start_postgres(base: Path, version: str, name: str, on_port: int | None) -> int:
    """Create the cluster unless it exists (on_port None: the next from 5432 no cluster has), start it; its port."""
    if (status := pg("pg_ctlcluster", version, name, "status", base=base, check=False).returncode) not in (0, 3):
        in_base = [] if os.geteuid() == 0 else ["-d", str(base / "pg"), "-l", str(base / "postgres.log")]
        on = [] if on_port is None else ["-p", str(on_port)]
        # Each worker holds a few connections (study, jobs, the server's pool): room for tens of workers.
        opts = [*in_base, *on, "--start-conf", "manual", "-o", "max_connections=500", version, name]
        pg("pg_createcluster", "-q", *opts, "--", "-A", "trust", "-U", "postgres", base=base)
    port = pg("pg_conftool", "-s", version, name, "show", "port", base=base).stdout.strip()
    if status != 0:
        print(f"PostgreSQL {version}: cluster {name} starting on port {port}", file=sys.stderr)
        pg("pg_ctlcluster", version, name, "start", base=base)
    for db in ("optuna", "mlflow"):
        done = pg("createdb", "-h", LOCAL, "-p", port, "-U", "postgres", db, base=base, check=False)
        if done.returncode and "already exists" not in done.stderr:
            raise ServiceError(f"createdb {db}: {done.stderr.strip()}")
    return int(port)


def mlflow_server(state: dict, healthy: bool = True) -> psutil.Process | None:
    """The server recorded in ``state`` if it runs (and with ``healthy``, if it answers)."""
    with contextlib.suppress(psutil.Error, OSError, KeyError):
        if "mlflow" not in " ".join((proc := psutil.Process(state["mlflow_pid"])).cmdline()):
            return None  # another process by now
        if healthy:  # an error unless it answers 2xx
            urllib.request.urlopen(f"http://{LOCAL}:{state['mlflow_port']}/health", timeout=2).close()
        return proc
    return None


def start_mlflow(base: Path, state: dict, port: int, workers: int) -> None:
    with socket.socket() as s:  # a port nothing listens on: the kernel's choice
        s.bind(("", 0))
        state["mlflow_port"] = port or s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts", "--artifacts-destination", base / "artifacts",
           "--backend-store-uri", f"postgresql://postgres@{LOCAL}:{state['pg_port']}/mlflow", "--host", LOCAL,
           "--port", str(state["mlflow_port"]), "--workers", str(workers)]  # fmt: skip
    # No GenAI job runner (7 processes training never uses); a session of its own: a Ctrl-C here is not for it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with open(base / "mlflow.log", "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
    print(f"MLflow: server starting on port {state['mlflow_port']} (log {base / 'mlflow.log'})", file=sys.stderr)
    state["mlflow_pid"], deadline = proc.pid, time.monotonic() + 120
    while not mlflow_server(state):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_mlflow(state)
            tail = " | ".join((base / "mlflow.log").read_text(errors="replace").splitlines()[-4:])
            raise ServiceError(f"mlflow server did not answer on port {state['mlflow_port']}: {tail}")
        time.sleep(0.3)


def stop_mlflow(state: dict) -> None:
    """SIGTERM the server and its workers; SIGKILL what is left after 15 s."""
    if proc := mlflow_server(state, healthy=False):
        tree = [proc, *proc.children(recursive=True)]
        for send, grace in ((psutil.Process.terminate, 15), (psutil.Process.kill, 5)):
            for each in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    send(each)
            tree = psutil.wait_procs(tree, timeout=grace)[1]  # reaped: a server we started leaves no zombie


def start(base: Path, mlflow_port: int = 5001, workers: int = 2, pg_port: int | None = None) -> dict:
    """Start the cluster and the server, or find them running: their URLs, ports and state."""
    base, version, file = base.resolve(), pg_version(), base.resolve() / "services.json"
    base.mkdir(parents=True, exist_ok=True)
    default = {"cluster": f"mlp_{hashlib.sha1(bytes(base)).hexdigest()[:8]}"}
    state = json.loads(file.read_text()) if file.exists() else default
    file.write_text(json.dumps(state))  # what stop() needs, should a server fail to start
    state["pg_port"] = start_postgres(base, version, state["cluster"], pg_port)
    if not mlflow_server(state):
        stop_mlflow(state)
        start_mlflow(base, state, mlflow_port, workers)
    file.write_text(json.dumps(state))
    storage = f"postgresql://postgres@{LOCAL}:{state['pg_port']}/optuna"
    return {"tracking_uri": f"http://{LOCAL}:{state['mlflow_port']}", "storage_url": storage, **state}


def stop(base: Path, purge: bool = False) -> None:
    """Stop the server and the cluster; ``purge`` deletes the cluster and ``base``."""
    if (file := base.resolve() / "services.json").exists():
        stop_mlflow(state := json.loads(file.read_text()))
        version, name = pg_version(), state["cluster"]
        pg("pg_ctlcluster", version, name, "stop", "-m", "fast", base=file.parent, check=False)
        if purge:
            pg("pg_dropcluster", version, name, base=file.parent, check=False)
            shutil.rmtree(file.parent)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / ".services")
    parser.add_argument("--purge", action="store_true", help="stop: delete the data too")
    args = parser.parse_args()
    try:
        if args.command == "stop":
            sys.exit(stop(args.dir, args.purge))
        info = start(args.dir)
        print(f"export MLFLOW_TRACKING_URI={info['tracking_uri']}\nexport OPTUNA_STORAGE={info['storage_url']}")
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
