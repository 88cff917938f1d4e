"""The HTTP service: its predictions are the model's own, every bad request gets a 4xx
JSON error and the next request is still served, uploads never leave a temporary folder
that is gone after the request, and concurrent requests are batched without changing
a probability."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from builders import colour_image  # noqa: E402
from transferkit.bundle import load_bundle  # noqa: E402
from transferkit.serve import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LIMITS = dict(top_k=3, max_images=4, max_bytes=200_000)


@pytest.fixture(scope="module")
def clients(models):
    """A test client of each kind of model, with small limits (loading one takes seconds)."""
    with TestClient(create_app(models[0], **LIMITS)) as bundle, \
            TestClient(create_app(models[1], **LIMITS)) as exported:
        yield {"bundle": bundle, "onnx": exported}


def multipart(paths) -> list:
    return [("file", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


def predict_all(client, paths) -> list:
    """The predictions of ``paths``, sent as many at a time as the server takes."""
    predictions, step = [], LIMITS["max_images"]
    for start in range(0, len(paths), step):
        response = client.post("/predict", files=multipart(paths[start:start + step]))
        assert response.status_code == 200, response.text
        predictions += response.json()["predictions"]
    return predictions


def returned_probabilities(predictions: list, classes: list) -> np.ndarray:
    rows = []
    for item in predictions:
        given = {entry["class"]: entry["probability"] for entry in item["top_k"]}
        assert list(given) == sorted(given, key=given.get, reverse=True)
        rows.append([given[c] for c in classes])
    return np.array(rows)


def test_bundle_predictions_are_the_bundles_own(models, clients):
    folder, _, sent = models
    client = clients["bundle"]
    expected, ok, _ = load_bundle(folder).predict_paths(sent)
    assert ok.all()
    predictions = predict_all(client, sent)
    assert [p["filename"] for p in predictions] == [p.name for p in sent]
    classes = client.get("/model").json()["classes"]
    got = returned_probabilities(predictions, classes)
    assert np.abs(got - expected).max() < 1e-6

    raw = client.post("/predict", content=sent[0].read_bytes(),
                      headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    (only,) = raw.json()["predictions"]
    assert only["filename"] is None
    assert np.abs(returned_probabilities([only], classes)[0] - expected[0]).max() < 1e-6


def test_exported_predictions_match_the_bundle(models, clients):
    from transferkit.runtime import load_predictor

    folder, exported, sent = models
    expected, _, _ = load_bundle(folder).predict_paths(sent)
    direct, _, _ = load_predictor(exported).predict_paths(sent)
    client = clients["onnx"]
    got = returned_probabilities(predict_all(client, sent), client.get("/model").json()["classes"])
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - direct).max() < 1e-6


def test_top_k_is_capped_and_chosen_per_request(models, clients):
    image, onnx_client = models[2][0].read_bytes(), clients["onnx"]
    for asked, returned in ((None, 3), (1, 1), (10, 3)):
        query = "" if asked is None else f"?top_k={asked}"
        response = onnx_client.post(f"/predict{query}", content=image)
        assert len(response.json()["predictions"][0]["top_k"]) == returned


def test_model_health_and_docs(models, clients):
    metrics = json.loads((models[0] / "metrics.json").read_text())
    for kind, client in clients.items():
        info = client.get("/model").json()
        assert info["kind"] == kind and info["method"] == "linear_probe"
        assert info["classes"] == ["blue", "green", "red"]
        assert info["input_size"] == [160, 160]  # test_efficientnet's input
        assert info["metrics"].keys() == metrics.keys() and info["metrics"]
        assert client.get("/health").json()["status"] == "ok"
        assert info["limits"]["max_images"] == 4
    assert clients["bundle"].get("/docs").status_code == 200
    schema = clients["bundle"].get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "multipart/form-data" in schema["requestBody"]["content"]


# -- bad requests -------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels and holds none (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise_png(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def good_png() -> bytes:
    buffer = io.BytesIO()
    colour_image((220, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = {
    # name: (request keywords, status, words of the message)
    "not an image": (dict(files=[("file", ("notes.txt", b"hello, not a picture", "text/plain"))]),
                     415, "notes.txt: not an image"),
    "truncated": (dict(files=[("file", ("cut.png", good_png()[:300], "image/png"))]),
                  422, "cut.png: corrupt or truncated"),
    "empty body": (dict(content=b""), 400, "empty request body"),
    "empty file": (dict(files=[("file", ("none.png", b"", "image/png"))]), 400, "none.png: empty"),
    "too large": (dict(files=[("file", ("big.png", noise_png(300), "image/png"))]),
                  413, "big.png: larger than the limit"),
    "too large raw": (dict(content=noise_png(300)), 413, "request body: larger than the limit"),
    "too many": (dict(files=[("file", (f"{i}.png", good_png(), "image/png")) for i in range(5)]),
                 413, "more than 4 images"),
    "bomb": (dict(files=[("file", ("bomb.png", png_header_only(100_000, 100_000), "image/png"))]),
             413, "bomb.png: decompression bomb"),
    "bad field": (dict(files=[("photo", ("a.png", good_png(), "image/png"))]),
                  400, "unexpected form field 'photo'"),
    "no boundary": (dict(content=good_png(), headers={"content-type": "multipart/form-data"}),
                    400, "without a boundary"),
    "unfinished multipart": (dict(content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\""
                                          b"\r\n\r\nabc",
                                  headers={"content-type": "multipart/form-data; boundary=xyz"}),
                             400, "ended before its closing boundary"),
    "bad top_k": (dict(content=good_png(), params={"top_k": 0}), 422, "top_k"),
    "one bad among good": (dict(files=[("file", ("ok.png", good_png(), "image/png")),
                                       ("file", ("bad.png", b"GIF89a broken", "image/png"))]),
                           415, "bad.png: not an image"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
@pytest.mark.parametrize("kind", ["onnx", "bundle"])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_goes_on(name, kind, models, clients):
    client = clients[kind]
    keywords, status, words = BAD_REQUESTS[name]
    response = client.post("/predict", **keywords)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and words in body["error"]
    assert "\n" not in body["error"] and tempfile.gettempdir() not in body["error"]
    after = client.post("/predict", files=multipart(models[2][:2]))
    assert after.status_code == 200 and len(after.json()["predictions"]) == 2


def test_a_failing_model_is_a_500_json_error_and_the_next_request_is_served(models, monkeypatch):
    client = TestClient(create_app(models[1]), raise_server_exceptions=False)
    model = client.app.state.model
    working = model.prepare
    monkeypatch.setattr(model, "prepare", lambda path: 1 / 0)
    response = client.post("/predict", content=good_png())
    assert response.status_code == 500 and list(response.json()) == ["error"]
    assert "ZeroDivision" not in response.text
    monkeypatch.setattr(model, "prepare", working)
    assert client.post("/predict", content=good_png()).status_code == 200


def test_the_size_limit_holds_while_the_body_streams(models):
    """An endless body is refused after about max_bytes, not read to its end."""
    app = create_app(models[1], max_bytes=100_000)
    chunk, reads = b"\x89PNG" + b"\0" * 16_380, []

    async def receive():
        reads.append(1)
        if len(reads) > 1000:  # 16 MB: far past the limit; the server should have stopped
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"image/png")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(reads) <= 100_000 // len(chunk) + 2
    assert b"larger than the limit of" in sent[1]["body"]


def _call(app, headers: list, receive) -> list:
    """The ASGI messages ``app`` sends for a POST /predict whose body ``receive`` gives."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return sent


