"""The codebase's shape, derived from its source: the import graph of the package (function-level
imports included) has no circle and no upward arrow between its rooms; the sweep protocol's
names are written only in mlp/sweep/protocol.py; the worker keeps its state in one place and no
function of the sweep room is longer than a screen; a function-level import says why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlp.sweep import protocol
from tests.helpers import ROOT

ENTRY_POINTS = ["train.py", "sweep.py", "predict.py", "hydra_plugins/mlp_sweeper/sweeper.py"]
# A module may import modules of its own rank or below. The run room sees only the sweep room's
# protocol (a leaf of names, ranked with the base); the sweep and serve rooms never see each other.
RANKS = {"mlp": 0, "mlp.errors": 0, "mlp.sqlite_files": 0, "mlp.sweep.protocol": 0, "mlp.run": 1, "mlp.sweep": 2,
         "mlp.serve": 2, "mlp.cli": 3}  # fmt: skip
MAX_LINES = 40


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files() -> list[Path]:
    return sorted((ROOT / "mlp").rglob("*.py"))


def source_files() -> list[Path]:
    """The package, its entry points and the benchmarks: all code that is not a test."""
    return package_files() + [ROOT / p for p in ENTRY_POINTS] + sorted((ROOT / "benchmarks").glob("*.py"))


def imported(path: Path) -> set[str]:
    """The mlp modules a file imports anywhere in it (``from mlp.run import data`` is mlp.run.data)."""
    modules = {module_name(p) for p in package_files()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{a.name}" for a in node.names}
            # `from mlp.sweep import protocol` imports the module; the room's __init__ holds nothing
            # (test_room_packages_hold_nothing), so it is not an arrow of its own.
            found |= names if names & modules else {node.module}
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported(p) - {module_name(p)} for p in package_files()}


def rank(module: str) -> tuple[int, str]:
    """(rank, room) of a package module: the longest prefix in RANKS decides."""
    prefix = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[prefix], prefix


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_derived_from_every_module() -> None:
    edges = graph()
    assert {"mlp.run.experiment", "mlp.sweep.worker", "mlp.serve.app", "mlp.sweep.protocol"} <= edges.keys()
    assert "mlp.run.training" in edges["mlp.run.experiment"]  # a plain import is seen
    assert "mlp.run.config" in edges["mlp.cli"]  # and a function-level one


def test_room_packages_hold_nothing() -> None:
    for room in ("run", "sweep", "serve"):
        tree = ast.parse((ROOT / "mlp" / room / "__init__.py").read_text())
        assert [type(n) for n in tree.body] == [ast.Expr], f"mlp/{room}/__init__.py holds only its docstring"


def test_no_import_circle() -> None:
    edges = graph()
    circles = sorted(m for m in edges if m in reachable(edges, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_no_upward_arrow_and_no_arrow_between_rooms() -> None:
    wrong = []
    for module, targets in graph().items():
        (mine, my_room) = rank(module)
        for target in sorted(targets):
            (theirs, their_room) = rank(target)
            if theirs > mine or (theirs == mine and mine > 0 and their_room != my_room):
                wrong.append(f"{module} -> {target}")
    assert not wrong, f"arrows that point up or across rooms: {wrong}"


def test_each_side_imports_only_what_it_may() -> None:
    edges = graph()
    assert not imported(ROOT / "mlp/sweep/protocol.py"), "the protocol is a leaf"
    job_side = reachable(edges, "mlp.sweep.job")
    assert not job_side & {"mlp.sweep.worker", "mlp.sweep.study", "mlp.sweep.settings"}, "the job's side sees no worker"
    for module in (m for m in edges if m.startswith("mlp.serve")):
        seen = sorted(m for m in reachable(edges, module) if m.startswith("mlp.sweep.") and m != "mlp.sweep.protocol")
        assert not seen, f"{module} reaches sweep modules {seen}"
    for module in (m for m in edges if m.startswith("mlp.run")):
        assert not {m for m in edges[module] if m.startswith("mlp.sweep.")} - {"mlp.sweep.protocol"}, module


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
    assert set_in and all(methods <= {"__init__", "slot", "end_trial", "landed"} for methods in set_in.values())
    # Outside __init__ only the counters it declared there change (under its lock): job_idx, told, failures.
    assert {a for a, m in set_in.items() if m - {"__init__"}} <= {"job_idx", "told", "failures"}
    assert all("__init__" in methods for methods in set_in.values())


@pytest.mark.parametrize("path", sorted((ROOT / "mlp" / "sweep").glob("*.py")), ids=lambda p: p.name)
def test_no_function_of_the_sweep_room_is_longer_than_a_screen(path: Path) -> None:
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long


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
