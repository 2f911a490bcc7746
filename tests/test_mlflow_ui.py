"""A study's trials in the MLflow UI as a person first sees them: a tiny sweep on synthetic data,
a real `mlflow server` (one worker) on its tracking store, and Debian's Chromium (driven by
Playwright) opening the link the sweep printed. The runs table lists the study's trials best
first, with validation accuracy and each searched parameter shown whole, without picking
columns; the parent run's page shows the whole leaderboard with links to the trials' runs. A
screenshot goes to outputs/browser/mlflow_runs.png (the README shows a copy, docs/mlflow_runs.png)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, Sweep, subprocess_env
from tests.web import browser, free_port, wait_until_up

pytestmark = pytest.mark.slow  # a sweep, an MLflow server, Chromium

SCREENSHOT = ROOT / "outputs" / "browser" / "mlflow_runs.png"
VIEWPORT = {"width": 1920, "height": 600}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> tuple[Sweep, str]:
    """A study of 3 one-epoch trials; the sweep's output (stdout and stderr)."""
    sweep = Sweep(tmp_path_factory.mktemp("ui-sweep"), "ui", empty_store)
    done = sweep.run(3)
    return sweep, done.stdout + done.stderr


@pytest.fixture(scope="module")
def server(swept: tuple[Sweep, str]) -> Iterator[str]:
    """`mlflow server` on the sweep's tracking store, one worker, on a free port; its address."""
    sweep, _ = swept
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{sweep.mlruns}/mlflow.db",
               "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = open(sweep.root / "mlflow-server.log", "w")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen(command, cwd=sweep.root, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, "mlflow server", (sweep.root / "mlflow-server.log").read_text)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(server: str) -> Iterator:
    with browser() as chromium:
        yield chromium.new_page(viewport=VIEWPORT)


def printed_link(output: str, server: str) -> str:
    """The link the sweep printed, pointed at this test's server (it prints MLflow's default port)."""
    found = re.findall(r"then open (http://127\.0\.0\.1:5000/\S+)", output)
    assert len(found) == 1, output[-3000:]
    return found[0].replace("http://127.0.0.1:5000", server)


def close_assistant(page) -> None:  # Playwright's page
    """Close MLflow's Assistant panel if it is open: it opens beside the page on a first visit (on a
    loaded machine a moment later), narrows the page, and tables wrap their cells."""
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close").first.click(timeout=5000)
        page.wait_for_timeout(500)


def cell(page, row: int, column: str):
    return page.locator(f'.ag-row[row-index="{row}"] [col-id="{column}"]').first


# Each piece of text in an element as laid out (a Range's box is the whole text, also where an
# ellipsis cuts it short on the screen), and the element's own box.
TEXT_BOXES = """e => {
    const walk = document.createTreeWalker(e, NodeFilter.SHOW_TEXT), texts = [];
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        if (!n.textContent.trim()) continue;
        const range = document.createRange(); range.selectNodeContents(n);
        const box = range.getBoundingClientRect(); texts.push([box.left, box.right]);
    }
    const box = e.getBoundingClientRect(); return [box.left, box.right, texts];
}"""


def shown_whole(locator) -> bool:
    """Its text on the screen: inside the viewport and inside the element, not cut short."""
    left, right, texts = locator.evaluate(TEXT_BOXES)
    return bool(texts) and all(left <= a and b <= right + 0.5 and b <= VIEWPORT["width"] for a, b in texts)


