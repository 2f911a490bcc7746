"""The curl examples of the README and docs/recognizer.md, run verbatim on the shipped samples
against real servers serving the session's champion: the web app (`python -m mlp.serve`, as
`make serve` starts it) and MLflow's own `mlflow models serve --env-manager local` (started by
`make serve-mlflow`). The answers have the fields, digit and form the docs show.

The docs name the servers' default ports (8000, 5002), which a test cannot count on being free:
the servers run on free ports and curl's own configuration (a `.curlrc` with `connect-to`, in
$CURL_HOME) sends the documented host and port there, so the commands run as a user types them.
README's `$ python predict.py samples/...` block is run by tests/test_predict.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT
from tests.web import free_port

pytestmark = pytest.mark.slow  # servers in subprocesses, the champion

DOCS = [ROOT / "README.md", ROOT / "docs" / "recognizer.md"]
WEB_APP, MLFLOW_SERVER = "127.0.0.1:8000", "127.0.0.1:5002"  # as the docs write them
SAMPLE_DIGITS = {"samples/seven.jpg": 7, "samples/three.png": 3}  # as README's predict example reads them


def code_lines(doc: Path) -> list[str | None]:
    """The lines of a markdown file's indented code blocks; None for every other line."""
    return [line[4:] if line.startswith("    ") else None for line in doc.read_text().splitlines()]


def curl_examples() -> dict[str, str | None]:
    """{command: the output the docs show for it, or None} for every command in a code block of
    README.md or docs/recognizer.md that calls curl, its trailing comment (after two spaces) left out. A command runs
    on over lines ending in a backslash; the JSON lines after it (starting with { or ") are its
    output; commands in a row before one output all share it ("or ...: the same answer"). A command
    shown in both documents counts once, with the output either shows."""
    found: dict[str, str | None] = {}
    for doc in DOCS:
        lines, waiting, i = [*code_lines(doc), None], [], 0
        while i < len(lines):
            line = lines[i]
            if line is None:  # the end of a code block
                waiting = []
            elif line.lstrip().startswith(("{", '"')):
                shown = []
                while lines[i] is not None and lines[i].lstrip().startswith(("{", '"')):
                    shown.append(lines[i].strip())
                    i += 1
                for command in waiting:
                    found[command] = found.get(command) or " ".join(shown)
                waiting = []
                continue
            elif re.search(r"(^|\|)\s*curl ", command := _whole(lines, i), re.MULTILINE):
                i += command.count("\n") + 1
                command = "\n".join(re.sub(r"\s{2,}# .*$", "", part) for part in command.splitlines())
                found.setdefault(command, None)
                waiting.append(command)
                continue
            i += 1
    return found


def _whole(lines: list[str | None], i: int) -> str:
    """The command starting at line i, with its continuation lines."""
    parts = [lines[i]]
    while parts[-1].endswith("\\") and lines[i + 1] is not None:
        i += 1
        parts.append(lines[i])
    return "\n".join(parts)


def shown_json(text: str) -> object:
    """The JSON the docs show, shortened with "..." (`[1.2e-06, ..., 0.9991, ...]`), as a value
    with the same keys and kinds of values: the ellipses dropped."""
    return json.loads(re.sub(r",\s*\.\.\.", "", text))


