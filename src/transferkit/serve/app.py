"""The HTTP service of ``transferkit serve`` (FastAPI): ``POST /predict``, ``GET /model``,
``GET /health`` and the OpenAPI pages at ``/docs``.

What a client sends is untrusted. The body is read as a stream and refused (413) as soon
as an image passes ``max_bytes``, a request passes ``max_images`` or a multipart body
passes what that many images can take, before the rest is read; a ``Content-Length`` over
the limits is refused before a byte is read, and a body that stalls is refused (408). Uploaded
bytes are written only into a :class:`tempfile.TemporaryDirectory` of the request, under
names the server chooses (never the client's file name), and the folder is removed when
the request ends, whatever happened. Images are decoded by
:func:`transferkit.data.images.load_image` (regular files only, decompression bombs and
truncated files refused). Every refusal is a JSON ``{"error": "..."}`` with a 4xx status,
and the server goes on serving.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from transferkit import __version__
from transferkit.errors import ImageDecodeError, TransferkitError
from transferkit.serve.batching import MicroBatcher
from transferkit.serve.predictors import load_served_model

DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_MAX_IMAGES = 32
DEFAULT_TOP_K = 5
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 0.0
# Longest pause allowed while a body arrives (a slow mobile upload still sends something
# every few seconds; a client that sends nothing is holding a slot).
DEFAULT_BODY_IDLE_TIMEOUT_S = 30.0
FIELD = "file"
# What a multipart body may hold beyond its images: boundaries and part headers.
MULTIPART_OVERHEAD_PER_PART = 8 * 1024


class Refused(Exception):
    """A request the server will not serve: ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    label: str  # how messages name it: the client's file name, else its position
    filename: str | None
    path: Path
    size: int = 0


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:g} MB"


def _too_large(label: str, max_bytes: int) -> Refused:
    return Refused(413, f"{label}: larger than the limit of {_megabytes(max_bytes)} per image.")


def _too_many(max_images: int) -> Refused:
    return Refused(413, f"more than {max_images} images in one request; send them in "
                        "several requests.")


def _refusal_of(upload: Upload, exc: ImageDecodeError) -> Refused:
    """The 4xx for an image load_image refused, named as the client named it."""
    reason = str(exc).replace(str(upload.path), upload.label)
    if "decompression bomb" in reason:
        return Refused(413, reason)
    if "not an image file" in reason:
        return Refused(415, reason)
    return Refused(422, reason)  # corrupt or truncated


