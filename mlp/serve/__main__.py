"""``python -m mlp.serve``: a local web app around the champion model: a page to draw or upload a
digit, and a JSON API (the app: mlp/serve/app.py).

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
import socket
import sys

from mlp.errors import UserError


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
        "--model", default="champion", help="model URI, or an alias: champion, compact (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=port_number, default=8000, help="port, 1-65535 (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        with listen(args.host, args.port) as sock:
            # torch, MLflow and uvicorn (seconds) once the arguments and the port are good: those errors come at once.
            from mlp.serve import app

            app.serve(sock, args.model, f"http://{args.host}:{args.port}")  # a bad --model or tracking URI: one line
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