def same_form(got: object, shown: object, where: str = "") -> None:
    """``got`` has the keys, in the same order, and the kinds of values ``shown`` has."""
    if isinstance(shown, dict):
        assert isinstance(got, dict) and list(got) == list(shown), (where, got, shown)
        for key in shown:
            same_form(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and got, (where, got)
        for item in got:
            same_form(item, shown[0], f"{where}[]")
    elif isinstance(shown, float):  # a probability: json may write 0 or 1 without a point
        assert type(got) in (float, int), (where, got, shown)
    else:
        assert type(got) is type(shown), (where, got, shown)  # str, int or bool: exactly that


@pytest.fixture(scope="module")
def mlflow_server(champion: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's own model server for the champion, started as the docs say: `make serve-mlflow`
    (the installed virtualenv taken as it is: -o), on a free port; its host:port."""
    if not (ROOT / ".venv" / "bin" / "mlflow").exists():
        pytest.skip("make serve-mlflow runs .venv/bin/mlflow: no .venv here (make creates it)")
    port = free_port()
    stray = ROOT / "mlflow.db"
    existed = stray.exists()
    log = tmp_path_factory.mktemp("serve-mlflow") / "server.log"
    # under `make test ARGS=...` the outer make's MAKEFLAGS would pass its ARGS on: a user's shell has none
    env = {k: v for k, v in champion["env"].items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "serve-mlflow", f"ARGS=--port {port}"]
    with log.open("w") as out:
        # start_new_session: make, mlflow and its uvicorn in one process group, stopped together
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200:
                    break
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"make serve-mlflow did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert existed or not stray.exists(), "make serve-mlflow left a stray mlflow.db in the repository"


@pytest.fixture(scope="module")
def shell(web_app: str, mlflow_server: str, champion: dict, tmp_path_factory: pytest.TempPathFactory):
    """Runs a docs command verbatim with bash in the repository, as a user with the virtualenv
    activated; curl's config routes the documented ports to the test's servers."""
    home = tmp_path_factory.mktemp("curl-home")
    routes = {WEB_APP: web_app.removeprefix("http://"), MLFLOW_SERVER: mlflow_server}
    (home / ".curlrc").write_text("".join(f'connect-to = "{doc}:{real}"\n' for doc, real in routes.items()))
    bin_dir = str(Path(sys.executable).parent)
    env = {**champion["env"], "CURL_HOME": str(home), "PATH": f"{bin_dir}:{champion['env']['PATH']}"}

    def run(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout, (command, done.returncode, done.stderr[-2000:])
        return done.stdout

    return run


def the_sample(command: str) -> tuple[str, int]:
    (sample,) = {s for s in SAMPLE_DIGITS if s in command}
    return sample, SAMPLE_DIGITS[sample]


def test_the_docs_show_the_servers_examples() -> None:
    """The examples the tests below run are there, each with an answer shown (so none is left out)."""
    examples = curl_examples()
    assert {command for command, shown in examples.items() if shown is None} == set()
    predict = [c for c in examples if f"{WEB_APP}/predict" in c]
    assert any("-F file=@" in c for c in predict) and any("--data-binary @" in c for c in predict)
    assert any("/health" in c for c in examples) and any("5002/invocations" in c for c in examples)
    readme = [c for c in examples if c in (ROOT / "README.md").read_text()]
    assert any(f"{WEB_APP}/predict" in c for c in readme)


def test_the_web_apps_curl_examples_answer_as_shown(shell) -> None:
    answers = {}
    for command, shown in curl_examples().items():
        if WEB_APP not in command:
            continue
        got, expected = json.loads(shell(command)), shown_json(shown)
        same_form(got, expected)
        if command.endswith("/health"):
            version = re.compile(r"mnist-mlp version \d+")
            assert version.fullmatch(got.pop("version")) and version.fullmatch(expected.pop("version"))
            assert got == expected  # status and model as shown
            continue
        sample, digit = the_sample(command)
        assert got["digit"] == expected["digit"] == digit
        assert (got["unsure"], got["pieces"]) == (expected["unsure"], expected["pieces"]), got
        probs = got["probabilities"]
        assert len(probs) == 10 and sum(probs) == pytest.approx(1, abs=1e-5) and max(probs) == probs[digit]
        assert len(got["image"]) == 28 and {len(row) for row in got["image"]} == {28}
        assert got["runner_up"]["digit"] != digit and got["runner_up"]["probability"] == sorted(probs)[-2]
        assert got["model"]["uri"] == expected["model"]["uri"] and got["model"]["ms"] > 0
        del got["model"]["ms"]  # the model's time for this image: it varies, the rest may not
        answers.setdefault(sample, []).append(got)
    assert sum(len(each) for each in answers.values()) >= 2  # a form's file and a raw body
    for each in answers.values():  # a form's file or the raw body: the same answer
        assert all(answer == each[0] for answer in each)


def test_the_serve_mlflow_example_answers_as_shown(shell) -> None:
    """MLflow's own server, fed the 28x28 image by the docs' pipe, gives the web app's probabilities."""
    (command, shown), *others = [(c, s) for c, s in curl_examples().items() if MLFLOW_SERVER in c]
    assert not others
    got, expected = json.loads(shell(command)), shown_json(shown)
    same_form(got, expected)
    sample, digit = the_sample(command)
    (probs,) = got["predictions"]
    assert len(probs) == 10 and max(probs) == probs[digit] and sum(probs) == pytest.approx(1, abs=1e-5)
    web = json.loads(shell(f"curl -s --data-binary @{sample} http://{WEB_APP}/predict"))
    assert probs == pytest.approx(web["probabilities"], abs=1e-6)  # the same model and the same 28x28 image
