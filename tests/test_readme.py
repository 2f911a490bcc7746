"""The README and docs/*.md stay true. Their `python train.py ...` commands compose as written:
every group, key and value they name exists (the config is composed with Hydra's compose API and
validated, the sweeper's settings included), and the error examples fail with the line shown.
The README stays short, its Layout names every module and entry point (and nothing that is not
there), and every link, module path and dotted name in README and docs leads somewhere."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from mlp.cli import one_line
from mlp.run.config import validate
from mlp.run.winner_files import winner_record
from tests import forked
from tests.helpers import CONF, ROOT, subprocess_env

COMMAND = re.compile(r"^\s+(\$ )?(?:\.venv/bin/)?python train\.py(.*)$")
README = ROOT / "README.md"


def documents() -> list[Path]:
    """The README and the docs it links to: the commands of all of them are checked."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands() -> list[tuple[str, list[str], str | None]]:
    """(line, overrides, expected error or None) for each train.py command in a code block of the
    README or docs/*.md, each command once (the README and a docs page may both show it)."""
    found = {}
    for doc in documents():
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if not (match := COMMAND.match(line)):
                continue
            words = shlex.split(match[2].split(" #")[0].rstrip(" \\"))
            if "$" in match[2] or any(w.startswith(("--", ">")) or w == "&" for w in words):
                continue  # shell variables, redirections, flags: not config
            expected = lines[i + 1].strip() if match[1] else None  # "$ command" is followed by its output
            found.setdefault((tuple(words), expected), line.strip())
    return [(line, list(words), expected) for (words, expected), line in found.items()]


def compose_command(words: list[str]):
    sweep = "-m" in words
    overrides = [w for w in words if w != "-m"]
    if sweep:  # sweep values (choice(...), interval(...)) are the sweeper's to parse, not the composer's
        overrides = [o for o in overrides if "(" not in o]
    with initialize_config_dir(config_dir=CONF):
        cfg = compose("config", overrides, return_hydra_config=sweep)
    validate(cfg)
    return cfg


def test_the_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 15 and sum(e is not None for _, _, e in commands) == 2


