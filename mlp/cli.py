"""The command-line wrapper of every entry point (train.py, sweep.py, predict.py, the web app):
an error a user can fix as one line and exit status 2, SIGTERM as Ctrl-C, a closed pipe quietly."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from mlp.errors import UserError, accepted_keys, first_line, interrupted, no_space_line, out_of_space, written_by
from mlp.run.hydra_job import in_sweep

# Hydra reports a bad combination of its flags (e.g. -m with --cfg) as a ValueError naming them.
HYDRA_FLAG_ERROR = re.compile(r"--(run|multirun|cfg|info|resolve|shell.completion|experimental-rerun|config-name)\b")


def _raised_by_hydras_command_line(ex: BaseException) -> bool:
    return type(ex) is ValueError and HYDRA_FLAG_ERROR.search(str(ex)) is not None


# A config file setting a key that the group option chosen beside it lacks, e.g. `optimizer=sgd model=best`
# with a winner found with AdamW (Hydra reports it as text, without the OmegaConf error as its cause).
FILE_KEY_ERROR = re.compile(r"In '([^']+)': ConfigKeyError raised while composing config:\s*"
                            r"Key '[^']+' not in '(\w+)'\s*full_key: (\S+)")  # fmt: skip


def _key_from_a_file(source: str, schema: str, key: str) -> str:
    from mlp.run import config  # the schema loads torch: only for this error, not for every entry point's start

    group = key.split(".")[0]
    accepted = accepted_keys(getattr(config, schema, None))
    hint = (
        f" ({source} is a winner file: it selects its own {group}; leave {group}=... out)"
        if source.startswith("model/best")
        else ""
    )
    return f"{key}: set by {source}, but the chosen {group} ({schema}) has no such key{hint}{accepted}"


def _no_space(ex: BaseException, path: str | None, why: str) -> str:
    """A full disk named by what filled up: the study storage, Hydra's output folder, the MLflow store."""
    writer = written_by(ex)
    if writer == "optuna":  # the sweeper names the file where it knows it (hydra_plugins/mlp_sweeper)
        return no_space_line(path or "the Optuna storage", why, "hydra.sweeper.storage")
    if writer == "hydra":
        return no_space_line(path or "Hydra's output folder", why, "hydra.run.dir (hydra.sweep.dir with -m)")
    return no_space_line(path, why, "tracking.dir" if writer == "mlflow" else None)


def one_line(ex: BaseException) -> str | None:
    """The message for an error a user can fix, or None for anything else (a bug)."""
    # Hydra, OmegaConf and YAML only when there is an error to sort: predict.py starts without them.
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(ex, UserError):
        return str(ex)
    if (full := out_of_space(ex)) is not None:
        return _no_space(ex, *full)
    if isinstance(ex, OSError) and ex.filename is not None:  # e.g. Hydra making hydra.run.dir in a file or /proc
        return (
            f"cannot use {ex.filename}: {ex.strerror} (an output folder must be a folder you can write in: "
            "check hydra.run.dir, hydra.sweep.dir and tracking.dir)"
        )
    if isinstance(ex, yaml.YAMLError):  # a config file that is not YAML (Hydra lets the parser's error through)
        mark = getattr(ex, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
        return f"invalid YAML in {where}: {getattr(ex, 'problem', None) or first_line(ex)}"
    if _raised_by_hydras_command_line(ex):
        return f"{ex} (python train.py --help lists the flags)"
    cause = ex.__cause__ if isinstance(ex.__cause__, OmegaConfBaseException) else ex
    if isinstance(cause, OmegaConfBaseException) and _is_sweep(getattr(cause, "object_type", None)):
        # `hydra.sweeper.params={model.dropout:interval(0,0.3)}`: OmegaConf cannot hold a sweep object
        key, kind = str(getattr(cause, "full_key", "")).rsplit(".", 1)[0], cause.object_type.__name__[:-5].lower()
        return (
            f"hydra.sweeper.params: {key}: a sweep ({kind}) cannot be a value inside a mapping on the command line; "
            f"give it as an argument of its own: python train.py -m '{key}={kind}(...)'"
        )
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
        if isinstance(cause, ConfigKeyError | ConfigAttributeError):
            msg += accepted_keys(getattr(cause, "object_type", None))
        return f"{key}: {msg}" if key else msg
    if isinstance(ex, HydraException) and (bad := FILE_KEY_ERROR.search(str(ex))):
        return _key_from_a_file(*bad.groups())
    if isinstance(ex, HydraException):
        text = re.sub(r"\s*Config search path:.*", "", str(ex), flags=re.S)
        return re.sub(r"\s*\n\s*", " ", text).strip()
    return None


def _has_no_key(argument: str) -> bool:
    return not argument.startswith("-") and "=" in argument and not argument.split("=", 1)[0].lstrip("+~")


def _is_sweep(kind: Any) -> bool:
    from hydra.core.override_parser.types import Sweep  # with the other error sorting: only when there is one

    return isinstance(kind, type) and issubclass(kind, Sweep)


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """In a single run, a UserError ends the process with its one line (Hydra would print
    its own banner first). In a sweep it propagates: the trial fails, the sweep goes on."""
    try:
        yield
    except UserError as ex:
        if in_sweep():
            raise
        _exit(str(ex))


@contextlib.contextmanager
def closed_pipe_quietly() -> Iterator[None]:
    """Output piped into a reader that stops early (`| head`) ends the program quietly with
    status 1, not with a BrokenPipeError traceback (the recipe in Python's signal docs)."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(1)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a Hydra entry point; show errors a user can fix as one line and exit 2.

    HYDRA_FULL_ERROR=1 makes Hydra raise instead of printing its own multi-line report;
    a user who sets it themselves gets the full traceback.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra reads `=3` as a group override with no group and says "must be a string or a list".
    if (keyless := next((a for a in sys.argv[1:] if _has_no_key(a)), None)) is not None:
        _exit(f"the override {keyless!r} has no key: expected key=value, e.g. trainer.epochs=3")
    # A log line that cannot be written (stdout closed by `| head`) is dropped, not a
    # "--- Logging error ---" traceback per line; closed_pipe_quietly ends the program.
    logging.raiseExceptions = False
    try:
        with closed_pipe_quietly():
            main()
    except KeyboardInterrupt:
        _stopped()
    except Exception as ex:  # sorted into user errors, interrupts and bugs below
        if (message := one_line(ex)) is not None:
            _exit(message)
        if interrupted(ex):  # an error a library made of Ctrl-C or SIGTERM (torch.export's)
            _stopped()
        raise


def _stopped() -> NoReturn:
    print(f"error: stopped by {_signal_name[0]}; the MLflow run(s) it had open ended KILLED", file=sys.stderr)
    sys.exit(128 + _signal_number[0])


_signal_name, _signal_number = ["SIGINT (Ctrl-C)"], [signal.SIGINT.value]


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler's stop, `kill`) ends a run as Ctrl-C does: the code under way sees
    KeyboardInterrupt, ends its MLflow run KILLED and its Optuna trial FAIL."""
    _signal_name[0], _signal_number[0] = "SIGTERM", signum
    raise KeyboardInterrupt