def test_bytes_around_the_multipart_parts_count_against_the_limits(models):
    """Without a Content-Length (chunked), an endless epilogue after the closing boundary
    (or preamble before the first) reached no part limit and was read to its end."""
    app = create_app(models[1], max_bytes=100_000, max_images=2)
    head = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"\r\n" + good_png() + b"\r\n--xyz--\r\n")
    reads = []

    async def receive():
        reads.append(1)
        if len(reads) > 1000:  # 16 MB: far past the limit; the server should have stopped
            return {"type": "http.disconnect"}
        body = head if len(reads) == 1 else b"E" * 16_384
        return {"type": "http.request", "body": body, "more_body": True}

    sent = _call(app, [(b"content-type", b"multipart/form-data; boundary=xyz")], receive)
    assert sent[0]["status"] == 413
    assert len(reads) <= 2 * (100_000 + 8192) // 16_384 + 2
    assert b"more than" in sent[1]["body"]


def test_a_stalled_or_abandoned_body_ends_the_request_with_a_4xx(models):
    app = create_app(models[1], body_idle_timeout_s=0.2)
    reads = []

    async def stalls():
        reads.append(1)
        if len(reads) == 1:
            return {"type": "http.request", "body": good_png()[:100], "more_body": True}
        await asyncio.sleep(3600)

    sent = _call(app, [(b"content-type", b"image/png")], stalls)
    assert sent[0]["status"] == 408 and b"stalled" in sent[1]["body"]

    async def hangs_up():
        reads.append(1)
        if len(reads) == 3:
            return {"type": "http.request", "body": good_png()[:100], "more_body": True}
        return {"type": "http.disconnect"}

    # Starlette raises ClientDisconnect; unhandled, it was a 500 and a traceback in the
    # server's log per client that hangs up.
    sent = _call(app, [(b"content-type", b"image/png")], hangs_up)
    assert sent[0]["status"] == 400 and b"disconnected" in sent[1]["body"]


