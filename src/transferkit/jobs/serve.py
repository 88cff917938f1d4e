"""``transferkit serve``: an HTTP prediction service for a model folder or an exported
``.onnx`` file (see :mod:`transferkit.serve`). Runs until stopped (Ctrl-C)."""

from __future__ import annotations

import os
import sys
import time

from transferkit.errors import TransferkitError

NAME = "serve"
HELP = "serve a model over HTTP (POST /predict, GET /model, /health, /docs)"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# transferkit.serve.app's defaults, spelt out because that module imports FastAPI.
DEFAULT_MAX_IMAGE_MB = 10.0
DEFAULT_MAX_IMAGES = 32
DEFAULT_TOP_K = 5
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 0.0
INSTALL_HINT = ("`transferkit serve` needs FastAPI, uvicorn and python-multipart: "
                "pip install 'transferkit[serve]'.")


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder written by `transferkit fit`, or an .onnx "
                        "file from `transferkit export` (no PyTorch needed)")
    parser.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST}: this "
                        "machine only; 0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--max-image-mb", type=float, help="largest image a client may send, "
                        f"in MB (default {DEFAULT_MAX_IMAGE_MB:g})")
    parser.add_argument("--max-images", type=int, help="most images in one request "
                        f"(default {DEFAULT_MAX_IMAGES})")
    parser.add_argument("--top-k", type=int, help="classes returned per image unless the "
                        f"request asks (?top_k=) otherwise (default {DEFAULT_TOP_K})")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="predict each request on its own instead of batching the images "
                        "of concurrent requests together")
    parser.add_argument("--max-batch", type=int, help="most images in one batch "
                        f"(default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--batch-wait-ms", type=float, help="how long a batch waits for more "
                        f"requests once none is queued (default {DEFAULT_BATCH_WAIT_MS:g})")


def listening_socket(host: str, port: int):
    """A socket bound to ``host:port``, so a taken port is one error line, not uvicorn's exit."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise TransferkitError(f"cannot listen on {host}:{port} ({exc}).") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TransferkitError(f"cannot listen on {host}:{port} "
                               f"({exc.strerror or exc}).") from exc
    return sock


def build_server(model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 max_image_mb: float = DEFAULT_MAX_IMAGE_MB, max_images: int = DEFAULT_MAX_IMAGES,
                 top_k: int = DEFAULT_TOP_K, batching: bool = True,
                 max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 progress: bool = False):
    """(uvicorn server, its bound socket): ``server.run(sockets=[sock])`` serves. The model
    is loaded and the port taken before it returns, so both fail early."""
    try:
        import uvicorn

        from transferkit.serve import create_app
    except ImportError as exc:
        raise TransferkitError(INSTALL_HINT) from exc
    if not max_image_mb > 0:
        raise TransferkitError(f"--max-image-mb must be more than 0, not {max_image_mb}.")
    app = create_app(model, max_bytes=int(max_image_mb * 2**20), max_images=max_images,
                     top_k=top_k, batching=batching, max_batch=max_batch,
                     batch_wait_ms=batch_wait_ms)
    sock = listening_socket(host, port)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1],
                            log_level="info" if progress else "warning")
    return uvicorn.Server(config), sock


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run(model: str | os.PathLike, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
        max_image_mb: float = DEFAULT_MAX_IMAGE_MB, max_images: int = DEFAULT_MAX_IMAGES,
        top_k: int = DEFAULT_TOP_K, batching: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS, progress: bool = False) -> dict:
    """Serve ``model`` on ``host:port`` until stopped; the summary says where and how much."""
    start = time.perf_counter()
    server, sock = build_server(model, host, port, max_image_mb, max_images, top_k, batching,
                                max_batch, batch_wait_ms, progress)
    url = url_of(sock)
    if progress:
        print(f"serving {model} at {url} (API docs at {url}/docs); Ctrl-C stops.",
              file=sys.stderr, flush=True)
    with sock:
        server.run(sockets=[sock])
    batcher = server.config.app.state.batcher
    return {"model": str(model), "url": url, "images_predicted": batcher.items_run,
            "batches": batcher.batches_run, "seconds": time.perf_counter() - start}


def render(summary: dict) -> str:
    return (f"served {summary['model']} at {summary['url']}: {summary['images_predicted']} "
            f"image(s) in {summary['batches']} batch(es).")
