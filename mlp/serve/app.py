"""The web app of ``python -m mlp.serve`` (its command line, API and behaviour: mlp/serve/__main__.py):
the drawing page, /predict and /health around the model a URI names, kept in step with the registry."""

from __future__ import annotations

import logging
import math
import socket
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


def serve(sock: socket.socket, model: str, url: str) -> None:
    """Serve ``model`` (a model URI or an alias) on the bound socket ``sock`` until stopped; a model URI
    of the wrong form or an unusable MLFLOW_TRACKING_URI is a UserError before anything is served."""
    torch.set_num_threads(1)  # one small image at a time: more threads only add hand-over time
    app = create_app(model_uri(model))
    print(f"digit recognizer: {url}  (Ctrl-C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