def test_the_printed_link_shows_the_trials_best_first_with_scores_and_parameters(swept, server, page) -> None:
    sweep, output = swept
    trials = sorted(sweep.study_trials(), key=lambda t: -t.value)
    assert len(trials) == 3 and len({t.value for t in trials}) > 1, [t.value for t in trials]
    first = rf"study ui: 3 trials, best validation accuracy first:\n.*  1\. trial {trials[0].number} "
    assert re.search(first, output), output[-3000:]  # the ranked summary the sweep ends with
    page.goto(printed_link(output, server))
    page.wait_for_selector('.ag-row[row-index="2"]', timeout=60_000)
    page.wait_for_timeout(1000)  # the saved view's column widths are applied after the rows
    close_assistant(page)
    assert page.locator('.ag-row[row-index="3"]').count() == 0  # the study's trials only: not its parent

    runs = {r.info.run_id: r for r in sweep.runs("child")}
    for row, trial in enumerate(trials):  # best first, each with its validation accuracy
        name = cell(page, row, "attributes.`Run Name`").locator("a").first
        assert name.inner_text().strip() == runs[trial.user_attrs["mlflow_run_id"]].info.run_name
        assert name.inner_text().startswith(f"trial-{trial.number:03d} ") and shown_whole(name)
        value = cell(page, row, "metrics.`val/acc`")
        assert float(value.inner_text()) == pytest.approx(trial.value, abs=1e-3) and shown_whole(value)
    for key in trials[0].params:  # every searched parameter: its name and each trial's value, on screen
        header = page.locator(f'.ag-header-cell[col-id="params.`{key}`"]').first
        assert header.inner_text().strip() == key and shown_whole(header), key
        for row, trial in enumerate(trials):
            logged = runs[trial.user_attrs["mlflow_run_id"]].data.params[key]
            assert cell(page, row, f"params.`{key}`").inner_text().strip() == logged, (key, row)
    header = page.locator('.ag-header-cell[col-id="metrics.`val/acc`"]').first
    assert header.inner_text().strip() == "val/acc" and shown_whole(header)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_parent_run_shows_the_whole_leaderboard_with_links(swept, server, page) -> None:
    sweep, _ = swept
    (parent,) = [r for r in sweep.runs("parent") if r.data.tags.get("sweep.role") == "parent"]
    trials = sorted(sweep.study_trials(), key=lambda t: -t.value)
    best = trials[0]
    assert parent.data.metrics["val/acc"] == best.value  # the column the trials are sorted by
    logged = sweep.client().get_run(best.user_attrs["mlflow_run_id"]).data.params
    assert {k: parent.data.params[k] for k in best.params} == {k: logged[k] for k in best.params}  # as its run logged
    page.goto(
        f"{server}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    )
    links = page.locator("table a[href*='/runs/']").filter(has_text=re.compile(r"^trial-\d{3} "))  # its description
    links.first.wait_for(timeout=60_000)
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert [h.rsplit("/", 1)[-1] for h in hrefs] == [t.user_attrs["mlflow_run_id"] for t in trials]
    close_assistant(page)
    page.get_by_text("Show more").first.click()  # MLflow folds a long description after two lines
    for i in range(links.count()):  # every row, its link on top where it is drawn (not under a fold)
        links.nth(i).scroll_into_view_if_needed()
        if not on_top_and_whole(links.nth(i), page):
            page.screenshot(path=str(SCREENSHOT.with_name("parent_failed.png")))
            covering = links.nth(i).evaluate(COVERING)
            pytest.fail(f"description link {i} is not on top and whole; at its place: {covering}")


COVERING = """e => { const b = e.getClientRects()[0];
                     const c = document.elementFromPoint(b.left + 2, b.top + b.height / 2);
                     return JSON.stringify([b.left, b.top, b.width, b.height, window.innerWidth, window.innerHeight,
                                            c && c.outerHTML.slice(0, 300)]); }"""
ON_TOP = """e => { const b = e.getClientRects()[0];  // its first line, if it wraps
                   return e.contains(document.elementFromPoint(b.left + 2, b.top + b.height / 2)); }"""


def on_top_and_whole(element, page, seconds: float = 10) -> bool:  # Playwright's locator and page
    """Whether ``element`` is drawn on top and whole, polled for up to ``seconds``: the fold
    opens with an animation, slow on a loaded machine."""
    deadline = time.monotonic() + seconds
    while not (ok := element.evaluate(ON_TOP) and shown_whole(element)) and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    return ok