class _MultipartReceiver:
    """python-multipart callbacks that write each part of the field ``file`` straight into
    ``folder`` (no spooling elsewhere) and stop at the limits."""

    def __init__(self, folder: Path, max_bytes: int, max_images: int):
        self.folder, self.max_bytes, self.max_images = folder, max_bytes, max_images
        self.uploads: list[Upload] = []
        self.finished = False
        self._handle = None
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FIELD:
            raise Refused(400, f"unexpected form field {name!r}; send images in the "
                               f"multipart field {FIELD!r}.")
        if len(self.uploads) == self.max_images:
            raise _too_many(self.max_images)
        filename = options.get(b"filename")
        filename = filename.decode("utf-8", "replace") if filename is not None else None
        number = len(self.uploads) + 1
        upload = Upload(filename or f"image {number}", filename,
                        self.folder / f"image-{number:04d}")
        self._handle = open(upload.path, "xb")
        self.uploads.append(upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self.uploads[-1]
        upload.size += end - start
        if upload.size > self.max_bytes:
            raise _too_large(upload.label, self.max_bytes)
        self._handle.write(data[start:end])

    def on_part_end(self) -> None:
        self.close()
        if self.uploads and self.uploads[-1].size == 0:
            raise Refused(400, f"{self.uploads[-1].label}: empty file.")

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def _body_chunks(request: Request, idle_timeout_s: float):
    """The request body as it arrives. A client that stops sending for ``idle_timeout_s``
    is refused (408) rather than holding a connection, an open file and a temporary folder
    for as long as it likes; one that hangs up ends the request without a traceback."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_timeout_s):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise Refused(408, f"the request body stalled for {idle_timeout_s:g} s; send it "
                               "without pauses.") from None
        except ClientDisconnect:
            raise Refused(400, "the client disconnected before the body ended.") from None
        yield chunk


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise Refused(400, f"Content-Length {value!r} is not a number.") from None


async def _receive_multipart(request: Request, folder: Path, max_bytes: int,
                             max_images: int, idle_timeout_s: float) -> list[Upload]:
    _, options = parse_options_header(request.headers["content-type"])
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart body without a boundary in its Content-Type.")
    most = max_images * (max_bytes + MULTIPART_OVERHEAD_PER_PART)
    too_long = f"exceed what {max_images} images of at most {_megabytes(max_bytes)} each can take."
    length = _declared_length(request)
    if length is not None and length > most:
        raise Refused(413, f"the request's {_megabytes(length)} {too_long}")
    receiver = _MultipartReceiver(folder, max_bytes, max_images)
    parser = MultipartParser(boundary, receiver.callbacks())
    received = 0
    try:
        async for chunk in _body_chunks(request, idle_timeout_s):
            # Counted here too: without a Content-Length (chunked), bytes before the first
            # boundary or after the last one reach no part, and no part limit stops them.
            received += len(chunk)
            if received > most:
                raise Refused(413, f"the request body's more than {_megabytes(most)} {too_long}")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise Refused(400, f"malformed multipart body ({exc}).") from None
    finally:
        receiver.close()
    if not receiver.finished:
        raise Refused(400, "the multipart body ended before its closing boundary.")
    if not receiver.uploads:
        raise Refused(400, f"no images: send them in the multipart field {FIELD!r}.")
    return receiver.uploads


async def _receive_body(request: Request, folder: Path, max_bytes: int,
                        idle_timeout_s: float) -> Upload:
    upload = Upload("request body", None, folder / "image-0001")
    length = _declared_length(request)
    if length is not None and length > max_bytes:
        raise _too_large(upload.label, max_bytes)
    with open(upload.path, "xb") as handle:
        async for chunk in _body_chunks(request, idle_timeout_s):
            upload.size += len(chunk)
            if upload.size > max_bytes:
                raise _too_large(upload.label, max_bytes)
            handle.write(chunk)
    if upload.size == 0:
        raise Refused(400, f"empty request body; send an image as the body or in the "
                           f"multipart field {FIELD!r}.")
    return upload


async def receive_uploads(request: Request, folder: Path, max_bytes: int, max_images: int,
                          idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S) -> list[Upload]:
    """The request's images, written into ``folder``: the parts of the multipart field
    ``file``, or the whole body as one image."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        return await _receive_multipart(request, folder, max_bytes, max_images, idle_timeout_s)
    return [await _receive_body(request, folder, max_bytes, idle_timeout_s)]


def top_classes(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict]:
    """The ``k`` most probable classes, most probable first (ties in class order)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": classes[i], "probability": float(probabilities[i])} for i in order]


# -- what the OpenAPI page shows ---------------------------------------------------------

class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class ImagePrediction(BaseModel):
    filename: str | None = Field(description="the client's file name (null for a raw body)")
    top_k: list[ClassProbability]


class Predictions(BaseModel):
    predictions: list[ImagePrediction]


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description="'onnx' (an exported file) or 'bundle' (a model folder)")
    method: str
    classes: list[str]
    input_size: list[int] | None = Field(description="[height, width] the network reads")
    metrics: dict = Field(description="metrics from training (metrics.json, or the export's)")
    limits: dict
    transferkit_version: str


class Error(BaseModel):
    error: str


_IMAGE_BODY = {"type": "string", "format": "binary"}
_REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FIELD], "properties": {
        FIELD: {"type": "array", "items": _IMAGE_BODY,
                "description": "one or several images (repeat the field)"}}}},
    "image/*": {"schema": _IMAGE_BODY},
    "application/octet-stream": {"schema": _IMAGE_BODY},
}}
_ERRORS = {status: {"model": Error, "description": text} for status, text in (
    (400, "empty body, empty file, malformed multipart, unexpected field"),
    (408, "the body stalled longer than the idle timeout"),
    (413, "an image over the size limit, too many images, a decompression bomb"),
    (415, "not an image"), (422, "a corrupt or truncated image, a bad query parameter"))}


def create_app(model_path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
               max_images: int = DEFAULT_MAX_IMAGES, top_k: int = DEFAULT_TOP_K,
               batching: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
               batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
               decode_threads: int | None = None,
               body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S) -> FastAPI:
    """The service of the model at ``model_path`` (a model folder or an exported ``.onnx``
    file), loaded now: a damaged model is a :class:`~transferkit.errors.TransferkitError`
    before any client connects.

    ``max_bytes`` per image and ``max_images`` per request bound what a client may send;
    ``top_k`` is the default number of classes per image. ``batching`` merges the images
    of concurrent requests into batches of up to ``max_batch``, waiting at most
    ``batch_wait_ms`` for more. ``decode_threads`` bounds how many images are decoded at
    once (decoded pictures can be large; default: the CPUs). A request whose body pauses
    longer than ``body_idle_timeout_s`` is refused (408).
    """
    for name, value in (("max image size", max_bytes), ("max images", max_images),
                        ("top k", top_k), ("max batch", max_batch)):
        if int(value) < 1:
            raise TransferkitError(f"{name} must be at least 1, not {value}.")
    if not body_idle_timeout_s > 0:
        raise TransferkitError(f"body idle timeout must be more than 0 s, not "
                               f"{body_idle_timeout_s}.")
    if batch_wait_ms < 0:
        raise TransferkitError(f"batch wait must be 0 ms or more, not {batch_wait_ms}.")
    max_bytes, max_images, top_k = int(max_bytes), int(max_images), int(top_k)
    model = load_served_model(model_path)
    batcher = MicroBatcher(model.predict_prepared, max_batch, batch_wait_ms / 1000.0, batching)
    if decode_threads is None:
        try:
            decode_threads = len(os.sched_getaffinity(0))
        except AttributeError:
            decode_threads = os.cpu_count() or 1
    decoding = anyio.CapacityLimiter(max(1, int(decode_threads)))
    info = {"name": model.name, "kind": model.kind, "method": model.method,
            "classes": model.classes,
            "input_size": list(model.input_size) if model.input_size else None,
            "metrics": model.metrics,
            "limits": {"max_image_bytes": max_bytes, "max_images": max_images,
                       "default_top_k": top_k, "batching": batching, "max_batch": max_batch},
            "transferkit_version": __version__}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await batcher.close()

    app = FastAPI(title="transferkit", version=__version__, lifespan=lifespan,
                  description=f"Image classification with `{model.name}` ({model.method}, "
                              f"{len(model.classes)} classes).")
    app.state.model, app.state.batcher = model, batcher

    def error(status: int, message: str) -> JSONResponse:
        # Close the connection: after a refusal the rest of the body may still be unsent.
        headers = {"Connection": "close"} if status in (408, 413) else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(_request, exc: Refused):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = ["{}: {}".format(".".join(str(p) for p in item["loc"][1:]) or "request",
                                    item["msg"]) for item in exc.errors()]
        return error(422, "; ".join(problems))

    @app.exception_handler(Exception)
    async def failed(_request, exc: Exception):
        # The traceback goes to the server's log; the client learns only that it failed.
        return error(500, "internal error while predicting; see the server's log.")

    def prepare_all(uploads: list[Upload]) -> list:
        items = []
        for upload in uploads:
            try:
                items.append(model.prepare(upload.path))
            except ImageDecodeError as exc:
                raise _refusal_of(upload, exc) from None
        return items

    @app.post("/predict", response_model=Predictions, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY},
              summary="Top-k classes of one or several images")
    async def predict(request: Request,
                      top_k: int = Query(top_k, ge=1, description="classes per image")):
        """Send images as the repeatable multipart field `file`, or one image as the raw
        body (any content type but multipart)."""
        k = min(top_k, len(model.classes))
        with tempfile.TemporaryDirectory(prefix="transferkit-serve-") as folder:
            uploads = await receive_uploads(request, Path(folder), max_bytes, max_images,
                                            body_idle_timeout_s)
            items = await anyio.to_thread.run_sync(prepare_all, uploads, limiter=decoding)
            results = await batcher.predict(items)
        predictions = []
        for upload, result in zip(uploads, results):
            if isinstance(result, ImageDecodeError):
                raise _refusal_of(upload, result)
            predictions.append({"filename": upload.filename,
                                "top_k": top_classes(result, model.classes, k)})
        return {"predictions": predictions}

    @app.get("/model", response_model=ModelInfo, summary="The model served and the limits")
    async def model_info():
        return info

    @app.get("/health", summary="Whether the server is up")
    async def health():
        return {"status": "ok", "batches_run": batcher.batches_run,
                "images_run": batcher.items_run}

    return app
