"""Named points of a sweep worker's life at which a test kills it for sure, as a machine dies
(SIGKILL: no handler runs, nothing is cleaned up). What a kill at each point leaves behind is
what the rest of the study must clear up (tests/test_kill_points.py):

- ``ask``: inside Optuna's ``study.ask``, the trial created (RUNNING) but not yet claimed by
  its worker (no heartbeat);
- ``sampler``: the trial claimed, while the sampler proposes its parameters;
- ``asked``: the trial asked and its MLflow run opened, the job not yet launched;
- ``job``: while the trial's job runs (at its start; in the worker's process with the basic
  launcher, in a child process with the others);
- ``tell``: the job has returned, Optuna not yet told;
- ``report``: while the study's report is logged to its parent run;
- ``winner``: while the winner file is written (its temporary file complete, not yet renamed).

``MLP_SWEEP_KILL_AT=<point>`` kills the process the first time it reaches ``<point>``;
``<point>:<n>`` the n-th time; a worker refuses any other value as it starts (``check``). Unset,
as in every real sweep, a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
import threading

from mlp.errors import ConfigError

KILL_AT = "MLP_SWEEP_KILL_AT"
POINTS = ("ask", "sampler", "asked", "job", "tell", "report", "winner")
_reached: dict[str, int] = {}
_lock = threading.Lock()


def check() -> None:
    """The variable names a point and a count >= 1, when set: a typo would kill nothing (or fail
    every trial) and the test that set it would prove nothing."""
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    name, colon, nth = wanted.partition(":")
    if name not in POINTS or (colon and not (nth.isdigit() and int(nth) >= 1)):
        raise ConfigError(KILL_AT, wanted, f"<point> or <point>:<n> with n >= 1, the point one of {', '.join(POINTS)}")


def reach(point: str) -> None:
    """Kill this process here when the environment names this point (and this is its n-th time)."""
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    with _lock:
        _reached[point] = _reached.get(point, 0) + 1
        if _reached[point] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
