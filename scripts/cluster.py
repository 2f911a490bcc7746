"""A one-node SLURM cluster on this machine, to try sweeps with ``hydra/launcher=slurm`` (and to test them).

    .venv/bin/python scripts/cluster.py start           # make cluster: prints the line to export
    eval "$(.venv/bin/python scripts/cluster.py start)"  # ...and use it in this shell (sinfo, squeue, sweeps)
    .venv/bin/python scripts/cluster.py stop            # make cluster-stop: cancels its jobs, stops its daemons

Debian's ``slurm-wlm`` and ``munge`` (installed with apt-get when missing, as root) run as processes of their own,
not system services: ``munged`` with a key of its own, ``slurmctld`` and one ``slurmd`` (the node ``mlp1``, with this
machine's CPUs and memory as ``slurmd -C`` reports them), on 127.0.0.1 and free ports. Everything lives in ``--dir``
(default ``<repo>/.cluster``, git-ignored: slurm.conf, munge.key, state, spool, logs, pid files) but munged's socket,
in /tmp (munged wants every folder above it open to all). No accounting (no slurmdbd): ``sacct`` has nothing to say,
and the sweeps do not need it. KillWait is 2 s: a cancelled job (submitit's ignore SIGTERM) ends 2 s later.

Importable (also loaded by path): ``start(folder, cpus=None) -> dict`` (the environment to export: SLURM_CONF) and
``stop(folder)``; ``ClusterError`` (``NotInstalled`` where SLURM cannot be installed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cluster"
NODE = "mlp1"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order

SLURM_CONF = """\
ClusterName=mlp
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
SlurmUser={user}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
ReturnToService=1
KillWait=2
SlurmdParameters=config_overrides
{node} NodeHostname={host} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes={node_name} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(Exception):
    """What a user can fix, in one line."""


class NotInstalled(ClusterError):
    """slurm-wlm and munge are missing and cannot be installed here (not root, no apt-get, no index)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install() -> None:
    """Debian's slurm-wlm and munge, when slurmctld is missing (as root, with apt-get)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise NotInstalled("SLURM is not installed: run `apt-get install -y slurm-wlm munge` as root (Debian/Ubuntu)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["flock", "/tmp/mlp-apt.lock", "apt-get", "-o", "DPkg::Lock::Timeout=600"]  # one apt-get at a time
    for command in (["update", "-qq"], ["install", "-y", "-qq", "slurm-wlm", "munge"]):
        done = subprocess.run([*apt, *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise NotInstalled(f"`apt-get {' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[-300:]}")


def node_line(cpus: int | None) -> str:
    """This machine as SLURM sees it (``slurmd -C``), named NODE; ``cpus`` overrides its CPU count."""
    found = subprocess.check_output(["slurmd", "-C"], text=True).splitlines()[0].split()[1:]  # after NodeName=
    if cpus is not None:  # more job slots than cores (slurmd accepts it: config_overrides)
        found = [f"CPUs={cpus}", *(f for f in found if f.startswith("RealMemory="))]
    return " ".join([f"NodeName={NODE}", *found])


def munge_socket(folder: Path) -> Path:
    """munged wants every folder above its socket open to all (o+x); pytest's are not: a folder in /tmp."""
    return Path(tempfile.gettempdir()) / f"mlp-munge-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}" / "sock"


def env_of(folder: Path) -> dict[str, str]:
    return {"SLURM_CONF": str(folder / "slurm.conf")}


def running(folder: Path, daemon: str) -> bool:
    try:
        process = psutil.Process(int((folder / f"{daemon}.pid").read_text()))
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return False


def start(folder: Path = DEFAULT_DIR, cpus: int | None = None, timeout: float = 30) -> dict[str, str]:
    """Start munged, slurmctld and slurmd in ``folder`` (again: the running ones are kept); wait until the
    node is idle. Returns the environment to export."""
    folder = Path(folder).resolve()
    env = {**os.environ, **env_of(folder)}
    if not all(running(folder, d) for d in DAEMONS):
        stop(folder)
        install()
        for sub in ("state", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # munged refuses a socket folder others may write in
        if not (folder / "munge.key").exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={folder}/munge.key"], check=True)
        node = node_line(cpus)
        (folder / "slurm.conf").write_text(SLURM_CONF.format(
            host=socket.gethostname(), ctld_port=free_port(), slurmd_port=free_port(), dir=folder,
            user=pwd.getpwuid(os.getuid()).pw_name, node=node, node_name=NODE, socket=munge_socket(folder),
        ))  # fmt: skip
        munge_socket(folder).parent.mkdir(mode=0o755, exist_ok=True)
        munge = [f"--socket={munge_socket(folder)}", f"--key-file={folder}/munge.key"]
        munge += [f"--{f}-file={folder}/munged.{f}" for f in ("pid", "log", "seed")]
        for command in (["munged", *munge], ["slurmctld"], ["slurmd", "-N", NODE]):  # each forks into the background
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise ClusterError(f"{command[0]} did not start: {done.stderr.strip()} (see {folder}/*.log)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
        if state.strip() in ("idle", "mixed", "allocated"):
            return env_of(folder)
        time.sleep(0.5)
    raise ClusterError(f"the node did not come up within {timeout:.0f} s (see {folder}/slurmctld.log and slurmd.log)")


def stop(folder: Path = DEFAULT_DIR, patience: float = 15) -> None:
    """Cancel the cluster's jobs and wait for them to end (KillWait), then stop its daemons (SIGTERM:
    slurmctld saves its state; SIGKILL for one still there after ``patience`` seconds). A job still
    running when slurmctld goes would be left waiting to report its end, for ever."""
    folder = Path(folder).resolve()
    env = {**os.environ, **env_of(folder)}
    if running(folder, "slurmctld"):
        subprocess.run(["scancel", f"--user={os.getuid()}"], env=env, capture_output=True)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "--noheader", f"--user={os.getuid()}"], env=env, capture_output=True)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(0.2)
    for daemon in DAEMONS:
        with contextlib.suppress(OSError, ValueError):
            pid = int((folder / f"{daemon}.pid").read_text())
            for sig in (signal.SIGTERM, signal.SIGKILL):
                os.kill(pid, sig)
                deadline = time.monotonic() + patience
                while running(folder, daemon) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not running(folder, daemon):
                    break
    shutil.rmtree(munge_socket(folder).parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="its folder (default: %(default)s)")
    parser.add_argument("--cpus", type=int, help="job slots of the node (default: this machine's CPUs)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            for key, value in start(args.dir, args.cpus).items():
                print(f"export {key}={value}")
        else:
            stop(args.dir)
    except (ClusterError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