@pytest.mark.parametrize(
    ("line", "words", "expected"), readme_commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_readme_command_composes_as_written(line: str, words: list[str], expected: str | None) -> None:
    if expected is None:
        cfg = compose_command(words)
        if "-m" in words:
            assert cfg.hydra.sweeper.study_name and cfg.hydra.sweeper.params
        return
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever it is, its one line is the README's
        compose_command(words)
    assert f"error: {one_line(info.value)}" == expected


# The README's cheap commands run as written, in a copy of the repository as a user clones it.
SWEEP_PY = re.compile(r"^\s+(?:\.venv/bin/)?python sweep\.py .*$")
SMOKE = re.compile(r"^\s+python train\.py -m .*study_name=smoke.*$")
FLAGS = re.compile(r"^\s+python train\.py --(cfg job|help)\b.*$")


def readme_lines(pattern: re.Pattern) -> list[str]:
    """The code lines of the README and docs/*.md that match, without their comments, each once."""
    lines = [line for doc in documents() for line in doc.read_text().splitlines() if pattern.match(line)]
    return list(dict.fromkeys(line.split(" #")[0].strip() for line in lines))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files (tracked and new, nothing git ignores: no mlruns, no winner of a
    test) in a new folder, with this checkout's MNIST and virtualenv linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    )  # fmt: skip
    dest = tmp_path_factory.mktemp("clone") / "mlp-digits"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "data").symlink_to(ROOT / "data", target_is_directory=True)
    (dest / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return dest


def user_env(clone: Path) -> dict[str, str]:
    """The virtualenv first on PATH (as after `source .venv/bin/activate`), no settings of ours."""
    path = f"{clone / '.venv' / 'bin'}:{os.environ['PATH']}"
    return subprocess_env(PATH=path, OPTUNA_STORAGE=f"sqlite:///{clone}/mlruns/optuna.db")


def shell(clone: Path, command: str) -> subprocess.CompletedProcess:
    """``command`` in bash in the clone: a shell's pipes and flags, with Python's start-up as typed."""
    return subprocess.run(["bash", "-c", command], cwd=clone, env=user_env(clone), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def typed(clone: Path, line: str) -> subprocess.CompletedProcess:
    """A line ``python SCRIPT ARGS`` run in the clone with its words as typed, a process of its own
    whose libraries are already imported (tests/forked.py): what it does, not how Python starts."""
    python, script, *args = shlex.split(line)
    assert python == "python", line
    return forked.run(clone / script, args, cwd=clone, env=user_env(clone))


@pytest.mark.slow
def test_readme_study_tools_and_smoke_sweep_run_as_written(clone: Path) -> None:
    sweep_lines = [line for line in readme_lines(SWEEP_PY) if " shared " not in line]  # shared: the PostgreSQL try-out
    assert len(sweep_lines) >= 6 and any("--top 10" in line for line in sweep_lines)

    before = typed(clone, "python sweep.py leaderboard --top 10")  # no sweep yet: one line naming what is there
    assert before.returncode == 2 and before.stderr.count("\n") == 1 and "run a sweep first" in before.stderr

    smokes = readme_lines(SMOKE)  # the default sweep's, and the multi-objective one's (smoke-pareto)
    assert len(smokes) == 2 and any("optuna_pareto" in line for line in smokes)
    for smoke in smokes:
        assert typed(clone, smoke).returncode == 0, smoke
    # Its winner file selects the smoke trial's data (synthetic) and split: the rerun scores the same, to every digit.
    rerun = typed(clone, "python train.py model=best_smoke")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    smoke_best = optuna.load_study(study_name="smoke", storage=f"sqlite:///{clone}/mlruns/optuna.db").best_value
    client = MlflowClient(f"sqlite:///{clone}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    (single,) = [r for r in runs if "sweep.study" not in r.data.tags]
    assert single.data.params["data.name"] == "synthetic"
    assert single.data.metrics["val/acc"] == smoke_best
    # the default sweep (README: `python train.py -m hydra/sweeper=optuna`) with synthetic data added, 3 short trials
    default = typed(
        clone,
        "python train.py -m hydra/sweeper=optuna data=synthetic trainer.epochs=1 hydra.sweeper.n_trials=3 "
        "hydra.sweeper.study_name=mnist-mlp",
    )
    assert default.returncode == 0, default.stderr[-2000:]
    shipped = (ROOT / "conf/model/best.yaml").read_text()
    assert (clone / "conf/model/best.yaml").read_text() == shipped  # the synthetic study scored other data: kept

    said = {}  # each line's result, for what is checked after the loop
    for line in sweep_lines:
        done = said[line] = typed(clone, line)
        if line == "python sweep.py export":  # mnist-mlp's best here is a synthetic trial: the shipped winner stays
            assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
            shipped_winner = winner_record(ROOT / "conf/model/best.yaml")
            kept = f"error: {clone}/conf/model/best.yaml is kept: it holds trial {shipped_winner.trial} of study "
            kept += f"{shipped_winner.study}, which scored {shipped_winner.value:.4f}"
            assert done.stderr.startswith(kept)
            assert (clone / "conf/model/best.yaml").read_text() == shipped
            continue
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert done.stdout.strip() or "plots" in line, line
    listed = said["python sweep.py list"].stdout
    assert "smoke: 3 complete" in listed and "smoke-pareto: 4 complete" in listed
    assert "Pareto front of val_acc, latency_ms: " in listed
    exported = (clone / "t2.yaml").read_text()  # `export --trial 2 --out t2.yaml` asked for trial 2 of mnist-mlp
    assert exported.startswith("# @package _global_\n# winner: study=mnist-mlp trial=2 ")
    plots = {"optimization_history.png", "parallel_coordinate.png", "slice.png"}  # 3 trials of 10 parameters:
    assert {p.name for p in (clone / "plots").glob("*.png")} == plots  # no importances yet


@pytest.mark.slow
def test_readme_flags_and_help_run_as_written(clone: Path) -> None:
    for line in readme_lines(FLAGS):
        done = typed(clone, line)
        assert done.returncode == 0 and ("model:" in done.stdout or "== Configuration groups ==" in done.stdout), line
    groups = typed(clone, "python train.py --help").stdout
    assert "\noptimizer: adamw, sgd\n" in groups and "_schema" not in groups  # options only, not the typed schemas
    pruners = sorted(f.stem for f in (ROOT / "conf/hydra/sweeper/pruner").glob("*.yaml"))
    assert all(name in groups.split("== Configuration groups ==")[0] for name in pruners)  # the header names each
    cut = shell(clone, "python train.py --help | head -1")  # a reader that stops early: no traceback
    assert cut.stdout.startswith("train.py: train an MLP on MNIST") and cut.stdout.count("\n") == 1
    assert cut.stderr == ""


# The README stays short and true: the measured detail lives in docs/*.md, which it links to.
def test_the_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages and [p.name for p in pages if f"](docs/{p.name})" not in text] == []


def section(text: str, title: str) -> list[str]:
    """The lines of a `## title` section, up to the next heading of its level or above."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if re.match(r"#{1,2} ", lines[i])), len(lines))
    return lines[start:end]


def layout_entries() -> list[str]:
    """The paths the README's Layout names: the first word of each line of its code block (not of
    a line that continues a description, indented further)."""
    return [line.split()[0] for line in section(README.read_text(), "Layout") if re.match(r" {4}\S", line)]


def modules_and_entry_points() -> set[str]:
    """From the file system: every module of mlp/ (not its __init__/__main__ files), the scripts
    at the top, the Hydra plugin, scripts/ and benchmarks/."""
    found = [
        *(p for p in (ROOT / "mlp").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")),
        *ROOT.glob("*.py"),
        *(p for p in (ROOT / "hydra_plugins").rglob("*.py") if p.name != "__init__.py"),
        *(ROOT / "scripts").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    return {str(p.relative_to(ROOT)) for p in found if "__pycache__" not in p.parts}


def test_the_layout_names_every_module_and_entry_point_and_only_paths_that_exist() -> None:
    named = layout_entries()
    expected = modules_and_entry_points()
    assert len(expected) > 30 and {"train.py", "mlp/run/experiment.py", "benchmarks/pruning.py"} <= expected
    assert sorted(expected - set(named)) == [], "missing from the README's Layout"
    gone = [p for p in named if not ((ROOT / p).is_dir() if p.endswith("/") else (ROOT / p).is_file())]
    assert gone == [], "the README's Layout names paths that do not exist"
    assert len(named) == len(set(named))


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> -."""
    headings = [line.lstrip("#").strip() for line in doc.read_text().splitlines() if re.match(r"#+ ", line)]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_links_lead_to_files_and_headings_that_exist(doc: Path) -> None:
    links = [t for t in LINK.findall(doc.read_text()) if not t.startswith(("http://", "https://", "mailto:"))]
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert links and broken == []


PATH = re.compile(r"(?<![\w./-])mlp/[\w./]*[\w/]")  # mlp/run/config.py, mlp/sweep/
DOTTED = re.compile(r"(?<![\w./-])mlp(?:\.\w+)+")  # mlp.serve.images.photo_like, python -m mlp.serve


def resolves(name: str) -> bool:
    """Whether a dotted name is a module of the package, or an attribute of one."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_module_paths_and_names_in_the_docs_exist(doc: Path) -> None:
    text = doc.read_text()
    paths, names = set(PATH.findall(text)), set(DOTTED.findall(text))
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []
    assert [n for n in sorted(names) if not resolves(n)] == []


def test_the_name_checks_find_old_module_paths() -> None:
    old = "see mlp/sweeper.py and `mlp.images.photo_like`; now mlp/sweep/worker.py and mlp.serve.images.photo_like."
    assert PATH.findall(old) == ["mlp/sweeper.py", "mlp/sweep/worker.py"]
    assert [n for n in DOTTED.findall(old) if not resolves(n)] == ["mlp.images.photo_like"]
    assert resolves("mlp.training.onecycle") and not resolves("mlp.run.model.NoSuchThing")
