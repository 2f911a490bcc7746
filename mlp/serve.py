"""A local web app around the champion model: a page to draw or upload a digit, and a JSON API.

    make serve                                        # = python -m mlp.serve: http://127.0.0.1:8000
    python -m mlp.serve --model models:/mnist-mlp/3 --port 8001

    curl -F file=@digit.png http://127.0.0.1:8000/predict   # {"digit": 7, "probabilities": [...10...], "image": 28x28}
    curl --data-binary @digit.png http://127.0.0.1:8000/predict    # the raw image as the body works too
    curl http://127.0.0.1:8000/health

The model is loaded once, at start (or, if there is none yet, at the first request after
`python train.py model=best` made one). Errors are JSON ``{"error": "..."}`` with a 4xx
status: 400 for a file that is no picture of a digit, 413 over the body limit, 405 for a wrong
method, 404 for an unknown path; 503 while there is no model.
"""

from __future__ import annotations

import argparse
import threading
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from mlp import images, registry
from mlp.errors import UserError

MAX_BODY = images.MAX_BYTES + 64 * 1024  # one image file and its multipart wrapping


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Champion:
    """The model, loaded once; while there is none, each request tries again (one at a time)."""

    def __init__(self, uri: str, tracking_uri: str | None):
        self.uri, self.tracking_uri = uri, tracking_uri
        self.recognizer: registry.Recognizer | None = None
        self.problem = ""
        self.lock = threading.Lock()
        self.get()

    def get(self) -> registry.Recognizer | None:
        if self.recognizer is None:
            with self.lock:
                if self.recognizer is None:
                    try:
                        self.recognizer = registry.Recognizer(self.uri, self.tracking_uri)
                    except UserError as e:
                        self.problem = str(e)
        return self.recognizer


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body too large: {int(declared):,} bytes (limit {limit:,})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body too large: over {limit:,} bytes")
        chunks.append(chunk)
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
    except Exception as e:  # noqa: BLE001 - the multipart parser's errors are all a bad request
        raise RequestError(400, f"malformed multipart form: {e}") from e
    try:
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise RequestError(400, "no file in the form: send the image as a file field named 'file'")
        return await files[0].read()
    finally:
        await form.close()


def create_app(model_uri: str = registry.DEFAULT_URI, tracking_uri: str | None = None) -> FastAPI:
    app = FastAPI(title="MNIST digit recognizer", docs_url=None, redoc_url=None)
    champion = Champion(model_uri, tracking_uri)
    page = resources.files("mlp").joinpath("page.html").read_text()

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

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        data = await image_bytes(request)
        if (recognizer := champion.get()) is None:
            raise RequestError(503, champion.problem)
        try:
            pixels = images.load_digit(data)
        except UserError as e:
            raise RequestError(413 if str(e).startswith("too large") else 400, str(e)) from None
        probs = recognizer.predict(pixels[None])[0]
        return JSONResponse(
            {"digit": int(np.argmax(probs)), "probabilities": [float(p) for p in probs], "image": pixels.tolist()}
        )

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The digit recognizer as a local web app.", epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", default=registry.DEFAULT_URI, help="model URI (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    torch.set_num_threads(1)  # one small image at a time: more threads only add hand-over time
    app = create_app(args.model)
    print(f"digit recognizer: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
