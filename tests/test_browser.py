"""The drawing page in a real browser (Debian's Chromium driven by Playwright): strokes drawn
with the mouse are read while drawing, an uploaded photo is read, and a screenshot of the page
is saved to outputs/browser/serve.png (the README shows a copy, docs/serve.png)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, subprocess_env
from tests.web import ensure_chromium, running_app

pytestmark = pytest.mark.slow  # Chromium, the web app, the champion

SCREENSHOT = ROOT / "outputs" / "browser" / "serve.png"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


def probabilities(page) -> list[float]:
    return page.eval_on_selector_all(".bar", "bars => bars.map(b => Number(b.dataset.p))")


def ink_seen(page) -> int:
    """How many of the 28x28 preview's pixels are lit."""
    return page.evaluate(
        """() => { const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
                   let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )


def stroke(page, points: list[tuple[int, int]], release: bool = True) -> None:
    """Draw through ``points`` (canvas pixels) with the left mouse button down."""
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
    if release:
        page.mouse.up()


def test_drawing_uploading_and_clearing(browser, web_app: str, digit_photos: list) -> None:
    page = browser.new_page(viewport={"width": 980, "height": 560})
    page.goto(web_app)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model: mnist-mlp version')")

    # A vertical stroke is a 1, and the page says so before the button is released.
    stroke(page, [(140, 40), (140, 150), (142, 245)], release=False)
    page.wait_for_function("document.getElementById('digit').textContent !== ''")
    page.mouse.up()
    page.wait_for_timeout(300)  # the last stroke's answer
    assert page.text_content("#digit") == "1"
    probs = probabilities(page)
    assert len(probs) == 10 and sum(probs) == pytest.approx(1, abs=1e-4) and max(probs) == probs[1]
    assert ink_seen(page) > 20  # the 28x28 image the model read is shown

    page.click("#clear")
    assert page.text_content("#digit") == "" and probabilities(page) == [0] * 10 and ink_seen(page) == 0

    # An uploaded photo of a test digit: its label.
    for path, label in digit_photos[5:8]:
        page.click("#clear")
        page.set_input_files("#upload", str(path))
        page.wait_for_function("document.getElementById('digit').textContent !== ''")
        assert (page.text_content("#digit"), page.text_content("#status")) == (str(label), "")
        assert sum(probabilities(page)) == pytest.approx(1, abs=1e-4)

    # A 7 with its bar chart, for the README.
    page.click("#clear")
    stroke(page, [(80, 70), (205, 70), (120, 240)])
    page.wait_for_timeout(500)
    assert page.text_content("#digit") == "7"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    page.close()


def test_without_a_model_the_page_says_how_to_make_one(browser, tmp_path: Path) -> None:
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").touch()
    with running_app(subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlruns/mlflow.db")) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#nomodel", state="visible")
        assert "No model yet" in page.text_content("#nomodel")
        assert "python train.py model=best" in page.text_content("#nomodel")
        page.close()
