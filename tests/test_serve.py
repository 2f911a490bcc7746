"""The web app's JSON API, over real HTTP: predictions, health, and every bad request a 4xx
JSON error that leaves the server running."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from PIL import Image

from mlp import images
from tests.conftest import subprocess_env
from tests.web import running_app


def test_predict_a_photo_as_a_form_file_or_a_raw_body(web_app: str, digit_photos: list) -> None:
    for path, label in digit_photos[:3]:
        for sent in ({"files": {"file": (path.name, path.read_bytes())}}, {"data": path.read_bytes()}):
            response = requests.post(f"{web_app}/predict", timeout=30, **sent)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["digit"] == label
            assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1, abs=1e-5)
            assert max(body["probabilities"]) == body["probabilities"][label]
            assert len(body["image"]) == 28 and {len(row) for row in body["image"]} == {28}  # what the model read


def test_health_names_the_model(web_app: str) -> None:
    response = requests.get(f"{web_app}/health", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "models:/mnist-mlp@champion", "version": "mnist-mlp version 1"}


def test_bad_requests_get_a_4xx_json_error_and_the_server_goes_on(
    web_app: str, digit_photos: list, tmp_path: Path
) -> None:
    photo = digit_photos[0][0].read_bytes()
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    post = f"{web_app}/predict"
    cases = [
        (requests.post(post, data=b""), 400, "empty file"),
        (requests.post(post, files={"file": ("a.png", b"")}), 400, "empty file"),
        (requests.post(post, files={"file": ("a.txt", b"hello")}), 400, "not an image"),
        (requests.post(post, data=photo[: len(photo) // 2]), 400, "damaged or truncated image"),
        (requests.post(post, files={"file": ("b.png", blank.read_bytes())}), 400, "blank: no ink found"),
        (requests.post(post, files={"name": (None, "x")}), 400, "no file in the form"),
        (requests.post(post, data=b"x" * (images.MAX_BYTES + 70_000)), 413, "request body too large"),
        (requests.post(post, headers={"Content-Type": "multipart/form-data; boundary=zz"}, data=b"--zz\r\nbad"), 400,
         "no file in the form"),
        (requests.get(post), 405, "method GET not allowed here"),
        (requests.put(post, data=b"1"), 405, "method PUT not allowed here"),
        (requests.get(f"{web_app}/nothing"), 404, "no such page: /nothing"),
    ]  # fmt: skip
    for response, status, message in cases:
        assert response.status_code == status, (message, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"].startswith(message), response.json()
    assert requests.get(f"{web_app}/health", timeout=30).status_code == 200  # still serving


def test_without_a_model_health_and_predict_say_how_to_make_one(tmp_path: Path, digit_photos: list) -> None:
    store = tmp_path / "mlruns"
    store.mkdir()
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
    (store / "mlflow.db").touch()  # a store, but nothing registered in it yet
    with running_app(env) as url:
        health = requests.get(f"{url}/health", timeout=30)
        assert health.status_code == 503 and "python train.py model=best" in health.json()["error"]
        response = requests.post(f"{url}/predict", data=digit_photos[0][0].read_bytes(), timeout=30)
        assert response.status_code == 503 and "python train.py model=best" in response.json()["error"]
        assert requests.get(url, timeout=30).status_code == 200  # the page itself says it (the browser test looks)
