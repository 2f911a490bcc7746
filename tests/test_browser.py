"""The drawing page in a real browser (Debian's Chromium driven by Playwright): strokes drawn
with the mouse are read while drawing, an uploaded photo is read and shown, a failed reading
leaves nothing of the one before, two digits side by side and an unsure reading are said, the
layout stays put, and a screenshot of the page is saved to outputs/browser/serve.png (the
README shows a copy, docs/serve.png)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mlp.serve import app
from tests import web
from tests.helpers import ROOT, subprocess_env
from tests.test_serve import an_unsure_reading
from tests.web import running_app

pytestmark = pytest.mark.slow  # Chromium, the web app, the champion

SCREENSHOT = ROOT / "outputs" / "browser" / "serve.png"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with web.browser() as chromium:
        yield chromium


def probabilities(page) -> list[float]:
    return page.eval_on_selector_all(".bar", "bars => bars.map(b => Number(b.dataset.p))")


def ink_seen(page) -> int:
    """How many of the 28x28 preview's pixels are lit."""
    return page.evaluate(
        """() => { const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
                   let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )


def photo_shown(page) -> bool:
    """Whether the upload's thumbnail is on the page, decoded."""
    return page.evaluate(
        "() => { const p = document.getElementById('photo'); return p.naturalWidth > 0 && p.offsetWidth > 0; }"
    )


LAID_OUT = ["#pad", "#clear", "#seen", "#photo-box", "#digit", "#runner-up", "#notice", "#bars"]


def layout(page) -> dict[str, dict]:
    """Where the page's parts are: what a message appearing must not move."""
    return {selector: page.locator(selector).bounding_box() for selector in LAID_OUT}


def brush_width(page, y: int) -> int:
    """How many pixels of canvas row ``y`` are ink."""
    return page.evaluate(
        f"""() => {{ const d = document.getElementById('pad').getContext('2d').getImageData(0, {y}, 280, 1).data;
                    let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }}"""
    )


def ready(browser, url: str):
    page = browser.new_page(viewport={"width": 980, "height": 560})
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model: mnist-mlp version')")
    return page


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
    page = ready(browser, web_app)

    # A vertical stroke is a 1, and the page says so before the button is released.
    stroke(page, [(140, 40), (140, 150), (142, 245)], release=False)
    page.wait_for_function("document.getElementById('digit').textContent !== ''")
    page.mouse.up()
    page.wait_for_timeout(300)  # the last stroke's answer
    assert page.text_content("#digit") == "1"
    probs = probabilities(page)
    assert len(probs) == 10 and sum(probs) == pytest.approx(1, abs=1e-4) and max(probs) == probs[1]
    assert ink_seen(page) > 20  # the 28x28 image the model read is shown
    assert page.text_content("#notice") == ""  # one piece of ink
    runner_up = page.text_content("#runner-up")  # named always; marked when the model is unsure
    second = sorted(range(10), key=lambda d: probs[d])[-2]
    assert f"runner-up {second} ({100 * probs[second]:.1f}%)" in runner_up
    unsure = max(probs) < app.UNSURE_BELOW
    assert runner_up.startswith("unsure") is unsure
    assert ("unsure" in page.get_attribute("#runner-up", "class")) is unsure

    answered = re.fullmatch(r"answered by (mnist-mlp version \d+) \(models:/mnist-mlp@champion\) in (\d+\.\d\d) ms",
                            page.text_content("#answered"))  # fmt: skip
    health = requests.get(f"{web_app}/health", timeout=30).json()
    assert answered and answered[1] == health["version"] and float(answered[2]) > 0  # which model, how long

    page.click("#clear")
    assert page.text_content("#digit") == "" and probabilities(page) == [0] * 10 and ink_seen(page) == 0
    assert page.text_content("#runner-up") == "" and page.text_content("#answered") == ""

    # An uploaded photo of a test digit: its label.
    for path, label in digit_photos[5:8]:
        page.click("#clear")
        page.set_input_files("#upload", str(path))
        page.wait_for_function("document.getElementById('digit').textContent !== ''")
        assert (page.text_content("#digit"), page.text_content("#status")) == (str(label), "")
        assert sum(probabilities(page)) == pytest.approx(1, abs=1e-4)
        assert photo_shown(page)  # the file as uploaded, beside the 28x28
    page.click("#clear")
    assert not photo_shown(page)

    # The pen's width follows the drawing's size: thin for a small digit, thick for a large one.
    stroke(page, [(140, 120), (140, 160)])
    small = brush_width(page, 140)
    page.click("#clear")
    stroke(page, [(140, 40), (140, 240)])
    large = brush_width(page, 140)
    assert 3 <= small <= 7 and 18 <= large <= 26, (small, large)

    # A 7 with its bar chart, for the README.
    page.click("#clear")
    stroke(page, [(80, 70), (205, 70), (120, 240)])
    page.wait_for_timeout(500)
    assert page.text_content("#digit") == "7"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    page.close()


def test_a_failed_upload_leaves_nothing_of_the_reading_before(browser, web_app: str, digit_photos: list,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """Before, the red error stood beside the old digit, its bars and its 28x28 image."""
    page = ready(browser, web_app)
    path, label = digit_photos[4]
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.getElementById('digit').textContent !== ''")
    assert page.text_content("#digit") == str(label) and ink_seen(page) > 20 and max(probabilities(page)) > 0
    before = layout(page)

    junk = tmp_path / f"{'a-very-long-name-' * 12}.png"  # shown while it is read: a long line
    junk.write_bytes(b"these are not the bytes of a picture")
    page.set_input_files("#upload", str(junk))
    page.wait_for_function("document.getElementById('status').className === 'error'")
    assert page.text_content("#status").startswith("not an image")
    assert page.text_content("#digit") == page.text_content("#confidence") == page.text_content("#runner-up") == ""
    assert probabilities(page) == [0] * 10 and ink_seen(page) == 0
    no_bars = "[...document.querySelectorAll('.bar .fill')].every(f => f.offsetHeight === 0)"
    page.wait_for_function(no_bars, timeout=2000)  # once the bars' short transition is over
    assert not photo_shown(page)  # a file the browser cannot show either
    assert layout(page) == before

    # A message of any length keeps to its place.
    page.evaluate("say('a long message that goes on and on '.repeat(20), true)")
    assert layout(page) == before
    page.close()


def test_two_digits_side_by_side_are_said(browser, web_app: str) -> None:
    """Before, "12" written side by side was read as a 4 at 90%, with no word of the two pieces."""
    page = ready(browser, web_app)
    before = layout(page)
    stroke(page, [(50, 60), (50, 220)])  # a 1
    stroke(page, [(120, 90), (150, 60), (195, 65), (205, 110), (125, 215), (230, 215)])  # a 2 beside it
    page.wait_for_function("document.getElementById('notice').textContent !== ''")
    page.wait_for_timeout(300)  # the last stroke's answer
    assert page.text_content("#notice").startswith("2 separate marks: write one digit")
    assert page.text_content("#digit") != "" and ink_seen(page) > 20
    assert layout(page) == before
    page.click("#clear")
    assert page.text_content("#notice") == ""
    page.close()


def test_an_unsure_reading_names_the_runner_up(browser, web_app: str, tmp_path: Path) -> None:
    picture, answer = an_unsure_reading(web_app)  # the served model's own answer
    path = tmp_path / "blend.png"
    path.write_bytes(picture)
    page = ready(browser, web_app)
    before = layout(page)
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.getElementById('digit').textContent !== ''")
    second = answer["runner_up"]
    assert page.text_content("#digit") == str(answer["digit"])
    assert page.text_content("#confidence") == f"{100 * answer['probabilities'][answer['digit']]:.1f}% sure"
    assert page.text_content("#runner-up") == (
        f"unsure (under {app.UNSURE_BELOW:.0%}): runner-up {second['digit']} ({100 * second['probability']:.1f}%)"
    )
    assert "unsure" in page.get_attribute("#runner-up", "class") and photo_shown(page)
    assert layout(page) == before
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
