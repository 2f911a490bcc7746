"""The champion as a digit recognizer: accuracy on photo-like digits, and serving speed.

    python benchmarks/recognizer.py                   # models:/mnist-mlp@champion, all 10,000 test digits
    python benchmarks/recognizer.py --limit 1000      # a quicker estimate
    python benchmarks/recognizer.py --model runs:/<run id>/model

1. Robustness: each MNIST test digit made photo-like (``mlp.serve.images.photo_like``: inverted to
   dark on light, scaled to 200-400 px, rotated up to 8 degrees, padded and shifted on a
   larger sheet, noise, JPEG), then read through predict.py's pipeline (``load_digit``):
   accuracy against the clean test set's; also with uneven light (a shadow across the sheet).
2. Serving: the web app (``python -m mlp.serve``) started on a free local port; one client
   posts single photo-like images one after another: requests/s, p50 and p99 latency of
   ``POST /predict``; and images/s of a 10,000-image batch through the model alone.

Tracking store: $MLFLOW_TRACKING_URI, else this project's mlruns/mlflow.db.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlp.run import data  # noqa: E402
from mlp.run.device import cpu_model  # noqa: E402
from mlp.serve import images  # noqa: E402
from mlp.serve.recognizer import DEFAULT_TRACKING, DEFAULT_URI, NoModel, Recognizer  # noqa: E402


def photo_accuracy(recognizer: Recognizer, x: np.ndarray, y: np.ndarray, uneven: bool) -> tuple[float, float]:
    """(accuracy, seconds per image of preprocessing) over photo-like versions of x."""
    rng = np.random.default_rng(0)
    photos = [images.photo_like(d, rng, uneven_light=uneven) for d in x]
    start = time.perf_counter()
    seen = np.stack([images.load_digit(p) for p in photos])
    per_image = (time.perf_counter() - start) / len(x)
    preds = recognizer.predict(seen).argmax(axis=1)
    return float((preds == y).mean()), per_image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(model: str, photos: list[bytes], warmup: int = 20) -> dict[str, float]:
    """Start the web app, post each photo once (after a warm-up), stop it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlp.serve", "--model", model, "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        session = requests.Session()
        deadline = time.time() + 120
        while True:
            try:
                if session.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"error: the web app did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        for p in photos[:warmup]:
            session.post(f"{url}/predict", files={"file": ("d.jpg", p)}).raise_for_status()
        latencies = []
        start = time.perf_counter()
        for p in photos:
            t = time.perf_counter()
            session.post(f"{url}/predict", files={"file": ("d.jpg", p)}).raise_for_status()
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    return {"rps": len(photos) / total, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_URI, help="model URI (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=10_000, help="test digits to use (default: all 10,000)")
    parser.add_argument("--requests", type=int, default=1000, help="POST /predict requests to time (default: 1000)")
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_TRACKING_URI", DEFAULT_TRACKING)  # the web app's subprocess too
    try:
        recognizer = Recognizer(args.model)
    except NoModel as e:
        sys.exit(f"error: {e}")
    _, _, test_x, test_y = data.read_mnist(ROOT / "data")
    x, y = test_x.numpy()[: args.limit], test_y.numpy()[: args.limit]

    print(f"model {recognizer.version} ({args.model}); {len(x):,} MNIST test digits; CPU: {cpu_model()}, "
          f"{os.cpu_count()} cores")  # fmt: skip
    clean = float((recognizer.predict(x).argmax(axis=1) == y).mean())
    photo, per_image = photo_accuracy(recognizer, x, y, uneven=False)
    shadow, _ = photo_accuracy(recognizer, x, y, uneven=True)
    print(f"  clean test digits (28x28 as MNIST gives them)        accuracy {clean:8.2%}")
    print(f"  photo-like (inverted, 200-400 px, rotated, JPEG)     accuracy {photo:8.2%}   drop {clean - photo:+.2%}")
    print(f"  photo-like with uneven light                         accuracy {shadow:8.2%}   drop {clean - shadow:+.2%}")
    print(f"  preprocessing (decode, find ink, 28x28), per image   {1000 * per_image:8.2f} ms")

    rng = np.random.default_rng(1)
    photos = [images.photo_like(x[i % len(x)], rng) for i in range(args.requests)]
    served = serving(args.model, photos)
    batch = np.concatenate([x] * max(1, 10_000 // len(x)))[:10_000]
    recognizer.predict(batch[:100])
    start = time.perf_counter()
    recognizer.predict(batch)
    batch_rate = len(batch) / (time.perf_counter() - start)
    print(f"  POST /predict, one photo-like JPEG per request, {len(photos)} requests in sequence:")
    print(f"    requests/s {served['rps']:8.1f}    p50 {served['p50']:6.2f} ms    p99 {served['p99']:6.2f} ms")
    print(f"  a batch of {len(batch):,} images through the model alone: {batch_rate:,.0f} images/s")


if __name__ == "__main__":
    main()
