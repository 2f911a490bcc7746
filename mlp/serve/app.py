"""A local web app around the champion model: a page to draw or upload a digit, and a JSON API.

    make serve                                        # = python -m mlp.serve: http://127.0.0.1:8000
    python -m mlp.serve --model models:/mnist-mlp/3 --port 8001
    python -m mlp.serve --model compact               # models:/mnist-mlp@compact: the compact model

    curl -F file=@digit.png http://127.0.0.1:8000/predict   # {"digit": 7, "probabilities": [...10...], "image": 28x28,
        # "runner_up": {"digit": 2, "probability": 0.004}, "unsure": false, "pieces": 1,
        # "model": {"uri": "models:/mnist-mlp@champion", "version": "mnist-mlp version 3", "ms": 0.12}}
    curl --data-binary @digit.png http://127.0.0.1:8000/predict    # the raw image as the body works too
    curl http://127.0.0.1:8000/health

The model is loaded at start; about once a second a request re-reads which version the URI
names, so the server loads the new champion when the alias moves, answers 503 once the model is
deleted, and picks one up once `python train.py model=best` made it. Errors are JSON
``{"error": "..."}`` with a 4xx status: 400 for a file that is no picture of a digit, 413 over
the body limit, 405 for a wrong method, 404 for an unknown path; 503 while there is no model.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import socket
import sys
import threading
import time
from importlib import resources
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from mlp.errors import UserError, first_line
from mlp.serve import images
from mlp.serve.recognizer import DEFAULT_URI, NoModel, Recognizer, model_uri, resolve, use_tracking

log = logging.getLogger(__name__)

MAX_BODY = images.MAX_BYTES + 64 * 1024  # one image file and its multipart wrapping
# A reading whose top probability is under this is "unsure" (the page and docs/recognizer.md say 95%, and why).
# With the top at 95% or more the runner-up has at most 5%: a rule on the gap between them would add nothing.
UNSURE_BELOW = 0.95


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Champion:
    """The model behind a URI, kept in step with the registry: at most once per ``recheck`` seconds a
    request re-resolves the URI (one cheap query) and the model is reloaded when the alias points at
    another version, dropped (503) when it is gone, loaded once there is one again."""

    def __init__(self, uri: str, tracking_uri: str | None, recheck: float = 1.0):
        self.uri, self.tracking_uri, self.recheck = uri, use_tracking(tracking_uri), recheck
        self.recognizer: Recognizer | None = None
        self.problem = ""
        self.checked = -math.inf  # time.monotonic() of the last look at the registry
        self.lock = threading.Lock()
        self.get()

    def get(self) -> Recognizer | None:
        if time.monotonic() - self.checked < self.recheck:
            return self.recognizer
        # While another request reloads, the others go on with the model they have (none: they wait).
        if not self.lock.acquire(blocking=self.recognizer is None):
            return self.recognizer
        try:
            if time.monotonic() - self.checked >= self.recheck:
                self.refresh()
                self.checked = time.monotonic()
        finally:
            self.lock.release()
        return self.recognizer

    def refresh(self) -> None:
        """Look at the registry now: load, reload or drop the model as the URI says."""
        try:
            if self.recognizer is not None and resolve(self.uri, self.tracking_uri) == self.recognizer.version:
                return
            self.recognizer = Recognizer(self.uri, self.tracking_uri)
        except NoModel as e:  # gone, or not there yet
            self.recognizer, self.problem = None, str(e)
        except Exception as e:  # noqa: BLE001 - a busy or damaged store: keep serving the model loaded, if any
            log.warning("cannot check the registry for %s: %s", self.uri, first_line(e))
            self.problem = self.problem or f"cannot check the registry for {self.uri}: {first_line(e)}"


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body too large: {int(declared):,} bytes (limit {limit:,})")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body too large: over {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not a bug worth a traceback in the log
        raise RequestError(400, f"the client went away after {size:,} bytes of the body") from None
    return b"".join(chunks)


async def image_bytes(request: Request) -> bytes:
    """The image of a POST: a multipart form's file (any field name; ``file`` by convention), or the raw body."""
    body = await read_body(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as e:  # the multipart parser's errors are all a bad request
        raise RequestError(400, f"malformed multipart form: {e}") from e
    try:
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise RequestError(400, "no file in the form: send the image as a file field named 'file'")
        return await files[0].read()
    finally:
        await form.close()


def create_app(model_uri: str = DEFAULT_URI, tracking_uri: str | None = None) -> FastAPI:
    app = FastAPI(title="MNIST digit recognizer", docs_url=None, redoc_url=None)
    champion = Champion(model_uri, tracking_uri)
    page = resources.files("mlp.serve").joinpath("page.html").read_text()

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no such page: {request.url.path}", 405: f"method {request.method} not allowed here"}
        error = message.get(e.status_code, str(e.detail))
        return JSONResponse({"error": error}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:  # a bug: still JSON, and the server goes on
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> JSONResponse:
        if (recognizer := champion.get()) is None:
            return JSONResponse({"status": "no model", "error": champion.problem}, status_code=503)
        return JSONResponse({"status": "ok", "model": recognizer.uri, "version": recognizer.version})

    def recognize(data: bytes) -> dict[str, Any]:
        if (recognizer := champion.get()) is None:
            raise RequestError(503, champion.problem)
        try:
            pixels = images.load_digit(data)
        except UserError as e:
            raise RequestError(413 if str(e).startswith("too large") else 400, str(e)) from None
        start = time.perf_counter()
        probs = recognizer.predict(pixels[None])[0]
        ms = 1000 * (time.perf_counter() - start)  # the model's own time for this image, as the page says
        first = int(np.argmax(probs))
        second = int(np.argmax(np.where(np.arange(10) == first, -np.inf, probs)))
        return {
            "digit": first,
            "probabilities": [float(p) for p in probs],
            "image": pixels.tolist(),
            "runner_up": {"digit": second, "probability": float(probs[second])},
            "unsure": bool(probs[first] < UNSURE_BELOW),
            "pieces": images.pieces(pixels),
            "model": {"uri": recognizer.uri, "version": recognizer.version, "ms": round(ms, 3)},
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        data = await image_bytes(request)
        # Decoding a large picture takes a while: in a worker thread, so /health and other requests go on.
        return JSONResponse(await run_in_threadpool(recognize, data))

    return app


def port_number(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted: expected a port number from 1 to 65535")
    return int(text)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, made before the model loads so that a port in use or an
    unknown host is said at once, in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a just-closed port is free
        sock.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another server?): choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e} (check --host and --port)") from None
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlp.serve", description="The digit recognizer as a local web app.",
                                     epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--model", default=DEFAULT_URI, help="model URI, or an alias: champion, compact (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=port_number, default=8000, help="port, 1-65535 (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        uri = model_uri(args.model)
        sock = listen(args.host, args.port)
        torch.set_num_threads(1)  # one small image at a time: more threads only add hand-over time
        app = create_app(uri)  # a bad MLFLOW_TRACKING_URI: one line too
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"digit recognizer: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
