"""The web app's JSON API, over real HTTP: predictions with their runner-up, doubt and pieces of
ink, health, and every bad request a 4xx JSON error that leaves the server running."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from PIL import Image

from mlp.run import data
from mlp.run.experiment import run
from mlp.serve import app, images
from mlp.serve.__main__ import main as serve_main
from mlp.serve.recognizer import model_uri
from tests.helpers import ROOT, subprocess_env
from tests.test_images import drawn_seven, encoded
from tests.web import running_app

pytestmark = pytest.mark.slow  # the web app in a subprocess, the champion


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


def mnist_tests() -> tuple[np.ndarray, np.ndarray]:
    _, _, test_x, test_y = data.read_mnist(ROOT / "data")
    return test_x.numpy(), test_y.numpy()


def as_png(digit: np.ndarray, scale: int = 8) -> bytes:
    """An MNIST-style image (light on dark) as a larger PNG of dark ink on white paper."""
    img = Image.fromarray(255 - digit.astype(np.uint8))
    out = io.BytesIO()
    img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC).save(out, "PNG")
    return out.getvalue()


def side_by_side(a: np.ndarray, b: np.ndarray) -> bytes:
    """Two MNIST digits written side by side ("12"), as one picture."""
    return as_png(np.concatenate([a, b], axis=1))


def an_unsure_reading(url: str) -> tuple[bytes, dict]:
    """A picture the served model is unsure of (top probability under app.UNSURE_BELOW), and its answer:
    the first half-and-half blend of two MNIST test digits of different labels that the model finds
    ambiguous, looked for through the API so that it holds for the model served."""
    test_x, test_y = mnist_tests()
    for i in range(0, 400, 2):
        if test_y[i] == test_y[i + 1]:
            continue
        picture = as_png((test_x[i].astype(np.float32) + test_x[i + 1]) / 2)
        answer = requests.post(f"{url}/predict", data=picture, timeout=30).json()
        if answer["unsure"] and answer["pieces"] == 1:
            return picture, answer
    pytest.fail("no blend of two test digits left the model unsure")


def check_runner_up(body: dict) -> None:
    """The runner-up is the second most probable digit, and "unsure" follows the stated threshold."""
    probs, second = body["probabilities"], body["runner_up"]
    assert second["digit"] != body["digit"] and 0 <= second["digit"] <= 9
    assert second["probability"] == sorted(probs)[-2] == probs[second["digit"]] <= probs[body["digit"]]
    assert body["unsure"] is (probs[body["digit"]] < app.UNSURE_BELOW)


def test_the_answer_names_the_runner_up_doubt_and_pieces_of_ink(web_app: str, digit_photos: list) -> None:
    post = f"{web_app}/predict"
    for path, label in digit_photos:  # one digit each: one piece
        body = requests.post(post, data=path.read_bytes(), timeout=30).json()
        assert (body["digit"], body["pieces"]) == (label, 1), (path.name, body["pieces"])
        check_runner_up(body)

    test_x, test_y = mnist_tests()
    for i in range(0, 10, 2):  # "12" written side by side: two pieces
        body = requests.post(post, data=side_by_side(test_x[i], test_x[i + 1]), timeout=30).json()
        assert body["pieces"] == 2, (test_y[i], test_y[i + 1], body["pieces"])
        check_runner_up(body)

    picture, answer = an_unsure_reading(web_app)
    body = requests.post(post, files={"file": ("blend.png", picture)}, timeout=30).json()
    for each in (body, answer):
        assert each["model"].pop("ms") > 0  # the model's time for the image varies; the rest may not
    assert body == answer and body["unsure"] and body["probabilities"][body["digit"]] < app.UNSURE_BELOW
    check_runner_up(body)


def test_the_answer_says_which_model_answered_and_its_time(web_app: str, digit_photos: list) -> None:
    body = requests.post(f"{web_app}/predict", data=digit_photos[0][0].read_bytes(), timeout=30).json()
    health = requests.get(f"{web_app}/health", timeout=30).json()
    assert body["model"]["uri"] == health["model"] and body["model"]["version"] == health["version"]
    assert 0 < body["model"]["ms"] < 1000


def test_an_alias_alone_names_the_projects_registered_model() -> None:
    assert model_uri("compact") == "models:/mnist-mlp@compact"
    assert model_uri("champion") == "models:/mnist-mlp@champion"
    for uri in ("models:/other/3", "runs:/abc/model", "/tmp/model"):
        assert model_uri(uri) == uri


def test_the_page_and_docs_state_the_servers_threshold() -> None:
    page = (ROOT / "mlp" / "serve" / "page.html").read_text()
    docs = (ROOT / "docs" / "recognizer.md").read_text()
    assert f"const UNSURE_BELOW = {app.UNSURE_BELOW:.2f};" in page
    assert f"A reading under {app.UNSURE_BELOW:.0%} is marked unsure" in page
    assert f"`unsure` is true when the top probability is under {app.UNSURE_BELOW:.0%}" in docs


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


def test_without_a_model_it_says_how_to_make_one_and_a_client_gone_mid_upload_leaves_no_traceback(
    tmp_path: Path, digit_photos: list
) -> None:
    """One server on a store with nothing registered in it yet: /health and /predict say how to make a
    model (the page itself says it: the browser test looks); a client that goes away in the middle of its
    upload leaves the server serving, with no traceback in its log."""
    store = tmp_path / "mlruns"
    store.mkdir()
    (store / "mlflow.db").touch()  # a store, but nothing registered in it yet
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
    log = tmp_path / "server.log"
    with running_app(env, log=log) as url:
        health = requests.get(f"{url}/health", timeout=30)
        assert health.status_code == 503 and "python train.py model=best" in health.json()["error"]
        response = requests.post(f"{url}/predict", data=digit_photos[0][0].read_bytes(), timeout=30)
        assert response.status_code == 503 and "python train.py model=best" in response.json()["error"]
        assert requests.get(url, timeout=30).status_code == 200

        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:  # no model needed: the body is read first
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 5000000\r\n\r\n" + b"\x89PNG" * 25_000)  # fmt: skip
        time.sleep(1)  # the server sees the connection close
        assert requests.get(f"{url}/health", timeout=30).status_code == 503  # still serving (no model here)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _until(get: Callable[[], requests.Response], done: Callable[[requests.Response], bool]) -> requests.Response:
    """Ask again until ``done`` (the server re-reads the registry about once a second); the last answer."""
    deadline = time.monotonic() + 20
    while not done(response := get()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return response


def test_a_running_server_follows_its_model_being_replaced_or_deleted(tiny_cfg, tmp_path: Path) -> None:
    """Before, /health still said "ok, version 1" after the model was deleted."""
    result = run(tiny_cfg("trainer.epochs=1"))
    mlflow.set_tracking_uri(result.tracking_uri)
    model_uri = mlflow.search_logged_models(experiment_ids=[result.experiment_id], output_format="list")[0].model_uri
    client = MlflowClient(result.tracking_uri)
    for _ in range(2):
        mlflow.register_model(model_uri, "mnist-mlp")
    client.set_registered_model_alias("mnist-mlp", "champion", "1")
    with running_app(subprocess_env(MLFLOW_TRACKING_URI=result.tracking_uri)) as url:

        def health() -> requests.Response:
            return requests.get(f"{url}/health", timeout=30)

        assert health().json()["version"] == "mnist-mlp version 1"
        client.set_registered_model_alias("mnist-mlp", "champion", "2")
        assert _until(health, lambda r: r.json().get("version") != "mnist-mlp version 1").json() == {
            "status": "ok", "model": "models:/mnist-mlp@champion", "version": "mnist-mlp version 2"
        }  # fmt: skip
        client.delete_model_version("mnist-mlp", "2")  # the alias goes with it
        gone = _until(health, lambda r: r.status_code != 200)
        assert gone.status_code == 503 and gone.json()["error"].startswith(
            f"no model at models:/mnist-mlp@champion in {result.tracking_uri}: train and register one with:"
        )
        predicted = requests.post(f"{url}/predict", data=encoded(drawn_seven(), "PNG"), timeout=30)
        assert predicted.status_code == 503 and predicted.json() == {"error": gone.json()["error"]}
        client.set_registered_model_alias("mnist-mlp", "champion", "1")  # back: served again, no restart
        assert _until(health, lambda r: r.status_code == 200).json()["version"] == "mnist-mlp version 1"
        client.delete_registered_model("mnist-mlp")
        assert _until(health, lambda r: r.status_code != 200).status_code == 503


def test_health_answers_at_once_while_a_large_image_is_read(web_app: str) -> None:
    """Decoding a large picture (here 40 megapixels, 14 MB) runs beside the event loop, not in it."""
    side = 6300
    levels = np.asarray(drawn_seven(side), np.int16) + np.random.default_rng(0).integers(-1, 2, (side, side))
    big = encoded(Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8)), "PNG", compress_level=1)  # 14 MB in 1 s
    answer: dict = {}

    def post() -> None:
        start = time.perf_counter()
        answer["response"] = requests.post(f"{web_app}/predict", data=big, timeout=120)
        answer["seconds"] = time.perf_counter() - start

    latencies = []
    with requests.Session() as session:
        session.get(f"{web_app}/health", timeout=30)
        poster = threading.Thread(target=post)
        poster.start()
        while poster.is_alive():
            start = time.perf_counter()
            assert session.get(f"{web_app}/health", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - start)
        poster.join()
    assert answer["response"].status_code == 200, answer["response"].text
    assert len(latencies) >= 3 and max(latencies) < answer["seconds"] / 3, (latencies, answer["seconds"])


PORTS = "is not accepted: expected a port number from 1 to 65535"


def test_a_bad_port_or_host_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """In process: the command's main, what it prints and returns (the real process: below)."""
    with pytest.raises(SystemExit) as info:
        serve_main(["--port", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m mlp.serve: error: argument --port: '0' {PORTS}"
    assert serve_main(["--host", "no-such-host.invalid"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: cannot listen on no-such-host.invalid:8000: ") and line.endswith(
        "(check --host and --port)"
    )


def serve_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlp.serve", *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_bad_port_is_a_usage_error_at_once() -> None:
    done = serve_py("--port", "99999")
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"python -m mlp.serve: error: argument --port: '99999' {PORTS}"


def test_a_port_in_use_is_one_line_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_py("--port", str(port))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: port {port} on 127.0.0.1 is in use (another server?): choose another with --port\n"
