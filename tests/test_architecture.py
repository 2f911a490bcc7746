"""The codebase's rules that no tool states: the sweep protocol's names are written only in
mlp/sweep/protocol.py; the rooms' packages hold nothing; the worker keeps its state in one place; a
function-level import says why. The import graph's rules are import-linter contracts in
pyproject.toml (checked here and by `make lint`); function length and complexity are ruff's
(C901, PLR0915)."""

from __future__ import annotations

import ast
import logging.config
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

from mlp.sweep import protocol
from tests.helpers import ROOT

ENTRY_POINTS = ["train.py", "sweep.py", "predict.py", "hydra_plugins/mlp_sweeper/sweeper.py"]


def package_files() -> list[Path]:
    return sorted((ROOT / "mlp").rglob("*.py"))


def source_files() -> list[Path]:
    """The package, its entry points and the benchmarks: all code that is not a test."""
    return package_files() + [ROOT / p for p in ENTRY_POINTS] + sorted((ROOT / "benchmarks").glob("*.py"))


def test_the_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    # import-linter sets its loggers up with dictConfig, which disables every logger made before in this
    # process (a later test reading the worker's log lines would read nothing): keep those.
    configure = logging.config.dictConfig
    monkeypatch.setattr(logging.config, "dictConfig", lambda c: configure({**c, "disable_existing_loggers": False}))
    assert lint_imports(str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_room_packages_hold_nothing() -> None:
    for room in ("run", "sweep", "serve"):
        tree = ast.parse((ROOT / "mlp" / room / "__init__.py").read_text())
        assert [type(n) for n in tree.body] == [ast.Expr], f"mlp/{room}/__init__.py holds only its docstring"


def test_benchmarks_use_no_private_names() -> None:
    private = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlp"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private


# The protocol's names that no other string is: plain words ("pruner", "worker") are also config keys
# and file names, so for those the next test checks how attributes and tags are named instead.
PROTOCOL_VALUES = {
    value
    for name, value in vars(protocol).items()
    if name.isupper()
    and isinstance(value, str)
    and ("." in value or "_" in value)
    and name not in ("THREADS", "OBJECTIVE")  # a config key; a name leaderboards and model tags use too
}
NAMING_CALLS = {"set_user_attr", "set_trial_user_attr", "set_tag", "set_tags", "get"}


def test_the_protocol_names_are_written_only_in_the_protocol_module() -> None:
    assert {"sweep.study", "mlflow_run_id", "pruned_at_epoch", "failure_reason", "sweep.state"} <= PROTOCOL_VALUES
    found = []
    for path in source_files():
        if path.name == "protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text in PROTOCOL_VALUES or any(text.startswith(f"{v}=") for v in PROTOCOL_VALUES):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert not found, f"protocol names written outside mlp/sweep/protocol.py: {found}"


def test_trial_attributes_and_tags_are_named_through_the_protocol() -> None:
    """``trial.set_user_attr("x", ...)``, ``user_attrs.get("x")``, ``user_attrs["x"]``,
    ``client.set_tag(run, "x", ...)``: a literal name outside the protocol module is a new
    message nobody else knows about."""
    found = []
    for path in source_files():
        if path.name == "protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            owner, name, call = None, None, None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NAMING_CALLS:
                owner, call = node.func.value, node.func.attr
                by_id = call == "set_trial_user_attr" or (
                    call == "set_tag" and len(node.args) == 3
                )  # (id, name, value)
                args = node.args[1:2] if by_id else node.args[:1]
                name = args[0] if args else None
            elif isinstance(node, ast.Subscript):
                owner, name = node.value, node.slice
            attrs = isinstance(owner, ast.Attribute) and owner.attr in ("user_attrs", "system_attrs")
            naming = attrs or call not in (None, "get")
            if naming and isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name.value!r}")
    assert not found, f"attribute or tag names written as literals: {found}"


def test_the_worker_sets_its_state_only_in_init() -> None:
    tree = ast.parse((ROOT / "mlp/sweep/worker.py").read_text())
    (worker,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Worker"]
    set_in = {}
    for method in (n for n in worker.body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                    set_in.setdefault(target.attr, set()).add(method.name)
    assert set_in and all(methods <= {"__init__", "launch", "tell", "land"} for methods in set_in.values())
    # Outside __init__ only the counters it declared there change, all in the worker's own thread
    # (its asks and tells): job_idx, ended, failed, and the launcher's error that stops it asking.
    assert {a for a, m in set_in.items() if m - {"__init__"}} <= {"job_idx", "ended", "failed", "launcher_error"}
    assert all("__init__" in methods for methods in set_in.values())


def test_a_function_level_import_says_why() -> None:
    """Imports belong at the top; one inside a function (to keep a start-up fast) carries its
    reason as a comment on its line or the line above."""
    silent = []
    for path in package_files() + [ROOT / p for p in ENTRY_POINTS]:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    here, above = lines[inner.lineno - 1], lines[inner.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#") and not _in_a_block_with_a_reason(lines, inner):
                        silent.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {here.strip()}")
    assert not silent, f"function-level imports without a reason: {silent}"


def _in_a_block_with_a_reason(lines: list[str], node: ast.stmt) -> bool:
    """An import in a run of imports whose first line (or the line above it) has the reason."""
    i = node.lineno - 1
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")) or (i > 0 and not lines[i - 1].strip()):
        if "#" in lines[i - 1]:
            return True
        i -= 1
    return "#" in lines[i] or lines[i - 1].strip().startswith("#")