def test_the_model_page_names_no_folder_of_the_server(models, clients):
    folder = models[0]
    assert str(folder) in (folder / "metrics.json").read_text()  # fit records its --out
    for client in clients.values():
        text = client.get("/model").text
        assert str(folder.parent) not in text and tempfile.gettempdir() not in text


def test_uploads_stay_in_a_temporary_folder_removed_after_each_request(
        models, tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for path in models[:2]:
        client = TestClient(create_app(path))
        seen = []
        model = client.app.state.model
        prepare = model.prepare
        monkeypatch.setattr(model, "prepare",
                            lambda path, prepare=prepare: seen.append(path) or prepare(path))
        before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        for request in (dict(files=multipart(models[2][:3])), dict(content=good_png()),
                        BAD_REQUESTS["truncated"][0], BAD_REQUESTS["bomb"][0]):
            client.post("/predict", **request)
            assert list(temporary.iterdir()) == []
        assert len(seen) == 6 and all(temporary in Path(p).parents for p in seen)
        # Nothing new anywhere else: not in the working folder, not in the feature cache.
        assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


# -- batching -----------------------------------------------------------------------------

async def _concurrently(app, bodies: list[bytes]) -> list:
    import httpx2

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.post("/predict", content=body)
                                           for body in bodies))
    return [response.json()["predictions"][0] for response in responses]


@pytest.mark.parametrize("kind", ["onnx", "bundle"])
def test_concurrent_requests_are_batched_without_changing_a_probability(models, kind):
    path = models[1] if kind == "onnx" else models[0]
    bodies = [p.read_bytes() for p in models[2]]
    results, batches = {}, {}
    for batching in (False, True):
        app = create_app(path, batching=batching, batch_wait_ms=50)
        predictions = asyncio.run(_concurrently(app, bodies))
        batches[batching] = app.state.batcher.batches_run
        results[batching] = returned_probabilities(predictions, app.state.model.classes)
    assert batches[False] == len(bodies) and batches[True] < len(bodies)
    assert np.abs(results[True] - results[False]).max() < 1e-6


def test_the_batcher_respects_max_batch_and_passes_errors_to_every_request():
    from transferkit.serve.batching import MicroBatcher

    sizes = []

    def predict(items):
        sizes.append(len(items))
        if "boom" in items:
            raise ValueError("boom")
        return [item * 2 for item in items]

    async def scenario():
        batcher = MicroBatcher(predict, max_batch=4, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.predict([i, i + 100]) for i in range(5)))
        failed = await asyncio.gather(batcher.predict(["boom"]), batcher.predict([1]),
                                      return_exceptions=True)
        after = await batcher.predict([7])
        await batcher.close()
        return results, failed, after

    results, failed, after = asyncio.run(scenario())
    assert results == [[2 * i, 2 * i + 200] for i in range(5)]
    assert max(sizes[:3]) <= 4 and sum(sizes[:3]) == 10
    assert all(isinstance(f, ValueError) for f in failed)
    assert after == [14]
